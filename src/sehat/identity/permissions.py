"""Permissions are data: the ``role_permissions`` table says which role grants what, routes declare the one
they need.

The names below are the contract routes and policies are written against. Which roles hold them is read from
the database: each server keeps the whole (small) table in memory, loaded at start-up and reloaded with the
signing keys, so checking a permission never costs a round trip.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Role
from sehat.identity.models import RolePermission

# Every signed-in user may manage their own session and second factor and read their own profile.
SELF_SERVICE = "self.session"

ORGANIZATION_MANAGE = "organization.manage"
FACILITY_READ = "facility.read"
FACILITY_MANAGE = "facility.manage"
USER_READ = "user.read"
USER_MANAGE = "user.manage"
AUDIT_READ = "audit.read"
# A patient reading who accessed their own record (GET /api/v1/me/access-log).
AUDIT_READ_OWN = "audit.read_own"
BREAK_GLASS_USE = "break_glass.use"
ALERT_READ = "alert.read"
PATIENT_READ = "patient.read"
# Without it, reading a patient's record needs one of the caller's facilities to be the patient's (or
# break-glass); with it, the whole organization's registry is open to the role.
PATIENT_READ_ALL_FACILITIES = "patient.read_all_facilities"
PATIENT_WRITE = "patient.write"
PATIENT_MERGE = "patient.merge"
PATIENT_INVITE = "patient.invite"
PATIENT_EXPORT = "patient.export"
PATIENT_ERASE = "patient.erase"
PATIENT_LEGAL_HOLD = "patient.legal_hold"
# A patient reading and correcting their own profile (GET and PATCH /api/v1/me/patient).
PATIENT_SELF = "patient.self"
CONSENT_READ = "consent.read"
CONSENT_WRITE = "consent.write"
SCHEDULE_READ = "schedule.read"
SCHEDULE_MANAGE = "schedule.manage"
APPOINTMENT_READ = "appointment.read"
APPOINTMENT_BOOK = "appointment.book"
APPOINTMENT_MANAGE = "appointment.manage"
# Cancel and reschedule: staff who manage appointments, and a patient their own.
APPOINTMENT_CHANGE = "appointment.change"
WAITLIST_MANAGE = "waitlist.manage"
QUEUE_READ = "queue.read"
QUEUE_MANAGE = "queue.manage"
QUEUE_ISSUE = "queue.issue"
# Working the line from a room: call next, start, complete, skip, recall, pause, resume, report a delay.
QUEUE_SERVE = "queue.serve"
QUEUE_TRANSFER = "queue.transfer"
# A patient reading their own token: its place in the line and the estimated time.
QUEUE_READ_OWN = "queue.read_own"
BOARD_MANAGE = "board.manage"

# The names a route may declare. The `permissions` table holds the same names (a test keeps them equal).
ALL_PERMISSIONS: frozenset[str] = frozenset(
    {
        SELF_SERVICE,
        ORGANIZATION_MANAGE,
        FACILITY_READ,
        FACILITY_MANAGE,
        USER_READ,
        USER_MANAGE,
        AUDIT_READ,
        AUDIT_READ_OWN,
        BREAK_GLASS_USE,
        ALERT_READ,
        PATIENT_READ,
        PATIENT_READ_ALL_FACILITIES,
        PATIENT_WRITE,
        PATIENT_MERGE,
        PATIENT_INVITE,
        PATIENT_EXPORT,
        PATIENT_ERASE,
        PATIENT_LEGAL_HOLD,
        PATIENT_SELF,
        CONSENT_READ,
        CONSENT_WRITE,
        SCHEDULE_READ,
        SCHEDULE_MANAGE,
        APPOINTMENT_READ,
        APPOINTMENT_BOOK,
        APPOINTMENT_MANAGE,
        APPOINTMENT_CHANGE,
        WAITLIST_MANAGE,
        QUEUE_READ,
        QUEUE_MANAGE,
        QUEUE_ISSUE,
        QUEUE_SERVE,
        QUEUE_TRANSFER,
        QUEUE_READ_OWN,
        BOARD_MANAGE,
    }
)

# Tokens carry only known roles, so there are at most 2^8 role sets; the bound guards against misuse.
_CACHE_LIMIT = 1024


async def read_grants(session: AsyncSession) -> dict[str, list[str]]:
    """Every role named in ``role_permissions`` (known to this release or not) with its sorted grants."""
    rows = await session.execute(
        select(RolePermission.role, RolePermission.permission).order_by(RolePermission.role, RolePermission.permission)
    )
    grants: dict[str, list[str]] = {}
    for role, permission in rows:
        grants.setdefault(role, []).append(permission)
    return grants


class PermissionTable:
    """One server's in-memory copy of ``role_permissions``. Empty until loaded, so it denies by default."""

    def __init__(self) -> None:
        self._grants: dict[Role, frozenset[str]] = {}
        self._by_role_set: dict[frozenset[Role | str], frozenset[str]] = {}

    async def load(self, session: AsyncSession) -> None:
        grants: dict[Role, frozenset[str]] = {}
        for name, permissions in (await read_grants(session)).items():
            try:
                role = Role(name)
            except ValueError:
                continue  # a role a newer release added; this server grants it nothing
            grants[role] = frozenset(permissions)
        # Swap both dictionaries in one step: a request sees the old table or the new one, never a mix.
        self._grants, self._by_role_set = grants, {}

    def for_roles(self, roles: Iterable[Role | str]) -> frozenset[str]:
        # Tokens' roles arrive as a frozenset already, whose hash Python keeps: a hit is one dictionary lookup.
        key = roles if isinstance(roles, frozenset) else frozenset(roles)
        grants, cache = self._grants, self._by_role_set
        cached = cache.get(key)
        if cached is not None:
            return cached
        granted: set[str] = set()
        for role in key:
            try:
                granted |= grants.get(Role(role), frozenset())
            except ValueError:
                continue  # an unknown role name grants nothing
        result = frozenset(granted)
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[key] = result
        return result

    @property
    def grants(self) -> dict[Role, frozenset[str]]:
        """A copy of the loaded grants, role by role."""
        return dict(self._grants)
