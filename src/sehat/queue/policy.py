"""Who may work the OPD queue. Staff act at the facilities they work at (checked by the service); the checks
here are the role's permissions, checked again even though the route declared them, for callers that are not
routes (jobs, the CLI)."""

from __future__ import annotations

from sehat.core.actor import Actor
from sehat.core.errors import Forbidden
from sehat.identity.permissions import (
    BOARD_MANAGE,
    QUEUE_ISSUE,
    QUEUE_MANAGE,
    QUEUE_READ,
    QUEUE_READ_OWN,
    QUEUE_SERVE,
    QUEUE_TRANSFER,
)


def _ensure(actor: Actor, permission: str, message: str) -> None:
    if actor.organization_id is None or not actor.has(permission):
        raise Forbidden(message, code="permission_denied")


def ensure_can_read(actor: Actor) -> None:
    _ensure(actor, QUEUE_READ, "Your role may not read queues.")


def ensure_can_manage(actor: Actor) -> None:
    _ensure(actor, QUEUE_MANAGE, "Your role may not open queues.")


def ensure_can_issue(actor: Actor) -> None:
    _ensure(actor, QUEUE_ISSUE, "Your role may not issue tokens.")


def ensure_can_serve(actor: Actor) -> None:
    _ensure(actor, QUEUE_SERVE, "Your role may not call or serve tokens.")


def ensure_can_transfer(actor: Actor) -> None:
    _ensure(actor, QUEUE_TRANSFER, "Your role may not transfer tokens.")


def ensure_can_read_own(actor: Actor) -> None:
    _ensure(actor, QUEUE_READ_OWN, "Your role may not read tokens.")


def ensure_can_manage_boards(actor: Actor) -> None:
    _ensure(actor, BOARD_MANAGE, "Your role may not enrol display boards.")
