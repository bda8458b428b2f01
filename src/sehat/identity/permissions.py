"""Permissions are data: each role grants a set of them, and routes declare the one they need.

Issue 3 moves this table into the database; the names are already the contract routes depend on.
"""

from __future__ import annotations

from collections.abc import Iterable

from sehat.core.actor import Role

# Every signed-in user may manage their own session and second factor and read their own profile.
SELF_SERVICE = "self.session"

ORGANIZATION_MANAGE = "organization.manage"
FACILITY_READ = "facility.read"
FACILITY_MANAGE = "facility.manage"
USER_READ = "user.read"
USER_MANAGE = "user.manage"

_STAFF_COMMON = {SELF_SERVICE, FACILITY_READ}

ROLE_PERMISSIONS: dict[Role, frozenset[str]] = {
    # Platform administrators run tenants; they hold no permission over any tenant's people or data.
    Role.platform_admin: frozenset({SELF_SERVICE, ORGANIZATION_MANAGE}),
    Role.org_admin: frozenset({*_STAFF_COMMON, FACILITY_MANAGE, USER_READ, USER_MANAGE}),
    Role.front_office: frozenset(_STAFF_COMMON),
    Role.doctor: frozenset(_STAFF_COMMON),
    Role.nurse: frozenset(_STAFF_COMMON),
    Role.billing: frozenset(_STAFF_COMMON),
    Role.auditor: frozenset({*_STAFF_COMMON, USER_READ}),
    Role.patient: frozenset({SELF_SERVICE}),
}

ALL_PERMISSIONS: frozenset[str] = frozenset().union(*ROLE_PERMISSIONS.values())


def permissions_for(roles: Iterable[Role | str]) -> frozenset[str]:
    granted: set[str] = set()
    for role in roles:
        try:
            granted |= ROLE_PERMISSIONS[Role(role)]
        except ValueError:
            continue  # an unknown role name grants nothing
    return frozenset(granted)
