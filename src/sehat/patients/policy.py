"""Who may do what with a patient, and which fields each role sees.

Field visibility follows the minimum-necessary rule: a role sees the fields its work needs. The national id
is the sharpest identifier we hold; front office and clinicians see only its last four characters (enough to
confirm it with the patient at a desk), billing sees it whole for claims, and so does the patient.
"""

from __future__ import annotations

from sehat.core.actor import Actor, Role
from sehat.core.errors import Forbidden
from sehat.identity.permissions import (
    PATIENT_ERASE,
    PATIENT_EXPORT,
    PATIENT_LEGAL_HOLD,
    PATIENT_MERGE,
    PATIENT_READ,
    PATIENT_READ_ALL_FACILITIES,
    PATIENT_SELF,
    PATIENT_WRITE,
)
from sehat.patients.models import ENCRYPTED_FIELDS

# Every encrypted field is a demographic one; clinical fields arrive with records.
DEMOGRAPHICS = frozenset(ENCRYPTED_FIELDS)
_CARE = DEMOGRAPHICS
_BILLING = frozenset(
    {"mrn", "given_name", "family_name", "birth_date", "sex", "phone", "email", "address", "national_id"}
)

# Fields each role may see. A caller with several roles sees the union.
VISIBLE_FIELDS: dict[Role, frozenset[str]] = {
    Role.org_admin: DEMOGRAPHICS,
    Role.front_office: DEMOGRAPHICS,
    Role.doctor: _CARE,
    Role.nurse: _CARE,
    Role.billing: _BILLING,
    Role.patient: DEMOGRAPHICS,
}
# Roles that see the whole national id; everyone else who sees it at all gets its last four characters.
FULL_NATIONAL_ID: frozenset[Role] = frozenset({Role.billing, Role.org_admin, Role.patient})

# A list or search hit shows this much, whoever asks.
SUMMARY_FIELDS = frozenset({"mrn", "given_name", "family_name", "birth_date"})


def visible_fields(actor: Actor) -> frozenset[str]:
    fields: frozenset[str] = frozenset()
    for role in actor.roles:
        fields |= VISIBLE_FIELDS.get(role, frozenset())
    return fields


def sees_full_national_id(actor: Actor) -> bool:
    return bool(actor.roles & FULL_NATIONAL_ID)


def _ensure(actor: Actor, permission: str, message: str) -> None:
    # Checked again here, not only by the route: a service may be called from elsewhere (a job, the CLI).
    if actor.organization_id is None or not actor.has(permission):
        raise Forbidden(message, code="permission_denied")


def ensure_can_read(actor: Actor) -> None:
    _ensure(actor, PATIENT_READ, "Your role may not read patients.")


def reads_every_facility(actor: Actor) -> bool:
    return actor.has(PATIENT_READ_ALL_FACILITIES)


def ensure_can_write(actor: Actor) -> None:
    _ensure(actor, PATIENT_WRITE, "Your role may not register or change patients.")


def ensure_can_merge(actor: Actor) -> None:
    _ensure(actor, PATIENT_MERGE, "Your role may not merge patient records.")


def ensure_can_export(actor: Actor) -> None:
    _ensure(actor, PATIENT_EXPORT, "Your role may not export patient records.")


def ensure_can_erase(actor: Actor) -> None:
    _ensure(actor, PATIENT_ERASE, "Your role may not erase patients.")


def ensure_can_hold(actor: Actor) -> None:
    _ensure(actor, PATIENT_LEGAL_HOLD, "Your role may not place legal holds.")


def ensure_is_own_patient(actor: Actor) -> None:
    _ensure(actor, PATIENT_SELF, "Only a patient may use their own profile.")
