"""Row-level security on PostgreSQL: the second tenant wall. Also an index for paging audit entries.

Every table that holds one organization's rows gets ``FORCE ROW LEVEL SECURITY`` (so even the table owner is
held to it) and a policy comparing its ``organization_id`` with the transaction's ``sehat.organization_id``
setting (see ``sehat.core.tenant_scope``). A transaction that set nothing sees none of these rows.

Clinical and operational tables admit only their own organization. Identity, tenancy and audit tables also
admit the platform scope (``sehat.scope = 'platform'``), which sign-in, token refresh, platform
administration and the audit sealer need. Audit entries may be inserted without an organization (a sign-in
attempt for an unknown account).

``sehat_profile`` reads a signed-in person's profile in one round trip: it sets the scope for its own
statement only, which is what the hottest read (``GET /me``) needs without opening a transaction.

SQLite has no row-level security; there the scoped query helper is the only wall.

Revision ID: 0008
Revises: 0007
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CURRENT_ORGANIZATION = "NULLIF(current_setting('sehat.organization_id', true), '')::uuid"
_PLATFORM = "coalesce(current_setting('sehat.scope', true), '') = 'platform'"

# Admit only the organization the transaction works for.
ORGANIZATION_ONLY = ("facilities", "departments", "break_glass_grants", "alerts")
# Also admit the platform scope: accounts and sessions are found before an organization is known.
ORGANIZATION_OR_PLATFORM = ("users", "user_facilities", "auth_sessions")


def _force(table: str) -> None:
    op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
    op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")


def upgrade() -> None:
    op.create_index("ix_audit_events_organization_id_id", "audit_events", ["organization_id", "id"])
    if op.get_bind().dialect.name != "postgresql":
        return
    own = f"organization_id = {_CURRENT_ORGANIZATION}"
    for table in ORGANIZATION_ONLY:
        _force(table)
        op.execute(f"CREATE POLICY tenant_wall ON {table} USING ({own}) WITH CHECK ({own})")
    for table in ORGANIZATION_OR_PLATFORM:
        _force(table)
        op.execute(
            f"CREATE POLICY tenant_wall ON {table} USING ({own} OR {_PLATFORM}) WITH CHECK ({own} OR {_PLATFORM})"
        )
    _force("organizations")
    op.execute(
        f"CREATE POLICY tenant_wall ON organizations USING (id = {_CURRENT_ORGANIZATION} OR {_PLATFORM}) "
        f"WITH CHECK ({_PLATFORM})"
    )
    # Append-only already (triggers, and no UPDATE or DELETE grant): only reading and appending need policies.
    _force("audit_events")
    op.execute(f"CREATE POLICY tenant_read ON audit_events FOR SELECT USING ({own} OR {_PLATFORM})")
    op.execute(
        "CREATE POLICY tenant_append ON audit_events FOR INSERT "
        f"WITH CHECK (organization_id IS NULL OR {own} OR {_PLATFORM})"
    )
    op.execute(
        """
        CREATE FUNCTION sehat_profile(p_user_id uuid, p_organization_id text, p_scope text)
        RETURNS TABLE (
            id uuid, email text, full_name text, organization_id uuid, roles json, mfa_enabled boolean,
            active boolean, facility_ids uuid[]
        )
        LANGUAGE plpgsql VOLATILE SECURITY INVOKER AS $$
        BEGIN
            -- Local to the caller's transaction: outside one, to this statement alone.
            PERFORM set_config('sehat.organization_id', p_organization_id, true);
            PERFORM set_config('sehat.scope', p_scope, true);
            RETURN QUERY
            SELECT u.id, u.email::text, u.full_name::text, u.organization_id, u.roles, u.mfa_enabled, u.active,
                   coalesce(array_agg(f.facility_id ORDER BY f.facility_id)
                            FILTER (WHERE f.facility_id IS NOT NULL), '{}')
            FROM users u LEFT JOIN user_facilities f ON f.user_id = u.id
            WHERE u.id = p_user_id
            GROUP BY u.id;
        END
        $$
        """
    )


def downgrade() -> None:
    op.drop_index("ix_audit_events_organization_id_id", table_name="audit_events")
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP FUNCTION sehat_profile(uuid, text, text)")
    op.execute("DROP POLICY tenant_read ON audit_events")
    op.execute("DROP POLICY tenant_append ON audit_events")
    for table in (*ORGANIZATION_ONLY, *ORGANIZATION_OR_PLATFORM, "organizations"):
        op.execute(f"DROP POLICY tenant_wall ON {table}")
    for table in (*ORGANIZATION_ONLY, *ORGANIZATION_OR_PLATFORM, "organizations", "audit_events"):
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
