"""Who sees which facilities: organization administrators see all of theirs, other staff their own."""

from __future__ import annotations

from sehat.core.actor import Actor, Role


def sees_every_facility(actor: Actor) -> bool:
    return Role.org_admin in actor.roles
