"""Who may book and read appointments. Patients act for themselves only; staff for patients they may see."""

from __future__ import annotations

from sehat.core.actor import Actor
from sehat.core.errors import Forbidden
from sehat.identity.permissions import (
    APPOINTMENT_BOOK,
    APPOINTMENT_CHANGE,
    APPOINTMENT_MANAGE,
    APPOINTMENT_READ,
    SCHEDULE_MANAGE,
    SCHEDULE_READ,
    WAITLIST_MANAGE,
)


def _ensure(actor: Actor, permission: str, message: str) -> None:
    # Checked again here, not only by the route: a service may be called from elsewhere (a job, the CLI).
    if actor.organization_id is None or not actor.has(permission):
        raise Forbidden(message, code="permission_denied")


def ensure_can_manage_schedules(actor: Actor) -> None:
    _ensure(actor, SCHEDULE_MANAGE, "Your role may not manage schedules.")


def ensure_can_read_schedules(actor: Actor) -> None:
    _ensure(actor, SCHEDULE_READ, "Your role may not read schedules.")


def ensure_can_book(actor: Actor) -> None:
    _ensure(actor, APPOINTMENT_BOOK, "Your role may not book appointments.")


def ensure_can_read_appointments(actor: Actor) -> None:
    _ensure(actor, APPOINTMENT_READ, "Your role may not read appointments.")


def may_manage_appointments(actor: Actor) -> bool:
    return actor.organization_id is not None and actor.has(APPOINTMENT_MANAGE)


def ensure_can_manage_appointments(actor: Actor) -> None:
    _ensure(actor, APPOINTMENT_MANAGE, "Your role may not change appointments.")


def ensure_can_manage_waitlist(actor: Actor) -> None:
    _ensure(actor, WAITLIST_MANAGE, "Your role may not manage the waitlist.")


def ensure_can_change_appointments(actor: Actor) -> None:
    _ensure(actor, APPOINTMENT_CHANGE, "Your role may not cancel or reschedule appointments.")
