"""Demo data for trying sehat on a laptop: one organization, two facilities in two timezones, one user per
role. Idempotent, and refused in production."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Role, SystemActor
from sehat.core.crypto import associated_data
from sehat.core.tenant_scope import enter_organization, enter_platform_scope
from sehat.identity.models import User, UserFacility
from sehat.identity.runtime import AuthRuntime
from sehat.tenancy.models import Department, Facility, Organization

DEMO_PASSWORD = "sehat-demo-password"  # noqa: S105 - demo only, printed on purpose
# Shared by every demo staff account so the printed secret is all a tester needs for one-time codes.
DEMO_TOTP_SECRET = "SEHATDEMOSEHATDEMOSEHATDEMO23456"  # noqa: S105 - demo only
DEMO_DOMAIN = "demo.sehat.local"

_FACILITIES = (
    ("Karachi Central Clinic", "KHI", "Asia/Karachi"),
    ("London Riverside Outpatients", "LON", "Europe/London"),
)
_DEPARTMENTS = (("General Medicine", "GM"), ("Paediatrics", "PAED"), ("Cardiology", "CARD"))
_PEOPLE = (
    (Role.platform_admin, "Platform Administrator"),
    (Role.org_admin, "Ayesha Siddiqui"),
    (Role.front_office, "Bilal Ahmed"),
    (Role.doctor, "Dr. Sara Khan"),
    (Role.nurse, "Nadia Rahman"),
    (Role.billing, "Omar Farooq"),
    (Role.auditor, "Hina Malik"),
    (Role.patient, "Imran Qureshi"),
)


@dataclass(frozen=True)
class DemoAccount:
    role: Role
    email: str


async def seed_demo(session: AsyncSession, auth: AuthRuntime, actor: SystemActor) -> list[DemoAccount]:
    if auth.settings.is_production:
        raise RuntimeError("demo data is refused in production")
    organization = await session.scalar(select(Organization).where(Organization.slug == "demo"))
    if organization is None:
        organization = Organization(name="Sehat Demo Network", slug="demo")
        session.add(organization)
        await session.flush()
        # Facilities and departments are the organization's own: row-level security admits them only there.
        await enter_organization(session, organization.id)
        facilities = []
        for name, code, timezone in _FACILITIES:
            facility = Facility(organization_id=organization.id, name=name, code=code, timezone=timezone)
            session.add(facility)
            facilities.append(facility)
        await session.flush()
        for facility in facilities:
            session.add_all(
                Department(organization_id=organization.id, facility_id=facility.id, name=name, code=code)
                for name, code in _DEPARTMENTS
            )
        password_hash = await auth.passwords.hash_async(DEMO_PASSWORD)
        # Accounts include the platform administrator, who belongs to no organization.
        await enter_platform_scope(session)
        for role, full_name in _PEOPLE:
            staff = role is not Role.patient
            user = User(
                organization_id=None if role is Role.platform_admin else organization.id,
                email=f"{role.value.replace('_', '-')}@{DEMO_DOMAIN}",
                full_name=full_name,
                roles=[role.value],
                password_hash=password_hash,
                mfa_enabled=staff,
            )
            session.add(user)
            await session.flush()
            if staff:
                user.mfa_secret_sealed = auth.key_ring.seal(
                    DEMO_TOTP_SECRET.encode(), associated_data("users", "mfa_secret_sealed", user.id)
                )
            if role not in (Role.platform_admin, Role.org_admin, Role.patient):
                session.add_all(
                    UserFacility(user_id=user.id, facility_id=facility.id, organization_id=organization.id)
                    for facility in facilities
                )
        await session.flush()
    return [DemoAccount(role, f"{role.value.replace('_', '-')}@{DEMO_DOMAIN}") for role, _ in _PEOPLE]
