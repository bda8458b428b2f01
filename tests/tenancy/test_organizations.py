"""Platform administrators create, list, read and update organizations, and see no tenant's data."""

from __future__ import annotations

import uuid
from typing import Any

from sehat.core.actor import SystemActor
from sehat.identity import service as identity_service
from tests.conftest import PASSWORD, build_tenant

PLATFORM_ADMIN = "root@platform.test"


async def _platform_admin_headers(api: Any, email: str = PLATFORM_ADMIN) -> dict[str, str]:
    async with api.unit_of_work() as session:
        await identity_service.create_platform_admin(
            session, api.auth, SystemActor(name="test"), email, "Platform Admin", PASSWORD
        )
    return await api.headers_for(email)


async def _all_organizations(api: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    return await api.all_pages("/api/v1/organizations", headers)


def _field_names(body: dict[str, Any]) -> set[str]:
    return {error["field"] for error in body.get("errors", [])}


async def test_platform_admin_creates_an_organization_and_reads_it_back(api: Any) -> None:
    headers = await _platform_admin_headers(api)

    created = await api.client.post(
        "/api/v1/organizations", headers=headers, json={"name": "Shifa Clinics", "slug": "shifa"}
    )

    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == {"id", "name", "slug", "active", "created_at"}
    assert body["name"] == "Shifa Clinics"
    assert body["slug"] == "shifa"
    assert body["active"] is True
    uuid.UUID(body["id"])
    fetched = await api.client.get(f"/api/v1/organizations/{body['id']}", headers=headers)
    assert fetched.status_code == 200
    assert fetched.json() == body


async def test_organization_slug_is_stored_trimmed(api: Any) -> None:
    headers = await _platform_admin_headers(api)

    created = await api.client.post(
        "/api/v1/organizations", headers=headers, json={"name": "Indus", "slug": "  indus-care "}
    )

    assert created.status_code == 201, created.text
    assert created.json()["slug"] == "indus-care"


async def test_platform_admin_lists_every_organization(api: Any) -> None:
    await build_tenant(api, "alpha")
    await build_tenant(api, "beta")
    headers = await _platform_admin_headers(api)
    created = await api.client.post("/api/v1/organizations", headers=headers, json={"name": "Gamma", "slug": "gamma"})
    assert created.status_code == 201

    organizations = await _all_organizations(api, headers)

    assert sorted(organization["slug"] for organization in organizations) == ["alpha", "beta", "gamma"]


async def test_organization_list_pages_with_a_cursor_without_repeats_or_gaps(api: Any) -> None:
    headers = await _platform_admin_headers(api)
    slugs = {f"org-{number}" for number in range(5)}
    for slug in sorted(slugs):
        response = await api.client.post("/api/v1/organizations", headers=headers, json={"name": slug, "slug": slug})
        assert response.status_code == 201

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await api.client.get("/api/v1/organizations", headers=headers, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen.extend(item["slug"] for item in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert pages == 3
    assert sorted(seen) == sorted(slugs)
    assert len(seen) == len(set(seen))


async def test_platform_admin_renames_and_deactivates_an_organization(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await _platform_admin_headers(api)

    updated = await api.client.patch(
        f"/api/v1/organizations/{tenant.organization_id}",
        headers=headers,
        json={"name": "Alpha Health", "active": False},
    )

    assert updated.status_code == 200, updated.text
    assert updated.json()["name"] == "Alpha Health"
    assert updated.json()["active"] is False
    assert updated.json()["slug"] == "alpha"
    fetched = await api.client.get(f"/api/v1/organizations/{tenant.organization_id}", headers=headers)
    assert fetched.json()["name"] == "Alpha Health"
    assert fetched.json()["active"] is False


async def test_organization_slug_cannot_be_changed_by_update(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await _platform_admin_headers(api)

    response = await api.client.patch(
        f"/api/v1/organizations/{tenant.organization_id}", headers=headers, json={"slug": "omega"}
    )

    assert response.status_code == 422
    assert "slug" in _field_names(response.json())
    fetched = await api.client.get(f"/api/v1/organizations/{tenant.organization_id}", headers=headers)
    assert fetched.json()["slug"] == "alpha"


async def test_duplicate_slug_is_refused_with_409_slug_taken(api: Any) -> None:
    await build_tenant(api, "alpha")
    headers = await _platform_admin_headers(api)

    response = await api.client.post(
        "/api/v1/organizations", headers=headers, json={"name": "Another Alpha", "slug": "alpha"}
    )

    assert response.status_code == 409
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "slug_taken"
    assert body["status"] == 409
    assert [organization["name"] for organization in await _all_organizations(api, headers)] == ["Org alpha"]


async def test_slug_differing_only_in_case_is_folded_to_lower_case_and_refused_as_taken(api: Any) -> None:
    await build_tenant(api, "alpha")
    headers = await _platform_admin_headers(api)

    response = await api.client.post("/api/v1/organizations", headers=headers, json={"name": "Shouty", "slug": "ALPHA"})

    assert response.status_code == 409, response.text
    assert response.json()["code"] == "slug_taken"
    assert [organization["slug"] for organization in await _all_organizations(api, headers)] == ["alpha"]


async def test_invalid_slug_is_refused_with_422_listing_the_field(api: Any) -> None:
    headers = await _platform_admin_headers(api)

    for slug in ("has space", "-leading-dash", "a", "under_score", "x" * 64, "ümlaut", ""):
        response = await api.client.post("/api/v1/organizations", headers=headers, json={"name": "Bad", "slug": slug})
        assert response.status_code == 422, slug
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "invalid_input"
        assert _field_names(response.json()) == {"slug"}, slug

    assert await _all_organizations(api, headers) == []


async def test_unknown_organization_field_is_refused_with_422(api: Any) -> None:
    headers = await _platform_admin_headers(api)

    response = await api.client.post(
        "/api/v1/organizations", headers=headers, json={"name": "Extra", "slug": "extra", "id": str(uuid.uuid4())}
    )

    assert response.status_code == 422
    assert "id" in _field_names(response.json())
    assert await _all_organizations(api, headers) == []


async def test_unknown_organization_id_is_404(api: Any) -> None:
    headers = await _platform_admin_headers(api)

    read = await api.client.get(f"/api/v1/organizations/{uuid.uuid4()}", headers=headers)
    update = await api.client.patch(f"/api/v1/organizations/{uuid.uuid4()}", headers=headers, json={"name": "X"})

    assert read.status_code == 404
    assert read.json()["code"] == "organization_not_found"
    assert update.status_code == 404
    assert update.json()["code"] == "organization_not_found"


async def test_org_admin_and_doctor_may_not_manage_organizations(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    for email in (tenant.admin_email, tenant.emails["doctor"]):
        headers = await api.headers_for(email)
        calls = [
            ("POST", "/api/v1/organizations", {"name": "Mine", "slug": "mine"}),
            ("GET", "/api/v1/organizations", None),
            ("GET", f"/api/v1/organizations/{tenant.organization_id}", None),
            ("PATCH", f"/api/v1/organizations/{tenant.organization_id}", {"name": "Renamed"}),
            (
                "POST",
                f"/api/v1/organizations/{tenant.organization_id}/admins",
                {"email": "second@alpha.test", "full_name": "Second", "password": PASSWORD},
            ),
        ]
        for method, url, body in calls:
            response = await api.client.request(method, url, headers=headers, json=body)
            assert response.status_code == 403, (email, method, url, response.text)
            assert response.json()["code"] == "permission_denied"

    platform = await _platform_admin_headers(api)
    organizations = await _all_organizations(api, platform)
    assert [(o["slug"], o["name"]) for o in organizations] == [("alpha", "Org alpha")]
    assert (await api.sign_in("second@alpha.test")).status_code == 401


async def test_organization_routes_without_a_token_are_401(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    organization = f"/api/v1/organizations/{tenant.organization_id}"
    calls = [
        ("POST", "/api/v1/organizations", {"name": "Anon", "slug": "anon"}),
        ("GET", "/api/v1/organizations", None),
        ("GET", organization, None),
        ("PATCH", organization, {"name": "Anon"}),
        ("POST", f"{organization}/admins", {"email": "anon@alpha.test", "full_name": "Anon", "password": PASSWORD}),
    ]
    for method, url, body in calls:
        response = await api.client.request(method, url, json=body)
        assert response.status_code == 401, (method, url)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["code"] == "invalid_token"

    platform = await _platform_admin_headers(api)
    assert [o["name"] for o in await _all_organizations(api, platform)] == ["Org alpha"]


async def test_platform_admin_creates_an_org_admin_who_can_then_manage_that_organization(api: Any) -> None:
    headers = await _platform_admin_headers(api)
    organization = (
        await api.client.post("/api/v1/organizations", headers=headers, json={"name": "Shifa", "slug": "shifa"})
    ).json()

    created = await api.client.post(
        f"/api/v1/organizations/{organization['id']}/admins",
        headers=headers,
        json={"email": "Boss@Shifa.test", "full_name": "Boss", "password": PASSWORD},
    )

    assert created.status_code == 201, created.text
    admin = created.json()
    assert set(admin) == {
        "id", "organization_id", "email", "full_name", "roles", "facility_ids", "mfa_enabled", "active", "created_at",
    }  # fmt: skip
    assert admin["organization_id"] == organization["id"]
    assert admin["email"] == "boss@shifa.test"
    assert admin["roles"] == ["org_admin"]
    assert admin["facility_ids"] == []
    assert admin["active"] is True
    admin_headers = await api.headers_for("boss@shifa.test")
    me = (await api.client.get("/api/v1/me", headers=admin_headers)).json()
    assert me["organization_id"] == organization["id"]
    assert me["roles"] == ["org_admin"]
    facility = await api.client.post(
        "/api/v1/facilities", headers=admin_headers, json={"name": "Main", "code": "MAIN", "timezone": "Asia/Karachi"}
    )
    assert facility.status_code == 201
    assert facility.json()["organization_id"] == organization["id"]


async def test_org_admin_for_an_unknown_organization_is_404_and_not_created(api: Any) -> None:
    headers = await _platform_admin_headers(api)

    response = await api.client.post(
        f"/api/v1/organizations/{uuid.uuid4()}/admins",
        headers=headers,
        json={"email": "ghost@nowhere.test", "full_name": "Ghost", "password": PASSWORD},
    )

    assert response.status_code == 404
    assert response.json()["code"] == "organization_not_found"
    assert (await api.sign_in("ghost@nowhere.test")).status_code == 401


async def test_org_admin_with_a_taken_email_is_409(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await _platform_admin_headers(api)

    response = await api.client.post(
        f"/api/v1/organizations/{tenant.organization_id}/admins",
        headers=headers,
        json={"email": tenant.emails["doctor"], "full_name": "Impostor", "password": "another long password"},
    )

    assert response.status_code == 409
    assert response.json()["code"] == "email_taken"
    assert (await api.sign_in(tenant.emails["doctor"], "another long password")).status_code == 401


async def test_org_admin_with_a_weak_password_is_422_naming_password(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await _platform_admin_headers(api)

    response = await api.client.post(
        f"/api/v1/organizations/{tenant.organization_id}/admins",
        headers=headers,
        json={"email": "weak@alpha.test", "full_name": "Weak", "password": "Tiny-pw-99"},
    )

    assert response.status_code == 422
    assert _field_names(response.json()) == {"password"}
    assert "Tiny-pw-99" not in response.text
    assert (await api.sign_in("weak@alpha.test", "Tiny-pw-99")).status_code == 401


async def test_platform_admin_sees_no_tenant_users_or_facilities(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await _platform_admin_headers(api)
    some_user_id = (await api.client.get("/api/v1/me", headers=await api.headers_for(tenant.emails["doctor"]))).json()[
        "id"
    ]

    urls = [
        "/api/v1/users",
        f"/api/v1/users/{some_user_id}",
        "/api/v1/facilities",
        f"/api/v1/facilities/{tenant.facility_ids[0]}",
        "/api/v1/departments",
    ]
    for url in urls:
        response = await api.client.get(url, headers=headers)
        assert response.status_code == 403, (url, response.text)
        assert response.json()["code"] == "permission_denied"
        assert str(tenant.facility_ids[0]) not in response.text
        assert tenant.emails["doctor"] not in response.text


async def test_platform_admin_may_not_create_staff_or_facilities_in_a_tenant(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    headers = await _platform_admin_headers(api)

    user = await api.client.post(
        "/api/v1/users",
        headers=headers,
        json={"email": "planted@alpha.test", "full_name": "Planted", "roles": ["doctor"], "password": PASSWORD},
    )
    facility = await api.client.post(
        "/api/v1/facilities", headers=headers, json={"name": "Planted", "code": "PLANT", "timezone": "UTC"}
    )

    assert user.status_code == 403
    assert facility.status_code == 403
    admin = await api.headers_for(tenant.admin_email)
    facilities = (await api.client.get("/api/v1/facilities", headers=admin)).json()["items"]
    assert sorted(f["code"] for f in facilities) == ["NORTH", "SOUTH"]
    assert (await api.sign_in("planted@alpha.test")).status_code == 401


async def test_suspending_an_organization_ends_its_sessions_and_refuses_sign_in(api: Any) -> None:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    headers = await _platform_admin_headers(api)
    alpha_doctor = await api.headers_for(alpha.emails["doctor"])
    beta_doctor = await api.headers_for(beta.emails["doctor"])

    suspended = await api.client.patch(
        f"/api/v1/organizations/{alpha.organization_id}", headers=headers, json={"active": False}
    )

    assert suspended.status_code == 200
    assert suspended.json()["active"] is False
    assert (await api.client.get("/api/v1/me", headers=alpha_doctor)).status_code == 401
    refused = await api.sign_in(alpha.emails["doctor"])
    wrong_password = await api.sign_in(beta.emails["doctor"], "not the right password")
    assert refused.status_code == 401
    assert refused.json() == wrong_password.json()
    # Other tenants are untouched.
    assert (await api.client.get("/api/v1/me", headers=beta_doctor)).status_code == 200
