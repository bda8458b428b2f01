"""Departments live under a facility of the caller's organization, with codes unique per facility."""

from __future__ import annotations

import uuid
from typing import Any

from tests.conftest import build_tenant

DEPARTMENT_KEYS = {"id", "organization_id", "facility_id", "name", "code", "active", "created_at"}


async def _departments(api: Any, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    return await api.all_pages("/api/v1/departments", headers, **params)


async def _create(api: Any, headers: dict[str, str], facility_id: Any, code: str, name: str | None = None) -> Any:
    return await api.client.post(
        "/api/v1/departments",
        headers=headers,
        json={"facility_id": str(facility_id), "name": name or f"Dept {code}", "code": code},
    )


async def test_org_admin_creates_a_department_under_a_facility(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)

    created = await _create(api, headers, tenant.facility_ids[0], "CARD", "Cardiology")

    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == DEPARTMENT_KEYS
    assert body["organization_id"] == str(tenant.organization_id)
    assert body["facility_id"] == str(tenant.facility_ids[0])
    assert (body["name"], body["code"], body["active"]) == ("Cardiology", "CARD", True)
    fetched = await api.client.get(f"/api/v1/departments/{body['id']}", headers=headers)
    assert fetched.status_code == 200
    assert fetched.json() == body


async def test_departments_are_listed_filtered_by_facility(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)
    north, south = tenant.facility_ids
    for facility_id, code in ((north, "CARD"), (north, "PEDS"), (south, "ORTHO")):
        assert (await _create(api, headers, facility_id, code)).status_code == 201

    in_north = await _departments(api, headers, facility_id=str(north))
    in_south = await _departments(api, headers, facility_id=str(south))
    everywhere = await _departments(api, headers)

    assert sorted(d["code"] for d in in_north) == ["CARD", "PEDS"]
    assert {d["facility_id"] for d in in_north} == {str(north)}
    assert [d["code"] for d in in_south] == ["ORTHO"]
    assert sorted(d["code"] for d in everywhere) == ["CARD", "ORTHO", "PEDS"]


async def test_staff_see_departments_of_their_own_facilities_only(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)
    north, south = tenant.facility_ids
    mine = (await _create(api, admin, north, "CARD")).json()
    theirs = (await _create(api, admin, south, "ORTHO")).json()
    doctor = await api.headers_for(tenant.emails["doctor"])

    listed = await _departments(api, doctor)
    filtered_to_other = await _departments(api, doctor, facility_id=str(south))
    read_other = await api.client.get(f"/api/v1/departments/{theirs['id']}", headers=doctor)

    assert [d["id"] for d in listed] == [mine["id"]]
    assert filtered_to_other == []
    assert read_other.status_code == 404
    assert read_other.json()["code"] == "department_not_found"


async def test_listing_by_another_tenants_facility_shows_nothing(api: Any) -> None:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    beta_admin = await api.headers_for(beta.admin_email)
    assert (await _create(api, beta_admin, beta.facility_ids[0], "CARD")).status_code == 201
    alpha_admin = await api.headers_for(alpha.admin_email)

    assert await _departments(api, alpha_admin, facility_id=str(beta.facility_ids[0])) == []
    assert await _departments(api, alpha_admin) == []


async def test_another_tenants_facility_in_the_create_body_is_404_and_nothing_written(api: Any) -> None:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    alpha_admin = await api.headers_for(alpha.admin_email)

    response = await _create(api, alpha_admin, beta.facility_ids[0], "PLANT")

    assert response.status_code == 404
    assert response.json()["code"] == "facility_not_found"
    assert str(beta.facility_ids[0]) not in response.text
    assert "beta" not in response.text
    beta_admin = await api.headers_for(beta.admin_email)
    assert await _departments(api, beta_admin) == []
    assert await _departments(api, alpha_admin) == []


async def test_unknown_facility_in_the_create_body_is_404(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)

    response = await _create(api, headers, uuid.uuid4(), "GHOST")

    assert response.status_code == 404
    assert response.json()["code"] == "facility_not_found"
    assert await _departments(api, headers) == []


async def test_duplicate_code_in_the_same_facility_is_409(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)
    assert (await _create(api, headers, tenant.facility_ids[0], "CARD", "Cardiology")).status_code == 201

    response = await _create(api, headers, tenant.facility_ids[0], "CARD", "Cardiology Two")

    assert response.status_code == 409
    assert response.json()["code"] == "department_code_taken"
    assert [d["name"] for d in await _departments(api, headers)] == ["Cardiology"]


async def test_same_code_in_another_facility_is_allowed(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)
    north, south = tenant.facility_ids

    first = await _create(api, headers, north, "CARD")
    second = await _create(api, headers, south, "CARD")

    assert first.status_code == 201
    assert second.status_code == 201, second.text
    listed = await _departments(api, headers)
    assert sorted((d["facility_id"], d["code"]) for d in listed) == sorted([(str(north), "CARD"), (str(south), "CARD")])


async def test_same_code_in_another_organization_is_allowed(api: Any) -> None:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")

    first = await _create(api, await api.headers_for(alpha.admin_email), alpha.facility_ids[0], "CARD")
    second = await _create(api, await api.headers_for(beta.admin_email), beta.facility_ids[0], "CARD")

    assert first.status_code == 201
    assert second.status_code == 201, second.text


async def test_org_admin_renames_and_deactivates_a_department(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)
    department = (await _create(api, headers, tenant.facility_ids[0], "CARD", "Cardiology")).json()

    updated = await api.client.patch(
        f"/api/v1/departments/{department['id']}", headers=headers, json={"name": "Heart Centre", "active": False}
    )

    assert updated.status_code == 200, updated.text
    fetched = (await api.client.get(f"/api/v1/departments/{department['id']}", headers=headers)).json()
    assert (fetched["name"], fetched["active"], fetched["code"]) == ("Heart Centre", False, "CARD")


async def test_department_cannot_be_moved_to_another_facility_by_update(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)
    department = (await _create(api, headers, tenant.facility_ids[0], "CARD")).json()

    response = await api.client.patch(
        f"/api/v1/departments/{department['id']}", headers=headers, json={"facility_id": str(tenant.facility_ids[1])}
    )

    assert response.status_code == 422
    assert "facility_id" in {error["field"] for error in response.json()["errors"]}
    fetched = (await api.client.get(f"/api/v1/departments/{department['id']}", headers=headers)).json()
    assert fetched["facility_id"] == str(tenant.facility_ids[0])


async def test_another_tenants_department_is_404_for_read_and_update(api: Any) -> None:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    beta_admin = await api.headers_for(beta.admin_email)
    foreign = (await _create(api, beta_admin, beta.facility_ids[0], "CARD", "Beta Cardiology")).json()
    alpha_admin = await api.headers_for(alpha.admin_email)

    read = await api.client.get(f"/api/v1/departments/{foreign['id']}", headers=alpha_admin)
    update = await api.client.patch(
        f"/api/v1/departments/{foreign['id']}", headers=alpha_admin, json={"name": "Taken Over"}
    )

    for response in (read, update):
        assert response.status_code == 404
        assert response.json()["code"] == "department_not_found"
        assert "Beta Cardiology" not in response.text
    still = (await api.client.get(f"/api/v1/departments/{foreign['id']}", headers=beta_admin)).json()
    assert still["name"] == "Beta Cardiology"


async def test_front_office_may_not_create_or_update_departments(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)
    department = (await _create(api, admin, tenant.facility_ids[0], "CARD", "Cardiology")).json()
    front_office = await api.headers_for(tenant.emails["front_office"])

    created = await _create(api, front_office, tenant.facility_ids[0], "SNEAK")
    updated = await api.client.patch(
        f"/api/v1/departments/{department['id']}", headers=front_office, json={"name": "Renamed"}
    )

    assert created.status_code == 403
    assert updated.status_code == 403
    assert [(d["code"], d["name"]) for d in await _departments(api, admin)] == [("CARD", "Cardiology")]


async def test_unknown_body_field_is_refused_with_422_and_nothing_written(api: Any) -> None:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    headers = await api.headers_for(alpha.admin_email)

    response = await api.client.post(
        "/api/v1/departments",
        headers=headers,
        json={
            "facility_id": str(alpha.facility_ids[0]),
            "name": "Planted",
            "code": "PLANT",
            "organization_id": str(beta.organization_id),
        },
    )

    assert response.status_code == 422
    assert "organization_id" in {error["field"] for error in response.json()["errors"]}
    assert await _departments(api, headers) == []


async def test_department_routes_without_a_token_are_401(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")

    for method, url, body in (
        ("POST", "/api/v1/departments", {"facility_id": str(tenant.facility_ids[0]), "name": "A", "code": "A"}),
        ("GET", "/api/v1/departments", None),
        ("GET", f"/api/v1/departments/{uuid.uuid4()}", None),
        ("PATCH", f"/api/v1/departments/{uuid.uuid4()}", {"name": "A"}),
    ):
        response = await api.client.request(method, url, json=body)
        assert response.status_code == 401, (method, url)
