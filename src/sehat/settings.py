"""Runtime configuration, read from the environment (prefix ``SEHAT_``) and an optional ``.env`` file."""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(StrEnum):
    development = "development"
    production = "production"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEHAT_", env_file=".env", extra="ignore")

    environment: Environment = Environment.development
    database_url: str = Field(
        default="sqlite+aiosqlite:///./sehat.db",
        description="SQLAlchemy async URL: sqlite+aiosqlite:///path or postgresql+asyncpg://user@host/db",
    )
    database_pool_size: int = Field(default=20, ge=1, le=200)
    database_pool_timeout_seconds: float = Field(default=5.0, gt=0)
    database_statement_timeout_ms: int = Field(default=15_000, ge=0)
    database_app_role: str | None = Field(
        default=None,
        pattern=r"^[a-z_][a-z0-9_]{0,62}$",
        description="PostgreSQL: `sehat migrate` (run as the schema owner) grants this role what the app needs",
    )
    redis_key_prefix: str = Field(default="sehat:", pattern=r"^[A-Za-z0-9:_-]{1,32}$")
    redis_url: str | None = Field(default=None, description="redis://host:port/db; shared state for several servers")

    master_key: SecretStr | None = Field(
        default=None, description="Master key ring, one 'kid:base64url-key' entry per line or comma; first is primary"
    )
    master_key_file: Path | None = Field(
        default=None, description="File holding the master key ring; in development created once (mode 0600)"
    )

    public_base_url: str = "http://127.0.0.1:8000"
    max_request_body_bytes: int = Field(default=1_048_576, ge=1024)
    trusted_proxies: str | None = Field(default=None, description="Comma-separated proxy addresses to trust")
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    log_level: str = "INFO"
    auto_migrate: bool | None = Field(default=None, description="Migrate on `serve`; default: on for SQLite only")

    audit_checkpoint_file: Path = Field(
        default=Path("audit-checkpoints.jsonl"),
        description="Signed audit checkpoints are appended here: keep it outside the database and its backups",
    )
    audit_seal_interval_seconds: float = Field(default=2.0, gt=0)
    audit_seal_settle_seconds: float = Field(
        default=5.0, ge=0, description="Entries younger than this wait for the next sealing round"
    )

    default_phone_region: str = Field(
        default="IN",
        pattern=r"^[A-Z]{2}$",
        description="ISO 3166 country in which phone numbers typed without a +country code are read",
    )
    patient_invitation_hours: int = Field(default=72, ge=1, le=24 * 30, description="How long an invitation link works")
    slot_hold_minutes: int = Field(default=5, ge=1, le=60, description="How long a slot hold blocks its time")
    waitlist_hold_minutes: int = Field(
        default=120,
        ge=5,
        le=24 * 60,
        description="How long freed time offered to the first patient on a waitlist is held for them to confirm",
    )
    background_jobs: bool = Field(
        default=True,
        description="Seal audit entries and run the anomaly rules in this server process; turn off on app "
        "servers when `sehat worker` runs them, so those passes never share an event loop with requests",
    )
    break_glass_minutes: int = Field(default=60, ge=1, le=24 * 60, description="How long emergency access lasts")
    anomaly_bulk_patients: int = Field(
        default=50, ge=1, description="One person opening more distinct patients than this within the window is alerted"
    )
    anomaly_bulk_window_minutes: int = Field(
        default=10, ge=1, le=24 * 60, description="The sliding window of the bulk patient access rule"
    )

    access_token_ttl_seconds: int = Field(default=900, ge=60, le=3600)
    refresh_idle_timeout_seconds: int = Field(default=1800, ge=60)
    session_absolute_timeout_seconds: int = Field(default=43_200, ge=300)
    signing_key_refresh_seconds: int = Field(default=60, ge=1)
    staff_mfa_required: bool = True

    login_max_failures_per_account: int = Field(default=5, ge=1)
    login_max_failures_per_address: int = Field(default=50, ge=1)
    login_failure_window_seconds: int = Field(default=900, ge=1)

    password_min_length: int = Field(default=12, ge=8)
    password_max_length: int = Field(default=128, le=1024)
    argon2_time_cost: int = Field(default=3, ge=1)
    argon2_memory_kib: int = Field(default=65_536, ge=8)
    argon2_parallelism: int = Field(default=4, ge=1)

    @model_validator(mode="after")
    def _production_is_explicit(self) -> Settings:
        if self.environment is Environment.production:
            if self.master_key is None and self.master_key_file is None:
                raise ValueError("production needs SEHAT_MASTER_KEY or SEHAT_MASTER_KEY_FILE; it never generates one")
            if not (self.tls_certfile and self.tls_keyfile) and not self.trusted_proxies:
                raise ValueError(
                    "production needs TLS (SEHAT_TLS_CERTFILE and SEHAT_TLS_KEYFILE) "
                    "or a TLS-terminating proxy (SEHAT_TRUSTED_PROXIES)"
                )
        return self

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.production

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @cached_property
    def token_issuer(self) -> str:
        return self.public_base_url.rstrip("/")

    @property
    def should_auto_migrate(self) -> bool:
        return self.is_sqlite if self.auto_migrate is None else self.auto_migrate

    def default_master_key_path(self) -> Path:
        return Path(self.master_key_file) if self.master_key_file else Path("sehat-master.key")
