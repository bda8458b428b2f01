"""The role-by-route matrix (issue 3): every /api/v1 route, called with no token, an expired token, each
role's token and a token of another organization, answers what its declared permission says, and another
organization never gets the first one's data.

Only the authorization outcome is asserted: bodies are minimal, so a caller who is let in may still get a
422 or a 409. One test per backend walks everything, signing each caller in once.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from fastapi.routing import APIRoute
from sqlalchemy import select

from sehat.app import PUBLIC_ROUTES
from sehat.core.actor import Audience, Role, SystemActor
from sehat.identity import service as identity_service
from sehat.identity.models import User
from tests.conftest import PASSWORD, Tenant, build_tenant
from tests.identity.test_permissions_as_data import DEFAULT_GRANTS
from tests.patients.conftest import patient_body
from tests.test_route_permissions import _api_routes, _declared

DENIED = {401, 403}
PATIENT_NAME = "Matrixpatient"
PATIENT_PHONE = "+919812300001"
TENANT_STAFF_ROLES = ("front_office", "doctor", "nurse", "billing", "auditor")


@dataclass(frozen=True)
class Caller:
    name: str
    headers: dict[str, str]
    # None for the callers no role is read from: no token, and a token that expired.
    role: Role | None = None
    from_other_organization: bool = False


@dataclass(frozen=True)
class FirstOrganization:
    tenant: Tenant
    department_id: uuid.UUID
    user_id: uuid.UUID
    patient_id: uuid.UUID

    def path_ids(self) -> dict[str, uuid.UUID]:
        return {
            "organization_id": self.tenant.organization_id,
            "facility_id": self.tenant.facility_ids[0],
            "department_id": self.department_id,
            "user_id": self.user_id,
            "patient_id": self.patient_id,
        }

    def ids(self) -> set[str]:
        return {str(value) for value in self.path_ids().values()} | {str(f) for f in self.tenant.facility_ids}


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _bodies(first: FirstOrganization) -> dict[tuple[str, str], Callable[[], dict[str, Any]]]:
    """Minimal valid bodies for routes that create something; every other body route gets ``{}``.

    Bodies that name a first-organization facility test the tenant wall on ids inside the body too."""
    facility = str(first.tenant.facility_ids[0])
    return {
        ("POST", "/api/v1/organizations"): lambda: {"name": "Matrix Org", "slug": _unique("matrix-")},
        ("POST", "/api/v1/organizations/{organization_id}/admins"): lambda: {
            "email": f"{_unique('admin-')}@matrix.test",
            "full_name": "Matrix Admin",
            "password": PASSWORD,
        },
        ("POST", "/api/v1/facilities"): lambda: {
            "name": "Matrix Clinic",
            "code": _unique("M"),
            "timezone": "Asia/Karachi",
        },
        ("POST", "/api/v1/departments"): lambda: {"facility_id": facility, "name": "Matrix Ward", "code": _unique("D")},
        ("POST", "/api/v1/patients"): lambda: patient_body(first.tenant, phone=None, email=None, national_id=None),
        ("POST", "/api/v1/patients/{patient_id}/merge"): lambda: {"survivor_id": str(first.patient_id)},
        ("POST", "/api/v1/patients/{patient_id}/consents"): lambda: {
            "kind": "treatment",
            "granted": True,
            "evidence_kind": "checkbox",
            "evidence": "I agree to be treated.",
        },
        ("PUT", "/api/v1/patients/{patient_id}/legal-hold"): lambda: {"reason": "Matrix hold"},
        ("POST", "/api/v1/patients/{patient_id}/erase"): lambda: {"reason": "other"},
        ("POST", "/api/v1/users"): lambda: {
            "email": f"{_unique('staff-')}@matrix.test",
            "full_name": "Matrix Staff",
            "roles": ["nurse"],
            "facility_ids": [facility],
            "password": PASSWORD,
        },
    }


def _expired_token(api: Any, first: FirstOrganization, admin_id: uuid.UUID) -> str:
    kid, private_key = api.auth.signing_keys.signer()
    now = int(time.time())
    claims = {
        "iss": api.auth.tokens.issuer,
        "aud": Audience.staff.value,
        "sub": str(admin_id),
        "org": str(first.tenant.organization_id),
        "roles": [Role.org_admin.value],
        "sid": str(uuid.uuid4()),
        "scope": "full",
        "iat": now - 1000,
        "nbf": now - 1000,
        "exp": now - 100,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, private_key, algorithm="EdDSA", headers={"kid": kid})


async def _user_id(api: Any, email: str) -> uuid.UUID:
    async with api.unit_of_work() as session:
        return await session.scalar(select(User.id).where(User.email == email))


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _set_up(api: Any) -> tuple[FirstOrganization, list[Caller], list[str]]:
    """The first organization, every caller, and the first organization's data no outsider may see."""
    tenant = await build_tenant(api, "alpha", roles=TENANT_STAFF_ROLES)
    other = await build_tenant(api, "beta", roles=())
    admin_headers = await api.headers_for(tenant.admin_email)
    department = await api.client.post(
        "/api/v1/departments",
        headers=admin_headers,
        json={"facility_id": str(tenant.facility_ids[0]), "name": "Alpha General Medicine", "code": "GM"},
    )
    assert department.status_code == 201, department.text
    patient = await api.client.post(
        "/api/v1/patients",
        headers=await api.headers_for(tenant.emails["front_office"]),
        json=patient_body(tenant, given_name=PATIENT_NAME, phone=PATIENT_PHONE, email=None),
    )
    assert patient.status_code == 201, patient.text
    first = FirstOrganization(
        tenant,
        uuid.UUID(department.json()["id"]),
        await _user_id(api, tenant.emails["doctor"]),
        uuid.UUID(patient.json()["id"]),
    )

    async with api.unit_of_work() as session:
        await identity_service.create_platform_admin(
            session, api.auth, SystemActor(name="test"), "root@platform.test", "Platform Admin", PASSWORD
        )
    patient_email = "patient@alpha.test"
    await api.add_patient_account(tenant.organization_id, patient_email)
    patient_sign_in = await api.sign_in(patient_email)
    assert patient_sign_in.status_code == 200, patient_sign_in.text

    callers = [
        Caller("no token", {}),
        Caller("expired token", _bearer(_expired_token(api, first, await _user_id(api, tenant.admin_email)))),
        Caller("org_admin", admin_headers, Role.org_admin),
        *[Caller(role, await api.headers_for(tenant.emails[role]), Role(role)) for role in TENANT_STAFF_ROLES],
        Caller("patient", _bearer(patient_sign_in.json()["access_token"]), Role.patient),
        Caller("platform_admin", await api.headers_for("root@platform.test"), Role.platform_admin),
        Caller(
            "org_admin of another organization",
            await api.headers_for(other.admin_email),
            Role.org_admin,
            from_other_organization=True,
        ),
    ]
    secrets = [
        *(f"alpha {code}" for code in ("NORTH", "SOUTH")),
        "Org alpha",
        "Alpha General Medicine",
        "@alpha.test",
        PATIENT_NAME,
        PATIENT_PHONE,
        *first.ids(),
    ]
    return first, callers, secrets


