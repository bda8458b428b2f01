"""Organization administrators manage facilities; staff see only their own; no one sees another tenant's."""

from __future__ import annotations

import uuid
from typing import Any

from tests.conftest import build_tenant

FACILITY_KEYS = {"id", "organization_id", "name", "code", "timezone", "active", "opening_hours", "created_at"}


async def _facilities(api: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    return await api.all_pages("/api/v1/facilities", headers)


def _field_names(body: dict[str, Any]) -> set[str]:
    return {error["field"] for error in body.get("errors", [])}


async def test_org_admin_creates_a_facility_in_their_organization(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)

    created = await api.client.post(
        "/api/v1/facilities",
        headers=headers,
        json={"name": "Alpha East", "code": "EAST", "timezone": "America/New_York"},
    )

    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == FACILITY_KEYS
    assert body["organization_id"] == str(tenant.organization_id)
    assert (body["name"], body["code"], body["timezone"], body["active"]) == (
        "Alpha East", "EAST", "America/New_York", True,
    )  # fmt: skip
    fetched = await api.client.get(f"/api/v1/facilities/{body['id']}", headers=headers)
    assert fetched.status_code == 200
    assert fetched.json() == body


async def test_org_admin_lists_every_facility_of_their_organization_only(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    other = await build_tenant(api, "beta")
    headers = await api.headers_for(tenant.admin_email)

    facilities = await _facilities(api, headers)

    assert sorted(facility["id"] for facility in facilities) == sorted(str(f) for f in tenant.facility_ids)
    assert {facility["organization_id"] for facility in facilities} == {str(tenant.organization_id)}
    assert not {str(f) for f in other.facility_ids} & {facility["id"] for facility in facilities}


async def test_facility_list_pages_with_a_cursor(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)
    for number in range(3):
        response = await api.client.post(
            "/api/v1/facilities",
            headers=headers,
            json={"name": f"Extra {number}", "code": f"X{number}", "timezone": "UTC"},
        )
        assert response.status_code == 201

    first = (await api.client.get("/api/v1/facilities", headers=headers, params={"limit": 3})).json()
    second = (
        await api.client.get("/api/v1/facilities", headers=headers, params={"limit": 3, "cursor": first["next_cursor"]})
    ).json()

    assert len(first["items"]) == 3
    assert first["next_cursor"] is not None
    assert len(second["items"]) == 2
    assert second["next_cursor"] is None
    codes = [facility["code"] for facility in first["items"] + second["items"]]
    assert sorted(codes) == ["NORTH", "SOUTH", "X0", "X1", "X2"]


async def test_org_admin_renames_retimezones_and_deactivates_a_facility(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)
    facility_id = tenant.facility_ids[1]

    updated = await api.client.patch(
        f"/api/v1/facilities/{facility_id}",
        headers=headers,
        json={"name": "Alpha South Wing", "timezone": "Asia/Kolkata", "active": False},
    )

    assert updated.status_code == 200, updated.text
    fetched = (await api.client.get(f"/api/v1/facilities/{facility_id}", headers=headers)).json()
    assert fetched == updated.json()
    assert (fetched["name"], fetched["timezone"], fetched["active"], fetched["code"]) == (
        "Alpha South Wing", "Asia/Kolkata", False, "SOUTH",
    )  # fmt: skip


async def test_facility_code_cannot_be_changed_by_update(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)

    response = await api.client.patch(
        f"/api/v1/facilities/{tenant.facility_ids[0]}", headers=headers, json={"code": "X"}
    )

    assert response.status_code == 422
    assert "code" in _field_names(response.json())
    fetched = await api.client.get(f"/api/v1/facilities/{tenant.facility_ids[0]}", headers=headers)
    assert fetched.json()["code"] == "NORTH"


async def test_unknown_timezone_is_refused_with_422_naming_the_field(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)

    for timezone in ("Mars/Olympus", "../etc/passwd", "/usr/share/zoneinfo/UTC", "asia/karachi", "", "+05:00"):
        response = await api.client.post(
            "/api/v1/facilities", headers=headers, json={"name": "Bad", "code": "BAD", "timezone": timezone}
        )
        assert response.status_code == 422, timezone
        assert response.headers["content-type"] == "application/problem+json"
        assert _field_names(response.json()) == {"timezone"}, timezone

    assert sorted(facility["code"] for facility in await _facilities(api, headers)) == ["NORTH", "SOUTH"]


async def test_unknown_timezone_in_an_update_is_refused_and_the_facility_keeps_its_own(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)

    response = await api.client.patch(
        f"/api/v1/facilities/{tenant.facility_ids[0]}", headers=headers, json={"timezone": "Mars/Olympus"}
    )

    assert response.status_code == 422
    assert _field_names(response.json()) == {"timezone"}
    fetched = await api.client.get(f"/api/v1/facilities/{tenant.facility_ids[0]}", headers=headers)
    assert fetched.json()["timezone"] == "Asia/Karachi"


async def test_invalid_facility_code_is_refused_with_422_naming_the_field(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)

    for code in ("", "has space", "-LEAD", "X" * 33, "semi;colon"):
        response = await api.client.post(
            "/api/v1/facilities", headers=headers, json={"name": "Bad", "code": code, "timezone": "UTC"}
        )
        assert response.status_code == 422, code
        assert _field_names(response.json()) == {"code"}, code


async def test_duplicate_facility_code_is_refused_with_409(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)

    response = await api.client.post(
        "/api/v1/facilities", headers=headers, json={"name": "Second North", "code": "NORTH", "timezone": "UTC"}
    )

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "facility_code_taken"
    facilities = await _facilities(api, headers)
    assert sorted((f["code"], f["name"]) for f in facilities) == [("NORTH", "alpha NORTH"), ("SOUTH", "alpha SOUTH")]


async def test_same_facility_code_in_another_organization_is_allowed(api: Any) -> None:
    await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    headers = await api.headers_for(beta.admin_email)

    response = await api.client.post(
        "/api/v1/facilities", headers=headers, json={"name": "Beta East", "code": "EAST", "timezone": "UTC"}
    )
    alpha_headers = await api.headers_for("admin@alpha.test")
    alpha_east = await api.client.post(
        "/api/v1/facilities", headers=alpha_headers, json={"name": "Alpha East", "code": "EAST", "timezone": "UTC"}
    )

    assert response.status_code == 201
    assert alpha_east.status_code == 201
    assert response.json()["organization_id"] != alpha_east.json()["organization_id"]


async def test_staff_see_only_their_own_facilities(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")

    for role in ("doctor", "front_office"):
        headers = await api.headers_for(tenant.emails[role])
        facilities = await _facilities(api, headers)
        assert [facility["id"] for facility in facilities] == [str(tenant.facility_ids[0])], role
        own = await api.client.get(f"/api/v1/facilities/{tenant.facility_ids[0]}", headers=headers)
        assert own.status_code == 200
        not_theirs = await api.client.get(f"/api/v1/facilities/{tenant.facility_ids[1]}", headers=headers)
        assert not_theirs.status_code == 404, role
        assert not_theirs.json()["code"] == "facility_not_found"
        assert "SOUTH" not in not_theirs.text


async def test_another_organizations_facility_is_404_with_none_of_its_data(api: Any) -> None:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    headers = await api.headers_for(alpha.admin_email)
    foreign = beta.facility_ids[0]

    read = await api.client.get(f"/api/v1/facilities/{foreign}", headers=headers)
    update = await api.client.patch(f"/api/v1/facilities/{foreign}", headers=headers, json={"name": "Taken Over"})

    for response in (read, update):
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["code"] == "facility_not_found"
        assert set(body) == {"type", "title", "status", "detail", "code"}
        for secret in (str(foreign), str(beta.organization_id), "beta NORTH", "Asia/Karachi"):
            assert secret not in response.text
    beta_view = (
        await api.client.get(f"/api/v1/facilities/{foreign}", headers=await api.headers_for(beta.admin_email))
    ).json()
    assert beta_view["name"] == "beta NORTH"


async def test_random_facility_id_is_404_the_same_as_a_foreign_one(api: Any) -> None:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    headers = await api.headers_for(alpha.admin_email)

    missing = await api.client.get(f"/api/v1/facilities/{uuid.uuid4()}", headers=headers)
    foreign = await api.client.get(f"/api/v1/facilities/{beta.facility_ids[0]}", headers=headers)

    assert missing.status_code == 404
    assert missing.json() == foreign.json()


async def test_malformed_facility_id_is_422(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)

    response = await api.client.get("/api/v1/facilities/not-a-uuid", headers=headers)

    assert response.status_code == 422
    assert _field_names(response.json()) == {"path.facility_id"}


async def test_front_office_and_doctor_may_not_create_or_update_facilities(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")

    for role in ("front_office", "doctor"):
        headers = await api.headers_for(tenant.emails[role])
        created = await api.client.post(
            "/api/v1/facilities", headers=headers, json={"name": "Sneaky", "code": "SNEAK", "timezone": "UTC"}
        )
        updated = await api.client.patch(
            f"/api/v1/facilities/{tenant.facility_ids[0]}", headers=headers, json={"name": "Renamed"}
        )
        assert created.status_code == 403, role
        assert created.json()["code"] == "permission_denied"
        assert updated.status_code == 403, role

    facilities = await _facilities(api, await api.headers_for(tenant.admin_email))
    assert sorted((f["code"], f["name"]) for f in facilities) == [("NORTH", "alpha NORTH"), ("SOUTH", "alpha SOUTH")]


async def test_facility_routes_without_a_token_are_401(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    facility = f"/api/v1/facilities/{tenant.facility_ids[0]}"

    for method, url, body in (
        ("POST", "/api/v1/facilities", {"name": "Anon", "code": "ANON", "timezone": "UTC"}),
        ("GET", "/api/v1/facilities", None),
        ("GET", facility, None),
        ("PATCH", facility, {"name": "Anon"}),
    ):
        response = await api.client.request(method, url, json=body)
        assert response.status_code == 401, (method, url)
        assert response.json()["code"] == "invalid_token"


async def test_unknown_body_field_is_refused_with_422_and_nothing_written(api: Any) -> None:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    headers = await api.headers_for(alpha.admin_email)

    response = await api.client.post(
        "/api/v1/facilities",
        headers=headers,
        json={"name": "Planted", "code": "PLANT", "timezone": "UTC", "organization_id": str(beta.organization_id)},
    )

    assert response.status_code == 422
    assert "organization_id" in _field_names(response.json())
    assert sorted(f["code"] for f in await _facilities(api, headers)) == ["NORTH", "SOUTH"]
    beta_facilities = await _facilities(api, await api.headers_for(beta.admin_email))
    assert sorted(f["code"] for f in beta_facilities) == ["NORTH", "SOUTH"]


async def test_unknown_field_in_an_update_is_refused_and_nothing_changes(api: Any) -> None:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    headers = await api.headers_for(alpha.admin_email)

    response = await api.client.patch(
        f"/api/v1/facilities/{alpha.facility_ids[0]}",
        headers=headers,
        json={"name": "Moved", "organization_id": str(beta.organization_id)},
    )

    assert response.status_code == 422
    assert "organization_id" in _field_names(response.json())
    fetched = (await api.client.get(f"/api/v1/facilities/{alpha.facility_ids[0]}", headers=headers)).json()
    assert (fetched["name"], fetched["organization_id"]) == ("alpha NORTH", str(alpha.organization_id))
