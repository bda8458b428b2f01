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
from datetime import timedelta
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
from tests.scheduling.conftest import tomorrow_at
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
    user_id: uuid.UUID | None = None


@dataclass(frozen=True)
class Schedule:
    """The first organization's scheduling data: a practitioner with hours, a type, a booking, a waitlist entry."""

    practitioner_id: uuid.UUID
    rule_id: uuid.UUID
    appointment_type_id: uuid.UUID
    appointment_id: uuid.UUID
    entry_id: uuid.UUID
    # The OPD queue: tomorrow's queue, its room, the patient's token, a lobby board.
    queue_id: uuid.UUID
    room_id: uuid.UUID
    token_id: uuid.UUID
    board_id: uuid.UUID


@dataclass(frozen=True)
class FirstOrganization:
    tenant: Tenant
    department_id: uuid.UUID
    user_id: uuid.UUID
    patient_id: uuid.UUID
    schedule: Schedule

    def path_ids(self) -> dict[str, uuid.UUID]:
        return {
            "organization_id": self.tenant.organization_id,
            "facility_id": self.tenant.facility_ids[0],
            "department_id": self.department_id,
            "user_id": self.user_id,
            "patient_id": self.patient_id,
            "practitioner_id": self.schedule.practitioner_id,
            "rule_id": self.schedule.rule_id,
            "appointment_id": self.schedule.appointment_id,
            "hold_id": self.schedule.appointment_id,
            "entry_id": self.schedule.entry_id,
            "queue_id": self.schedule.queue_id,
            "token_id": self.schedule.token_id,
            "board_id": self.schedule.board_id,
        }

    def ids(self) -> set[str]:
        return {str(value) for value in self.path_ids().values()} | {str(f) for f in self.tenant.facility_ids}


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def _bodies(first: FirstOrganization) -> dict[tuple[str, str], Callable[[], dict[str, Any]]]:
    """Minimal valid bodies for routes that create something; every other body route gets ``{}``.

    Bodies that name a first-organization facility test the tenant wall on ids inside the body too."""
    facility = str(first.tenant.facility_ids[0])
    schedule = first.schedule
    booking = {
        "patient_id": str(first.patient_id),
        "practitioner_id": str(schedule.practitioner_id),
        "facility_id": facility,
        "appointment_type_id": str(schedule.appointment_type_id),
        "start": tomorrow_at(15).isoformat(),
    }
    absence = {"starts": tomorrow_at(19).isoformat(), "ends": tomorrow_at(20).isoformat(), "facility_id": facility}
    return {
        ("POST", "/api/v1/practitioners"): lambda: {
            "user_id": str(first.user_id),
            "display_name": "Dr. Matrix",
            "specialty": "general_medicine",
            "facility_ids": [facility],
        },
        ("POST", "/api/v1/practitioners/{practitioner_id}/availability"): lambda: {
            "facility_id": facility,
            "weekday": 0,
            "starts": "06:00",
            "ends": "07:00",
            "slot_minutes": 10,
        },
        ("POST", "/api/v1/practitioners/{practitioner_id}/leave"): lambda: absence,
        ("POST", "/api/v1/practitioners/{practitioner_id}/extra-sessions"): lambda: absence,
        ("POST", "/api/v1/holidays"): lambda: {
            "facility_id": facility,
            "day": (tomorrow_at(0).date() + timedelta(days=20)).isoformat(),
            "name": "Matrix Day",
        },
        ("POST", "/api/v1/appointments"): lambda: booking,
        ("POST", "/api/v1/slot-holds"): lambda: booking,
        ("POST", "/api/v1/appointments/{appointment_id}/cancel"): lambda: {"code": "other"},
        ("POST", "/api/v1/appointments/{appointment_id}/reschedule"): lambda: {"start": tomorrow_at(16).isoformat()},
        ("POST", "/api/v1/waitlist"): lambda: {
            "patient_id": str(first.patient_id),
            "facility_id": facility,
            "practitioner_id": str(schedule.practitioner_id),
            "appointment_type_id": str(schedule.appointment_type_id),
            "from_date": tomorrow_at(0).date().isoformat(),
            "to_date": tomorrow_at(0).date().isoformat(),
        },
        ("POST", "/api/v1/queues"): lambda: {
            "facility_id": facility,
            "day": tomorrow_at(0).date().isoformat(),
            "name": "Matrix queue",
            "prefix": _unique("")[:4].translate(str.maketrans("0123456789", "ABCDEFGHIJ")).upper(),
            "rooms": ["Matrix room"],
        },
        ("POST", "/api/v1/queues/{queue_id}/tokens"): lambda: {"patient_id": str(first.patient_id)},
        ("POST", "/api/v1/queues/{queue_id}/call-next"): lambda: {"room_id": str(schedule.room_id)},
        ("POST", "/api/v1/queues/{queue_id}/delay"): lambda: {"minutes": 5},
        ("POST", "/api/v1/tokens/{token_id}/transfer"): lambda: {"queue_id": str(schedule.queue_id)},
        ("POST", "/api/v1/boards"): lambda: {"facility_id": facility, "name": "Matrix board"},
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
        await _schedule(api, tenant, admin_headers, await _user_id(api, tenant.emails["doctor"]), patient.json()["id"]),
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
            user_id=await _user_id(api, other.admin_email),
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


async def _schedule(api: Any, tenant: Tenant, admin: dict[str, str], doctor_id: uuid.UUID, patient_id: str) -> Schedule:
    facility = str(tenant.facility_ids[0])

    async def created(path: str, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
        response = await api.client.post(f"/api/v1{path}", headers=admin, json=body)
        assert response.status_code == status, response.text
        return dict(response.json())

    practitioner = await created(
        "/practitioners",
        {
            "user_id": str(doctor_id),
            "display_name": "Dr. Alpha",
            "specialty": "general_medicine",
            "facility_ids": [facility],
        },
    )
    rules = [
        await created(
            f"/practitioners/{practitioner['id']}/availability",
            {"facility_id": facility, "weekday": weekday, "starts": "08:00", "ends": "20:00", "slot_minutes": 10},
        )
        for weekday in range(7)
    ]
    kind = await created("/appointment-types", {"name": "Matrix visit", "code": "matrix", "duration_minutes": 20})
    booking = {
        "patient_id": patient_id,
        "practitioner_id": practitioner["id"],
        "facility_id": facility,
        "appointment_type_id": kind["id"],
    }
    appointment = await created("/appointments", {**booking, "start": tomorrow_at(10).isoformat()})
    day = tomorrow_at(0).date().isoformat()
    del booking["practitioner_id"]
    entry = await created(
        "/waitlist", {**booking, "practitioner_id": practitioner["id"], "from_date": day, "to_date": day}
    )
    queue = await created(
        "/queues",
        {"facility_id": facility, "day": day, "name": "Alpha OPD", "prefix": "AL", "rooms": ["Alpha room"]},
    )
    token = await created(f"/queues/{queue['id']}/tokens", {"patient_id": patient_id})
    board = await created("/boards", {"facility_id": facility, "name": "Alpha lobby"})
    return Schedule(
        uuid.UUID(practitioner["id"]),
        uuid.UUID(rules[0]["id"]),
        uuid.UUID(kind["id"]),
        uuid.UUID(appointment["id"]),
        uuid.UUID(entry["id"]),
        uuid.UUID(queue["id"]),
        uuid.UUID(queue["rooms"][0]["id"]),
        uuid.UUID(token["id"]),
        uuid.UUID(board["id"]),
    )


def _shown_to_outsider(route: APIRoute, caller: Caller, response: Any) -> str:
    """What a response shows the other organization's caller that it did not send itself. Its own audit log
    records each of its refused probes with the path it asked for (a guessed id included), and must: that
    echo of its own request is not the first organization's data. Everything else is scanned whole."""
    if route.path != "/api/v1/audit-events" or not response.is_success:
        return str(response.text)
    others = [entry for entry in response.json()["items"] if entry["actor_id"] != str(caller.user_id)]
    return json.dumps(others)


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
                    shown = _shown_to_outsider(route, caller, response)
                    leaked = [secret for secret in secrets if secret in shown]
                    if leaked:
                        problem = f"{problem + '; ' if problem else ''}body reveals {leaked}"
                if problem:
                    mismatches.append(f"{method} {route.path} as {caller.name}: {problem}")

    assert calls >= len(routes) * len(callers)
    assert mismatches == [], f"{len(mismatches)} of {calls} calls answered wrongly:\n" + "\n".join(mismatches)