def _walk_order(route: APIRoute) -> tuple[bool, bool, str]:
    # Logging out ends the caller's session, so it goes last: every other route still gets a live token.
    # Erasure goes just before it, so every other patient route meets the patient whole.
    return route.path == "/api/v1/auth/logout", route.path.endswith("/erase"), route.path


def _fill_path(path: str, first: FirstOrganization) -> str:
    ids = first.path_ids()
    return re.sub(r"\{(\w+)\}", lambda match: str(ids.get(match.group(1), uuid.uuid4())), path)


def _expectation(route: APIRoute, caller: Caller, touches_first_organization: bool) -> str:
    """What this caller must get: 'unauthenticated', 'wrong_audience', 'forbidden', 'hidden' (404 or 403)
    or 'allowed' (anything but 401 and 403).

    Grants come from the written-out default table, not from the server, so a server granting more than
    the specification says shows up here too."""
    if route.path in PUBLIC_ROUTES:
        return "allowed"
    if caller.role is None:
        return "unauthenticated"
    audience = Audience.patient if caller.role is Role.patient else Audience.staff
    granted = DEFAULT_GRANTS[caller.role.value]
    for requirement in _declared(route.dependant):
        if audience not in requirement.audiences:
            return "wrong_audience"
        if requirement.permission not in granted:
            return "forbidden"
    if caller.from_other_organization and touches_first_organization:
        return "hidden"
    return "allowed"


def _mismatch(expected: str, response: Any) -> str | None:
    status = response.status_code
    is_problem = response.headers.get("content-type") == "application/problem+json"
    code = response.json().get("code") if is_problem else None
    ok = {
        "unauthenticated": status == 401,
        "wrong_audience": status == 401 and code == "wrong_audience",
        "forbidden": status == 403,
        "hidden": status in {403, 404},
        "allowed": status not in DENIED,
    }[expected]
    return None if ok else f"expected {expected}, got {status} {code or ''}".rstrip()


async def test_every_route_answers_every_caller_as_its_declared_permission_says(api: Any) -> None:
    first, callers, secrets = await _set_up(api)
    bodies = _bodies(first)
    routes = sorted(
        (route for route in _api_routes(api.app.routes) if route.path.startswith("/api/v1")), key=_walk_order
    )
    assert len(routes) >= 20  # the walk really found the routers

    mismatches: list[str] = []
    calls = 0
    for route in routes:
        for method in sorted(route.methods):
            url = _fill_path(route.path, first)
            for caller in callers:
                body = bodies.get((method, route.path), dict)() if route.body_field is not None else None
                touches_first = any(value in url or value in json.dumps(body) for value in first.ids())
                expected = _expectation(route, caller, touches_first)
                response = await api.client.request(method, url, headers=caller.headers, json=body)
                calls += 1
                problem = _mismatch(expected, response)
                if caller.from_other_organization:
                    if touches_first and response.is_success:
                        problem = f"got {response.status_code} for another organization's resource"
                    leaked = [secret for secret in secrets if secret in response.text]
                    if leaked:
                        problem = f"{problem + '; ' if problem else ''}body reveals {leaked}"
                if problem:
                    mismatches.append(f"{method} {route.path} as {caller.name}: {problem}")

    assert calls >= len(routes) * len(callers)
    assert mismatches == [], f"{len(mismatches)} of {calls} calls answered wrongly:\n" + "\n".join(mismatches)
