"""Demo data for trying sehat on a laptop: one organization, two facilities in two timezones, one user per
role, a few registered patients (the demo patient account is linked to one of them), and the demo doctor's
schedule at Karachi with appointment types and two bookings. Idempotent, and refused in production."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor, Audience, Role, SystemActor
from sehat.core.crypto import associated_data
from sehat.core.tenant_scope import enter_organization, enter_platform_scope
from sehat.identity.models import User, UserFacility
from sehat.identity.permissions import APPOINTMENT_BOOK, PATIENT_WRITE, SCHEDULE_MANAGE, SCHEDULE_READ
from sehat.identity.runtime import AuthRuntime
from sehat.patients import service as patients_service
from sehat.patients.schemas import PatientCreate
from sehat.patients.vault import PatientVault
from sehat.scheduling import service as scheduling
from sehat.scheduling.schemas import AppointmentCreate, AppointmentTypeCreate, PractitionerCreate, WeeklyHoursCreate
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


# Registered at the first facility by the demo front office; the first is the demo patient account's record.
_PATIENTS = (
    ("Imran", "Qureshi", date(1979, 3, 14), "male", "+92 300 1112233"),
    ("Zainab", "Hussain", date(1992, 11, 2), "female", "+92 321 4445566"),
    ("Ali", "Raza", date(2016, 6, 21), "male", "+92 333 7778899"),
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
        patients = await _register_demo_patients(session, auth, organization.id, facilities[0].id)
        await _open_demo_schedule(session, auth, organization.id, facilities[0], patients)
    return [DemoAccount(role, f"{role.value.replace('_', '-')}@{DEMO_DOMAIN}") for role, _ in _PEOPLE]


async def _register_demo_patients(
    session: AsyncSession, auth: AuthRuntime, organization_id: uuid.UUID, facility_id: uuid.UUID
) -> list[uuid.UUID]:
    """Through the registry's own service, as the demo front office, so the rows are encrypted, indexed and
    audited exactly as real registrations are."""
    front_office_id = await session.scalar(select(User.id).where(User.email == f"front-office@{DEMO_DOMAIN}"))
    assert front_office_id is not None
    front_office = Actor(
        user_id=front_office_id,
        organization_id=organization_id,
        roles=frozenset({Role.front_office}),
        audience=Audience.staff,
        session_id=uuid.uuid4(),
        token_id="demo",  # noqa: S106 - an id for the audit trail, not a credential
        permissions=frozenset({PATIENT_WRITE}),
    )
    await enter_organization(session, organization_id)
    vault = PatientVault(auth.key_ring, phone_region=auth.settings.default_phone_region)
    registered = []
    for given_name, family_name, birth_date, sex, phone in _PATIENTS:
        view = await patients_service.create_patient(
            session,
            vault,
            auth.audit,
            front_office,
            PatientCreate(
                registering_facility_id=facility_id,
                given_name=given_name,
                family_name=family_name,
                birth_date=birth_date,
                sex=sex,
                phone=phone,
                preferred_language="ur-PK",
            ),
        )
        registered.append(view.patient.id)
    await enter_platform_scope(session)
    patient_account = await session.scalar(select(User).where(User.email == f"patient@{DEMO_DOMAIN}"))
    assert patient_account is not None
    patient_account.patient_id = registered[0]
    await session.flush()
    return registered


_APPOINTMENT_TYPES = (("New consultation", "new", 20), ("Follow-up", "follow", 10), ("Procedure", "procedure", 45))
# Monday to Saturday, a morning and an evening session with a break between them.
_SESSIONS = ((time(9, 0), time(13, 0)), (time(17, 0), time(20, 0)))


async def _open_demo_schedule(
    session: AsyncSession, auth: AuthRuntime, organization_id: uuid.UUID, facility: Facility, patients: list[uuid.UUID]
) -> None:
    """The demo doctor's practice at Karachi, through the scheduling services as the demo administrator, and
    two bookings on the next working day so that slot search shows taken time."""
    await enter_platform_scope(session)
    emails = {f"{role}@{DEMO_DOMAIN}" for role in ("org-admin", "doctor")}
    users = {user.email: user for user in (await session.scalars(select(User).where(User.email.in_(emails)))).all()}
    admin = Actor(
        user_id=users[f"org-admin@{DEMO_DOMAIN}"].id,
        organization_id=organization_id,
        roles=frozenset({Role.org_admin}),
        audience=Audience.staff,
        session_id=uuid.uuid4(),
        token_id="demo",  # noqa: S106 - an id for the audit trail, not a credential
        permissions=frozenset({SCHEDULE_MANAGE, SCHEDULE_READ, APPOINTMENT_BOOK}),
    )
    await enter_organization(session, organization_id)
    types = [
        await scheduling.create_appointment_type(
            session, admin, AppointmentTypeCreate(name=name, code=code, duration_minutes=minutes)
        )
        for name, code, minutes in _APPOINTMENT_TYPES
    ]
    department = await session.scalar(
        select(Department.id).where(Department.facility_id == facility.id, Department.code == "GM")
    )
    assert department is not None
    practitioner = await scheduling.create_practitioner(
        session,
        admin,
        PractitionerCreate(
            user_id=users[f"doctor@{DEMO_DOMAIN}"].id,
            display_name="Dr. Sara Khan",
            specialty="general_medicine",
            languages=["ur", "en"],
            facility_ids=[facility.id],
            department_ids=[department],
        ),
    )
    for weekday in range(6):
        for starts, ends in _SESSIONS:
            hours = WeeklyHoursCreate(
                facility_id=facility.id, weekday=weekday, starts=starts, ends=ends, slot_minutes=10
            )
            await scheduling.add_weekly_hours(session, admin, practitioner.id, hours)
    zone = ZoneInfo(facility.timezone)
    day = datetime.now(zone).date() + timedelta(days=1)
    while day.weekday() == 6:
        day += timedelta(days=1)
    for patient_id, minute in zip(patients[1:], (0, 20), strict=True):
        start = datetime.combine(day, time(10, minute), tzinfo=zone)
        booking = AppointmentCreate(
            patient_id=patient_id,
            practitioner_id=practitioner.id,
            facility_id=facility.id,
            appointment_type_id=types[0].id,
            start=start,
        )
        await scheduling.book_appointment(session, auth.audit, admin, booking)
