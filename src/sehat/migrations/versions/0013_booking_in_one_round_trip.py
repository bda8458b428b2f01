"""Booking in one round trip (issue 5): a per-organization schedule epoch that every change to what decides a
booking moves on, and, on PostgreSQL, the booking's write as one function call.

- ``schedule_epochs``: one counter per organization. Triggers move it on every insert, update or delete of
  weekly hours, leave and extra sessions, holidays, practitioners, their facility, department and type links,
  appointment types and facilities. A server may then keep a practitioner's working time in memory and trust
  it exactly as long as the epoch it was read at is still the current one.
- ``sehat_book_appointment``: the write of a booking decided from such a copy, in one statement run outside an
  explicit transaction (the statement is its own transaction). In order: set the tenant scope (transaction-local,
  as ``core.tenant_scope`` does); claim the idempotency key, the answer already in the claim (a booking that
  fails rolls its claim back with it); take the ordered advisory locks; check the epoch, the patient and the
  desk's facility; expire holds that ran out around the time; insert the appointment, its history row and its
  audit entry. Whatever it cannot decide it refuses with SQLSTATE SH001 (the copy is stale) or SH002 (hand over
  to the portable path), and the statement's transaction, claim included, rolls back. The exclusion
  constraints remain the guarantee against double booking.

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sehat.migrations.shared import CURRENT_ORGANIZATION, wall_tenant_tables

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Every table whose rows decide whether a time is bookable, and by whom.
SCHEDULE_TABLES = (
    "availability_rules",
    "availability_exceptions",
    "facility_holidays",
    "practitioners",
    "practitioner_facilities",
    "practitioner_departments",
    "practitioner_appointment_types",
    "appointment_types",
    "facilities",
)

_BUMP = f"""
CREATE FUNCTION sehat_move_schedule_epoch() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  changed uuid := CASE WHEN TG_OP = 'DELETE' THEN OLD.organization_id ELSE NEW.organization_id END;
BEGIN
  -- Tenant rows change only in their organization's scope; a change outside it is a foreign-key cascade
  -- while the organization itself goes, and there is no copy of its schedule left to invalidate.
  IF changed IS NOT DISTINCT FROM {CURRENT_ORGANIZATION} THEN
    INSERT INTO schedule_epochs (organization_id, epoch) VALUES (changed, 1)
    ON CONFLICT (organization_id) DO UPDATE SET epoch = schedule_epochs.epoch + 1;
  END IF;
  RETURN NULL;
END $$
"""  # noqa: S608 - a constant setting expression is formatted in, nothing else

_BOOK = """
CREATE FUNCTION sehat_book_appointment(
  p_organization uuid, p_user uuid, p_sees_every_facility boolean, p_epoch bigint, p_locks bigint[],
  p_key varchar, p_route varchar, p_request_hash bytea, p_answer text,
  p_id uuid, p_facility uuid, p_practitioner uuid, p_patient uuid, p_type uuid,
  p_start timestamptz, p_end timestamptz, p_status varchar, p_hold_expires timestamptz, p_now timestamptz,
  p_history uuid, p_audit json
) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  v_claimed boolean;
  v_current boolean;
  v_answerable boolean;
