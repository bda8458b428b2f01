"""Scheduling tables: practitioners, appointment types, weekly hours and exceptions, appointments (holds
included), their history, and idempotency records for creating requests.

No double booking is a database guarantee (DESIGN §5). On PostgreSQL two exclusion constraints on
``appointments`` refuse any two active rows whose time ranges overlap for the same practitioner, or for the
same patient (migration 0011); a hold is an appointment row in status ``held``, so holds block exactly like
bookings. On SQLite every write transaction is serialized (``BEGIN IMMEDIATE``) and the service checks and
inserts inside it.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, Integer, LargeBinary, String, Time, text
from sqlalchemy.orm import Mapped, mapped_column

from sehat.core.clock import utcnow
from sehat.core.db import Base, IdMixin


class AppointmentStatus(StrEnum):
    held = "held"
    booked = "booked"
    checked_in = "checked_in"
    # Hours or leave changed under it: still holding its time until front office moves it.
    needs_reschedule = "needs_reschedule"
    completed = "completed"
    cancelled = "cancelled"
    no_show = "no_show"
    expired = "expired"


# Statuses that occupy their time: the exclusion constraints and the SQLite check cover exactly these.
ACTIVE_STATUSES: tuple[str, ...] = (
    AppointmentStatus.held,
    AppointmentStatus.booked,
    AppointmentStatus.checked_in,
    AppointmentStatus.needs_reschedule,
)


class Practitioner(IdMixin, Base):
    """A staff member who sees patients: their practice profile."""

    __tablename__ = "practitioners"
    __table_args__ = (Index("uq_practitioners_organization_id_user_id", "organization_id", "user_id", unique=True),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    display_name: Mapped[str] = mapped_column(String(200))
    specialty: Mapped[str] = mapped_column(String(64))
    languages: Mapped[list[str]] = mapped_column(JSON)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PractitionerFacility(Base):
    __tablename__ = "practitioner_facilities"

    practitioner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("practitioners.id"), primary_key=True)
    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"), primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))


class PractitionerDepartment(Base):
    __tablename__ = "practitioner_departments"

    practitioner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("practitioners.id"), primary_key=True)
    department_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("departments.id"), primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))


class PractitionerAppointmentType(Base):
    """An appointment type a practitioner offers. A practitioner with none listed offers every type."""

    __tablename__ = "practitioner_appointment_types"

    practitioner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("practitioners.id"), primary_key=True)
    appointment_type_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("appointment_types.id"), primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))


class AppointmentType(IdMixin, Base):
    __tablename__ = "appointment_types"
    __table_args__ = (Index("uq_appointment_types_organization_id_code", "organization_id", "code", unique=True),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    name: Mapped[str] = mapped_column(String(100))
    code: Mapped[str] = mapped_column(String(32))
    duration_minutes: Mapped[int] = mapped_column(Integer)
    # Minor units (paise, pence, cents) in the organization's currency; none for a free visit.
    price_minor: Mapped[int | None] = mapped_column(Integer)
    currency: Mapped[str | None] = mapped_column(String(3))
    active: Mapped[bool] = mapped_column(default=True)


class WeeklyHoursRule(IdMixin, Base):
    """Recurring hours of one practitioner at one facility, on the facility's wall clock."""

    __tablename__ = "availability_rules"
    __table_args__ = (Index("ix_availability_rules_practitioner", "organization_id", "practitioner_id"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    practitioner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("practitioners.id"))
    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    weekday: Mapped[int] = mapped_column(Integer)
    starts: Mapped[Any] = mapped_column(Time)
    ends: Mapped[Any] = mapped_column(Time)
    slot_minutes: Mapped[int] = mapped_column(Integer)
    buffer_minutes: Mapped[int] = mapped_column(Integer, default=0)
    valid_from: Mapped[date | None]
    valid_until: Mapped[date | None]


class ExceptionKind(StrEnum):
    extra = "extra"
    leave = "leave"


class AvailabilityException(IdMixin, Base):
    """A one-off extra session (``extra``) or an absence (``leave``, holidays included), in UTC instants."""

    __tablename__ = "availability_exceptions"
    __table_args__ = (
        Index("ix_availability_exceptions_practitioner", "organization_id", "practitioner_id", "starts_at"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    practitioner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("practitioners.id"))
    facility_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("facilities.id"))
    kind: Mapped[str] = mapped_column(String(8))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    reason: Mapped[str | None] = mapped_column(String(200))


class FacilityHoliday(IdMixin, Base):
    """A local calendar day on which a facility is closed: nobody works there, whatever their hours say."""

    __tablename__ = "facility_holidays"
    __table_args__ = (
        Index(
            "uq_facility_holidays_organization_id_facility_id_day", "organization_id", "facility_id", "day", unique=True
        ),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    day: Mapped[date]
    name: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ScheduleEpoch(Base):
    """How many times an organization's schedule (hours, leave, holidays, practitioners, types, facilities) has
    changed: PostgreSQL triggers move it on every such change (migration 0013), so a copy of working time read
    at one epoch is known to be current exactly while the epoch stays the same."""

    __tablename__ = "schedule_epochs"

    organization_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger)


class Appointment(IdMixin, Base):
    __tablename__ = "appointments"
    __table_args__ = (
        CheckConstraint("end_at > start_at", name="time_order"),
        Index("ix_appointments_practitioner_start", "organization_id", "practitioner_id", "start_at"),
        Index("ix_appointments_patient_start", "organization_id", "patient_id", "start_at"),
        # Holds that ran out are expired before every booking: without this, that UPDATE walked every
        # appointment of the organization (4 ms at 5,000 rows, measured).
        Index(
            "ix_appointments_held",
            "organization_id",
            "hold_expires_at",
            postgresql_where=text("status = 'held'"),
            sqlite_where=text("status = 'held'"),
        ),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    practitioner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("practitioners.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"))
    appointment_type_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("appointment_types.id"))
    start_at: Mapped[datetime]
    end_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(20))
    hold_expires_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(default=1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A cancellation reason may describe the patient's condition: sealed under the key ring. The code beside it
    # (a closed list) is what reports count.
    reason_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    cancellation_code: Mapped[str | None] = mapped_column(String(32))


class AppointmentHistory(IdMixin, Base):
    """One change of an appointment: kept for every transition, never updated."""

    __tablename__ = "appointment_history"
    __table_args__ = (Index("ix_appointment_history_appointment", "organization_id", "appointment_id", "at"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    appointment_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("appointments.id"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_id: Mapped[uuid.UUID | None]
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    start_at: Mapped[datetime]
    end_at: Mapped[datetime]


class IdempotencyRecord(Base):
    """The answer a creating request gave, replayed for the same key and body (DESIGN §3). Written in the
    transaction of the work it records, so a refused or rolled-back request leaves none."""

    __tablename__ = "idempotency_records"

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    route: Mapped[str] = mapped_column(String(128))
    request_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WaitlistStatus(StrEnum):
    waiting = "waiting"
    # A cancellation freed matching time and the patient holds it now (``hold_id``) until they confirm.
    offered = "offered"
    booked = "booked"
    withdrawn = "withdrawn"


class WaitlistEntry(IdMixin, Base):
    """A patient waiting for a practitioner, or for anyone in a department, at a facility, between two local
    dates. The first in line is offered freed time as a hold."""

    __tablename__ = "waitlist_entries"
    __table_args__ = (
        CheckConstraint("(practitioner_id IS NULL) <> (department_id IS NULL)", name="one_target"),
        CheckConstraint("to_date >= from_date", name="date_order"),
        Index("ix_waitlist_entries_waiting", "organization_id", "facility_id", "status", "created_at"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"))
    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    practitioner_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("practitioners.id"))
    department_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("departments.id"))
    appointment_type_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("appointment_types.id"))
    from_date: Mapped[date]
    to_date: Mapped[date]
    status: Mapped[str] = mapped_column(String(16), default=WaitlistStatus.waiting.value)
    hold_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("appointments.id"))
    created_by: Mapped[uuid.UUID | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
