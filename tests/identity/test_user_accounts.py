"""Organization administrators manage the staff accounts of their own organization, and only those."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import orjson
import pytest

from tests.conftest import PASSWORD, build_tenant

USER_KEYS = {
    "id", "organization_id", "email", "full_name", "roles", "facility_ids", "mfa_enabled", "active", "created_at",
}  # fmt: skip


def _field_names(body: dict[str, Any]) -> set[str]:
    return {error["field"] for error in body.get("errors", [])}


def _new_user(email: str, **overrides: Any) -> dict[str, Any]:
    return {"email": email, "full_name": "New Person", "roles": ["nurse"], "password": PASSWORD, **overrides}


async def _users(api: Any, headers: dict[str, str]) -> list[dict[str, Any]]:
    return await api.all_pages("/api/v1/users", headers)


async def _user_id(api: Any, headers: dict[str, str], email: str) -> str:
    matches = [user["id"] for user in await _users(api, headers) if user["email"] == email]
    assert len(matches) == 1, email
    return matches[0]


async def test_org_admin_creates_a_staff_user_without_exposing_any_password_field(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)

    created = await api.client.post(
        "/api/v1/users",
        headers=admin,
        json=_new_user(
            "  Nadia@Alpha.TEST ", full_name="Nadia Khan", roles=["nurse", "front_office", "nurse"],
            facility_ids=[str(tenant.facility_ids[1]), str(tenant.facility_ids[0])],
        ),
    )  # fmt: skip

    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == USER_KEYS
    assert PASSWORD not in created.text
    assert "argon2" not in created.text
    assert body["organization_id"] == str(tenant.organization_id)
    assert body["email"] == "nadia@alpha.test"
    assert body["full_name"] == "Nadia Khan"
    assert body["roles"] == ["front_office", "nurse"]
    assert sorted(body["facility_ids"]) == sorted(str(f) for f in tenant.facility_ids)
    assert body["mfa_enabled"] is False
    assert body["active"] is True
    fetched = await api.client.get(f"/api/v1/users/{body['id']}", headers=admin)
    assert fetched.status_code == 200
    assert set(fetched.json()) == USER_KEYS
    assert {**fetched.json(), "facility_ids": None} == {**body, "facility_ids": None}
    assert sorted(fetched.json()["facility_ids"]) == sorted(body["facility_ids"])


async def test_created_user_signs_in_with_their_password_and_sees_their_facilities(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)
    created = await api.client.post(
        "/api/v1/users",
        headers=admin,
        json=_new_user("nurse@alpha.test", facility_ids=[str(tenant.facility_ids[1])]),
    )
    assert created.status_code == 201

    nurse = await api.headers_for("nurse@alpha.test")

    me = (await api.client.get("/api/v1/me", headers=nurse)).json()
    assert me["id"] == created.json()["id"]
    assert me["organization_id"] == str(tenant.organization_id)
    assert me["roles"] == ["nurse"]
    facilities = (await api.client.get("/api/v1/facilities", headers=nurse)).json()["items"]
    assert [facility["id"] for facility in facilities] == [str(tenant.facility_ids[1])]


async def test_user_list_items_carry_no_password_fields(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)

    users = await _users(api, admin)

    assert sorted(user["email"] for user in users) == sorted([tenant.admin_email, *tenant.emails.values()])
    for user in users:
        assert set(user) == USER_KEYS


async def test_email_taken_is_refused_with_409(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)

    for email in (tenant.emails["doctor"], tenant.emails["doctor"].upper()):
        response = await api.client.post(
            "/api/v1/users", headers=admin, json=_new_user(email, password="another long password")
        )
        assert response.status_code == 409, email
        assert response.json()["code"] == "email_taken"

    doctors = [user for user in await _users(api, admin) if user["email"] == tenant.emails["doctor"]]
    assert len(doctors) == 1
    assert doctors[0]["roles"] == ["doctor"]
    assert (await api.sign_in(tenant.emails["doctor"], "another long password")).status_code == 401


async def test_email_of_another_tenants_user_is_taken_too(api: Any) -> None:
    await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    admin = await api.headers_for("admin@alpha.test")

    response = await api.client.post("/api/v1/users", headers=admin, json=_new_user(beta.emails["doctor"]))

    assert response.status_code == 409
    assert response.json()["code"] == "email_taken"
    assert str(beta.organization_id) not in response.text


async def test_weak_password_is_refused_with_422_naming_the_field(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)

    for password in ("Elevenchars", "x", " " * 12):
        response = await api.client.post(
            "/api/v1/users", headers=admin, json=_new_user("weak@alpha.test", password=password)
        )
        assert response.status_code == 422, repr(password)
        assert _field_names(response.json()) == {"password"}
        if password.strip():
            assert password not in response.text

    assert "weak@alpha.test" not in {user["email"] for user in await _users(api, admin)}


async def test_twelve_character_password_is_accepted(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)

    response = await api.client.post(
        "/api/v1/users", headers=admin, json=_new_user("twelve@alpha.test", password="Twelve-chars")
    )

    assert response.status_code == 201, response.text
    assert (await api.sign_in("twelve@alpha.test", "Twelve-chars")).status_code == 200


@pytest.mark.parametrize("role", ["platform_admin", "patient", "superuser"])
async def test_non_staff_role_in_the_body_is_refused_with_422(api: Any, role: str) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)

    created = await api.client.post(
        "/api/v1/users", headers=admin, json=_new_user("climber@alpha.test", roles=["doctor", role])
    )
    doctor_id = await _user_id(api, admin, tenant.emails["doctor"])
    updated = await api.client.patch(f"/api/v1/users/{doctor_id}", headers=admin, json={"roles": [role]})

    assert created.status_code == 422
    assert _field_names(created.json()) == {"roles.1"}
    assert updated.status_code == 422
    assert _field_names(updated.json()) == {"roles.0"}
    users = {user["email"]: user for user in await _users(api, admin)}
    assert "climber@alpha.test" not in users
    assert users[tenant.emails["doctor"]]["roles"] == ["doctor"]


async def test_empty_role_list_is_refused_with_422(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)

    response = await api.client.post("/api/v1/users", headers=admin, json=_new_user("nobody@alpha.test", roles=[]))

    assert response.status_code == 422
    assert _field_names(response.json()) == {"roles"}


async def test_unknown_body_field_is_refused_with_422_and_no_user_created(api: Any) -> None:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    admin = await api.headers_for(alpha.admin_email)

    response = await api.client.post(
        "/api/v1/users",
        headers=admin,
        json=_new_user("planted@beta.test", organization_id=str(beta.organization_id), mfa_enabled=True),
    )

    assert response.status_code == 422
    assert _field_names(response.json()) == {"organization_id", "mfa_enabled"}
    assert (await api.sign_in("planted@beta.test")).status_code == 401
    assert "planted@beta.test" not in {user["email"] for user in await _users(api, admin)}


async def test_facility_of_another_tenant_is_404_and_no_user_created(api: Any) -> None:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    admin = await api.headers_for(alpha.admin_email)

    for facility_ids in ([beta.facility_ids[0]], [alpha.facility_ids[0], beta.facility_ids[0]], [uuid.uuid4()]):
        response = await api.client.post(
            "/api/v1/users",
            headers=admin,
            json=_new_user("spy@alpha.test", facility_ids=[str(f) for f in facility_ids]),
        )
        assert response.status_code == 404, facility_ids
        assert response.json()["code"] == "facility_not_found"
        assert str(beta.facility_ids[0]) not in response.text

    assert "spy@alpha.test" not in {user["email"] for user in await _users(api, admin)}
    assert (await api.sign_in("spy@alpha.test")).status_code == 401


async def test_assigning_another_tenants_facility_to_a_user_is_404_and_changes_nothing(api: Any) -> None:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    admin = await api.headers_for(alpha.admin_email)
    doctor_id = await _user_id(api, admin, alpha.emails["doctor"])

    response = await api.client.patch(
        f"/api/v1/users/{doctor_id}",
        headers=admin,
        json={"full_name": "Renamed", "facility_ids": [str(alpha.facility_ids[1]), str(beta.facility_ids[0])]},
    )

    assert response.status_code == 404
    assert response.json()["code"] == "facility_not_found"
    doctor = (await api.client.get(f"/api/v1/users/{doctor_id}", headers=admin)).json()
    assert doctor["facility_ids"] == [str(alpha.facility_ids[0])]
    assert doctor["full_name"] == "doctor person"


async def test_reassigning_a_users_facilities_changes_what_their_current_token_sees(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)
    doctor = await api.headers_for(tenant.emails["doctor"])
    doctor_id = await _user_id(api, admin, tenant.emails["doctor"])
    north, south = (str(facility_id) for facility_id in tenant.facility_ids)

    response = await api.client.patch(f"/api/v1/users/{doctor_id}", headers=admin, json={"facility_ids": [south]})

    assert response.status_code == 200, response.text
    assert response.json()["facility_ids"] == [south]
    facilities = (await api.client.get("/api/v1/facilities", headers=doctor)).json()["items"]
    assert [facility["id"] for facility in facilities] == [south]
    assert (await api.client.get(f"/api/v1/facilities/{north}", headers=doctor)).status_code == 404
    assert (await api.client.get("/api/v1/me", headers=doctor)).json()["facility_ids"] == [south]


async def test_user_list_pages_through_every_user_exactly_once(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    await build_tenant(api, "beta")
    admin = await api.headers_for(tenant.admin_email)
    expected = {tenant.admin_email, *tenant.emails.values()}
    for number in range(8):
        email = f"staff{number}@alpha.test"
        response = await api.client.post("/api/v1/users", headers=admin, json=_new_user(email))
        assert response.status_code == 201
        expected.add(email)

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await api.client.get("/api/v1/users", headers=admin, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert 1 <= len(page["items"]) <= 2
        seen.extend(user["email"] for user in page["items"])
        pages += 1
        assert pages <= len(expected), "the cursor never ended"
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert len(seen) == len(expected) == 11
    assert set(seen) == expected
    assert pages == 6


async def test_a_page_exactly_full_at_the_end_has_no_next_cursor(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)

    response = await api.client.get("/api/v1/users", headers=admin, params={"limit": 3})

    assert response.status_code == 200
    assert len(response.json()["items"]) == 3
    assert response.json()["next_cursor"] is None


@pytest.mark.parametrize("limit", ["101", "0", "-1", "ten"])
async def test_limit_outside_1_to_100_is_refused_with_422(api: Any, limit: str) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)

    response = await api.client.get("/api/v1/users", headers=admin, params={"limit": limit})

    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert _field_names(response.json()) == {"query.limit"}


def _cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "!!!!",
        "é",
        _cursor_of([1, 2]),
        _cursor_of({"a": 1, "b": 2}),
        _cursor_of(None),
        _cursor_of(["2024-01-01T00:00:00+00:00", "not-a-uuid"]),
        _cursor_of(["2024-01-01T00:00:00", str(uuid.UUID(int=1))]),
        _cursor_of(["2024-01-01T00:00:00+00:00", str(uuid.UUID(int=1)), 3]),
    ],
    ids=["word", "punctuation", "non-ascii", "numbers", "object", "null", "bad-uuid", "naive-time", "three-parts"],
)
async def test_garbage_cursor_is_refused_with_422_invalid_cursor(api: Any, cursor: str) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)

    response = await api.client.get("/api/v1/users", headers=admin, params={"cursor": cursor})

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_cursor"


@pytest.mark.parametrize("edge", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"])
async def test_cursor_with_a_time_beyond_the_calendar_is_refused_with_422_invalid_cursor(api: Any, edge: str) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)

    response = await api.client.get(
        "/api/v1/users", headers=admin, params={"cursor": _cursor_of([edge, str(uuid.UUID(int=1))])}
    )

    assert response.status_code == 422
    assert response.json()["code"] == "invalid_cursor"


async def test_another_tenants_user_is_404_for_read_and_update(api: Any) -> None:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    beta_admin = await api.headers_for(beta.admin_email)
    beta_doctor = await api.headers_for(beta.emails["doctor"])
    foreign_id = await _user_id(api, beta_admin, beta.emails["doctor"])
    alpha_admin = await api.headers_for(alpha.admin_email)

    read = await api.client.get(f"/api/v1/users/{foreign_id}", headers=alpha_admin)
    update = await api.client.patch(
        f"/api/v1/users/{foreign_id}", headers=alpha_admin, json={"active": False, "roles": ["org_admin"]}
    )
    missing = await api.client.get(f"/api/v1/users/{uuid.uuid4()}", headers=alpha_admin)

    for response in (read, update, missing):
        assert response.status_code == 404
        assert response.json()["code"] == "user_not_found"
        assert beta.emails["doctor"] not in response.text
    assert read.json() == missing.json()
    assert beta.emails["doctor"] not in {user["email"] for user in await _users(api, alpha_admin)}
    still = (await api.client.get(f"/api/v1/users/{foreign_id}", headers=beta_admin)).json()
    assert (still["active"], still["roles"]) == (True, ["doctor"])
    assert (await api.client.get("/api/v1/me", headers=beta_doctor)).status_code == 200


async def test_disabling_a_user_ends_their_existing_tokens_at_once(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)
    tokens = await api.full_session(tenant.emails["doctor"])
    doctor = {"Authorization": f"Bearer {tokens['access_token']}"}
    me = await api.client.get("/api/v1/me", headers=doctor)
    assert me.status_code == 200

    disabled = await api.client.patch(f"/api/v1/users/{me.json()['id']}", headers=admin, json={"active": False})

    assert disabled.status_code == 200, disabled.text
    assert disabled.json()["active"] is False
    after = await api.client.get("/api/v1/me", headers=doctor)
    assert after.status_code == 401
    assert after.json()["code"] == "session_revoked"
    facilities = await api.client.get("/api/v1/facilities", headers=doctor)
    assert facilities.status_code == 401
    refreshed = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 401
    signed_in = await api.sign_in(tenant.emails["doctor"])
    assert signed_in.status_code == 401
    stored = (await api.client.get(f"/api/v1/users/{me.json()['id']}", headers=admin)).json()
    assert stored["active"] is False


async def test_re_enabled_user_signs_in_again(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)
    doctor_id = await _user_id(api, admin, tenant.emails["doctor"])
    assert (
        await api.client.patch(f"/api/v1/users/{doctor_id}", headers=admin, json={"active": False})
    ).status_code == 200

    enabled = await api.client.patch(f"/api/v1/users/{doctor_id}", headers=admin, json={"active": True})

    assert enabled.status_code == 200
    assert enabled.json()["active"] is True
    doctor = await api.headers_for(tenant.emails["doctor"])
    assert (await api.client.get("/api/v1/me", headers=doctor)).status_code == 200


async def test_changing_a_users_roles_ends_their_sessions(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)
    tokens = await api.full_session(tenant.emails["doctor"])
    doctor = {"Authorization": f"Bearer {tokens['access_token']}"}
    doctor_id = (await api.client.get("/api/v1/me", headers=doctor)).json()["id"]

    changed = await api.client.patch(f"/api/v1/users/{doctor_id}", headers=admin, json={"roles": ["nurse"]})

    assert changed.status_code == 200, changed.text
    assert changed.json()["roles"] == ["nurse"]
    after = await api.client.get("/api/v1/me", headers=doctor)
    assert after.status_code == 401
    assert after.json()["code"] == "session_revoked"
    refreshed = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 401
    fresh = await api.headers_for(tenant.emails["doctor"])
    me = (await api.client.get("/api/v1/me", headers=fresh)).json()
    assert me["roles"] == ["nurse"]


async def test_granting_a_user_more_roles_ends_their_sessions_so_new_tokens_carry_them(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)
    doctor = await api.headers_for(tenant.emails["doctor"])
    doctor_id = (await api.client.get("/api/v1/me", headers=doctor)).json()["id"]

    changed = await api.client.patch(
        f"/api/v1/users/{doctor_id}", headers=admin, json={"roles": ["doctor", "org_admin"]}
    )

    assert changed.status_code == 200
    assert changed.json()["roles"] == ["doctor", "org_admin"]
    assert (await api.client.get("/api/v1/me", headers=doctor)).status_code == 401
    promoted = await api.headers_for(tenant.emails["doctor"])
    assert (await api.client.get("/api/v1/users", headers=promoted)).status_code == 200


async def test_renaming_or_resending_the_same_roles_keeps_the_users_sessions(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)
    doctor = await api.headers_for(tenant.emails["doctor"])
    doctor_id = (await api.client.get("/api/v1/me", headers=doctor)).json()["id"]

    renamed = await api.client.patch(
        f"/api/v1/users/{doctor_id}", headers=admin, json={"full_name": "Dr. Ayesha", "roles": ["doctor"]}
    )

    assert renamed.status_code == 200
    assert renamed.json()["full_name"] == "Dr. Ayesha"
    me = await api.client.get("/api/v1/me", headers=doctor)
    assert me.status_code == 200
    assert me.json()["full_name"] == "Dr. Ayesha"


async def test_admin_cannot_disable_themself(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)
    admin_id = (await api.client.get("/api/v1/me", headers=admin)).json()["id"]

    response = await api.client.patch(
        f"/api/v1/users/{admin_id}", headers=admin, json={"active": False, "full_name": "Gone"}
    )

    assert response.status_code == 409
    assert response.json()["code"] == "cannot_disable_self"
    assert (await api.client.get("/api/v1/me", headers=admin)).status_code == 200
    stored = (await api.client.get(f"/api/v1/users/{admin_id}", headers=admin)).json()
    assert (stored["active"], stored["full_name"]) == (True, "Org Admin")


async def test_staff_without_user_permissions_may_not_manage_or_list_users(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("front_office", "doctor", "nurse", "billing"))
    admin = await api.headers_for(tenant.admin_email)
    doctor_id = await _user_id(api, admin, tenant.emails["doctor"])

    for role in ("front_office", "doctor", "nurse", "billing"):
        headers = await api.headers_for(tenant.emails[role])
        for method, url, body in (
            ("POST", "/api/v1/users", _new_user(f"by-{role}@alpha.test", roles=["org_admin"])),
            ("GET", "/api/v1/users", None),
            ("GET", f"/api/v1/users/{doctor_id}", None),
            ("PATCH", f"/api/v1/users/{doctor_id}", {"active": False}),
        ):
            response = await api.client.request(method, url, headers=headers, json=body)
            assert response.status_code == 403, (role, method, url)
            assert response.json()["code"] == "permission_denied"

    emails = {user["email"] for user in await _users(api, admin)}
    assert not {email for email in emails if email.startswith("by-")}
    assert (await api.client.get(f"/api/v1/users/{doctor_id}", headers=admin)).json()["active"] is True


async def test_auditor_reads_users_but_may_not_change_them(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("doctor", "auditor"))
    auditor = await api.headers_for(tenant.emails["auditor"])

    listed = await api.client.get("/api/v1/users", headers=auditor)
    created = await api.client.post("/api/v1/users", headers=auditor, json=_new_user("by-auditor@alpha.test"))
    doctor_id = next(user["id"] for user in listed.json()["items"] if user["email"] == tenant.emails["doctor"])
    updated = await api.client.patch(f"/api/v1/users/{doctor_id}", headers=auditor, json={"active": False})

    assert listed.status_code == 200
    assert {user["email"] for user in listed.json()["items"]} == {tenant.admin_email, *tenant.emails.values()}
    assert created.status_code == 403
    assert updated.status_code == 403
    assert (await api.client.get(f"/api/v1/users/{doctor_id}", headers=auditor)).json()["active"] is True


async def test_user_routes_without_a_token_are_401(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    admin = await api.headers_for(tenant.admin_email)
    doctor_id = await _user_id(api, admin, tenant.emails["doctor"])

    for method, url, body in (
        ("POST", "/api/v1/users", _new_user("anon@alpha.test")),
        ("GET", "/api/v1/users", None),
        ("GET", f"/api/v1/users/{doctor_id}", None),
        ("PATCH", f"/api/v1/users/{doctor_id}", {"active": False}),
    ):
        response = await api.client.request(method, url, json=body)
        assert response.status_code == 401, (method, url)
        assert response.json()["code"] == "invalid_token"

    assert (await api.client.get(f"/api/v1/users/{doctor_id}", headers=admin)).json()["active"] is True
    assert "anon@alpha.test" not in {user["email"] for user in await _users(api, admin)}