BEGIN
  PERFORM set_config('sehat.organization_id', p_organization::text, true),
          set_config('sehat.scope', 'organization', true);
  -- The claim already holds the answer: the statement is one transaction, so a booking that fails leaves no
  -- claim, and a request with the same key waits on this row until the booking commits or fails. Then the
  -- advisory locks, after the claim, in one global order: the portable path's order too.
  WITH claim AS (
    INSERT INTO idempotency_records (organization_id, user_id, key, route, request_hash, status_code, response,
                                     created_at)
    SELECT p_organization, p_user, p_key, p_route, p_request_hash, 201, p_answer::json, p_now
    WHERE p_key IS NOT NULL
    ON CONFLICT DO NOTHING
    RETURNING 1
  )
  SELECT p_key IS NULL OR EXISTS (SELECT 1 FROM claim)
  FROM (SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT unnest(p_locks) AS k ORDER BY 1) AS ordered
        WHERE (SELECT count(*) FROM claim) >= 0) AS locked
  INTO v_claimed;
  IF NOT v_claimed THEN
    RETURN 'key_used';  -- replayed or refused by the portable path
  END IF;
  -- One statement (a fresh snapshot, taken after the locks): the checks, the hold expiry and the three rows
  -- cost one executor start, and nothing is written unless the checks pass.
  WITH checked AS (
    SELECT coalesce((SELECT epoch FROM schedule_epochs WHERE organization_id = p_organization), 0) = p_epoch
             AS current,
           EXISTS (SELECT 1 FROM patients WHERE id = p_patient AND organization_id = p_organization
                   AND status = 'active')
           AND (p_sees_every_facility OR EXISTS (SELECT 1 FROM user_facilities
                                                 WHERE user_id = p_user AND facility_id = p_facility))
             AS answerable
  ), expired AS (
    UPDATE appointments SET status = 'expired', updated_at = p_now
    WHERE organization_id = p_organization AND status = 'held' AND hold_expires_at <= p_now
      AND (practitioner_id = p_practitioner OR patient_id = p_patient) AND start_at < p_end + interval '1 day'
      AND end_at > p_start - interval '1 day' AND (SELECT current AND answerable FROM checked)
    RETURNING 1
  ), booked AS (
    INSERT INTO appointments (id, organization_id, facility_id, practitioner_id, patient_id, appointment_type_id,
                              start_at, end_at, status, hold_expires_at, version, created_at, updated_at)
    -- After the expiry: a hold that ran out must not stand in the way of this row's exclusion check.
    SELECT p_id, p_organization, p_facility, p_practitioner, p_patient, p_type, p_start, p_end, p_status,
           p_hold_expires, 1, p_now, p_now
    FROM checked
    WHERE current AND answerable AND (SELECT count(*) FROM expired) >= 0
    RETURNING id
  ), history AS (
    INSERT INTO appointment_history (id, organization_id, appointment_id, at, actor_id, from_status, to_status,
                                     start_at, end_at)
    SELECT p_history, p_organization, id, p_now, p_user, NULL, p_status, p_start, p_end FROM booked
  ), audited AS (
    INSERT INTO audit_events (event_uuid, occurred_at, organization_id, actor_type, actor_id, actor_roles, action,
                              resource_type, resource_id, patient_id, outcome, client_address, request_id,
                              details, mac_kid, mac)
    SELECT event_uuid, occurred_at, organization_id, actor_type, actor_id, actor_roles, action, resource_type,
           resource_id, patient_id, outcome, client_address, request_id, details, mac_kid, mac
    FROM json_populate_record(NULL::audit_events, p_audit)
    WHERE EXISTS (SELECT 1 FROM booked)
  )
  SELECT checked.current, checked.answerable FROM checked INTO v_current, v_answerable;
  IF NOT v_current THEN
    RAISE EXCEPTION USING ERRCODE = 'SH001', MESSAGE = 'the schedule changed since it was read';
  END IF;
  IF NOT v_answerable THEN
    RAISE EXCEPTION USING ERRCODE = 'SH002', MESSAGE = 'the portable path answers this booking';
  END IF;
  RETURN 'booked';
END $$
"""


def upgrade() -> None:
    op.create_table(
        "schedule_epochs",
        # No foreign key: the counter carries nothing of the organization's, and must not stand in the way of
        # the organization's own removal.
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("organization_id", name=op.f("pk_schedule_epochs")),
    )
    if op.get_bind().dialect.name != "postgresql":
        return
    wall_tenant_tables(("schedule_epochs",))
    op.execute(_BUMP)
    for table in SCHEDULE_TABLES:
        op.execute(
            f"CREATE TRIGGER move_schedule_epoch AFTER INSERT OR UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION sehat_move_schedule_epoch()"
        )
    op.execute(_BOOK)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION sehat_book_appointment")
        for table in SCHEDULE_TABLES:
            op.execute(f"DROP TRIGGER move_schedule_epoch ON {table}")
        op.execute("DROP FUNCTION sehat_move_schedule_epoch")
    op.drop_table("schedule_epochs")
