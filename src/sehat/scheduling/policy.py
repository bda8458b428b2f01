"""Who may book and read appointments. Patients act for themselves only; staff for patients they may see."""

from __future__ import annotations

from sehat.core.actor import Actor
from sehat.core.errors import Forbidden
from sehat.identity.permissions import APPOINTMENT_BOOK, APPOINTMENT_READ, SCHEDULE_MANAGE, SCHEDULE_READ


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
