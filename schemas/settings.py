"""The one settings model. Read once at the edge (function_app.py, CLIs) and passed down."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.blob_names import ContainerName

# Azure Storage queue names: 3-63 chars, lowercase letters, digits and single hyphens.
QUEUE_NAME_PATTERN = r"^[a-z0-9]([a-z0-9]|-[a-z0-9]){1,61}[a-z0-9]?$"
DEFAULT_MAX_TASKS_PER_STAGE = 10_000  # MAX_TASKS_PER_STAGE
POSTGRES_ENTRA_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
# Containers of the Functions host itself (keys, leases, timers): never listed, read or written by jobs.
HOST_CONTAINER_PREFIX = "azure-webjobs-"

# Identity-based storage settings: Azure only (local development uses connection strings), so
# local.settings.example.json leaves them out; docs/deploy.md and infra/ set them.
IDENTITY_STORAGE_SETTINGS = frozenset(
    {
        "storage_account_name",
        "storage_queue_service_uri",
        "storage_blob_service_uri",
        "data_storage_account_name",
        "data_storage_blob_service_uri",
        "azure_client_id",
    }
)

ContainerList = Annotated[tuple[ContainerName, ...], NoDecode]


def _alias(*names: str) -> AliasChoices:
    return AliasChoices(*names)


class Settings(BaseSettings):
    """Every app setting the code reads. local.settings.example.json lists them all."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", populate_by_name=True)

    # Host storage (queues; the Functions host's own state): a connection string (Azurite, local) or,
    # in Azure, identity-based: AzureWebJobsStorage__accountName, or __queueServiceUri + __blobServiceUri.
    storage_connection_string: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=_alias("AzureWebJobsStorage", "storage_connection_string"),
    )
    storage_account_name: str | None = Field(
        default=None, validation_alias=_alias("AzureWebJobsStorage__accountName", "storage_account_name")
    )
    storage_queue_service_uri: str | None = Field(
        default=None, validation_alias=_alias("AzureWebJobsStorage__queueServiceUri", "storage_queue_service_uri")
    )
    storage_blob_service_uri: str | None = Field(
        default=None, validation_alias=_alias("AzureWebJobsStorage__blobServiceUri", "storage_blob_service_uri")
    )
    # Data storage (bronze/silver; jobs read and write here). Unset: the host storage account.
    data_storage_connection_string: SecretStr = Field(
        default=SecretStr(""), validation_alias=_alias("DATA_STORAGE", "data_storage_connection_string")
    )
    data_storage_account_name: str | None = Field(
        default=None, validation_alias=_alias("DATA_STORAGE__accountName", "data_storage_account_name")
    )
    data_storage_blob_service_uri: str | None = Field(
        default=None, validation_alias=_alias("DATA_STORAGE__blobServiceUri", "data_storage_blob_service_uri")
    )
    # Client id of the user-assigned managed identity (DefaultAzureCredential); unset: system-assigned.
    azure_client_id: str | None = Field(default=None, validation_alias=_alias("AZURE_CLIENT_ID", "azure_client_id"))
    # Containers jobs may read (INPUT_CONTAINERS) and write (OUTPUT_CONTAINERS), comma-separated;
    # unset: BRONZE_CONTAINER and SILVER_CONTAINER alone. Container browsing lists both sets.
    # azure-webjobs-* (the host's own) are never allowed.
    input_containers: ContainerList = ()
    output_containers: ContainerList = ()
    job_queue: str = Field(default="geospatial-jobs", pattern=QUEUE_NAME_PATTERN)
    task_queue: str = Field(default="geospatial-tasks", pattern=QUEUE_NAME_PATTERN)
    high_priority_task_queue: str = Field(default="geospatial-tasks-high", pattern=QUEUE_NAME_PATTERN)
    webhook_queue: str = Field(default="geospatial-webhooks", pattern=QUEUE_NAME_PATTERN)

    # Postgres.
    postgres_host: str = "127.0.0.1"
    postgres_port: int = Field(default=5432, ge=1, le=65535)
    postgres_db: str = "geoetl"
    postgres_user: str = "postgres"
    postgres_password: SecretStr = SecretStr("")
    postgres_sslmode: str = "prefer"
    # password: POSTGRES_PASSWORD, or the Key Vault secret POSTGRES_PASSWORD_SECRET_NAME when set;
    # entra: an access token of the app's managed identity, fetched for each new connection.
    postgres_auth: Literal["password", "entra"] = "password"
    postgres_password_secret_name: str | None = Field(default=None, pattern=r"^[0-9A-Za-z-]{1,127}$")
    postgres_entra_scope: str = POSTGRES_ENTRA_SCOPE
    # Behind PgBouncer in transaction mode: no server-side prepared statements.
    postgres_pgbouncer: bool = False
    # Connection budget: with both set, DB_POOL_MAX_SIZE * APP_MAX_INSTANCES must fit in
    # POSTGRES_MAX_CONNECTIONS less POSTGRES_RESERVED_CONNECTIONS (admin, migrations, other clients).
    postgres_max_connections: int | None = Field(default=None, ge=1)
    postgres_reserved_connections: int = Field(default=10, ge=0)
    app_max_instances: int | None = Field(default=None, ge=1)
    postgres_schema: str = Field(default="geoetl", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    # Schema stage_vector loads tables into when a job names none (created with PostGIS on first use).
    vector_schema: str = Field(default="geodata", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    db_pool_min_size: int = Field(default=1, ge=0)
    db_pool_max_size: int = Field(default=10, ge=1)
    db_connect_timeout_seconds: int = Field(default=10, ge=1)
    db_pool_timeout_seconds: float = Field(default=30.0, gt=0)
    # How long the pool keeps retrying one failed connection attempt (its backoff doubles from 1 s)
    # before giving up and starting afresh: bounds how long a killed or failed-over server keeps
    # the pool from growing again once it is back.
    db_reconnect_timeout_seconds: float = Field(default=5.0, gt=0)
    # How long an HTTP request waits for a pooled connection before answering 503 (queue and timer
    # triggers wait DB_POOL_TIMEOUT_SECONDS): an outage is reported at once, not after the pool timeout.
    db_http_acquire_timeout_seconds: float = Field(default=2.0, gt=0, le=60)

    # HTTP API.
    max_request_bytes: int = Field(default=256 * 1024, ge=1024)
    job_list_max_limit: int = Field(default=200, ge=1)
    blob_list_max_limit: int = Field(default=1000, ge=1, le=5000)
    # GET /api/containers: largest page `limit`, and blobs listed to count each container (past it
    # the count is a lower bound), so one request lists at most limit * cap blobs.
    container_list_max_limit: int = Field(default=100, ge=1, le=1000)
    container_blob_count_cap: int = Field(default=1000, ge=1, le=5000)

    # Per-caller submission limit (POST /api/jobs/{type}, services/rate_limits.py): a token bucket in
    # Postgres per caller, refilled at SUBMIT_RATE_PER_MINUTE (0 = unlimited) and holding at most
    # SUBMIT_BURST; an empty bucket answers 429 with Retry-After.
    submit_rate_per_minute: float = Field(default=120.0, ge=0, le=1_000_000)
    submit_burst: int = Field(default=60, ge=1, le=1_000_000)

    # pgstac (schema `pgstac` in the same database, migrated with the app's migrations when enabled;
    # needs PostGIS and btree_gist) and the STAC API under /api/stac/ (function key unless
    # STAC_API_ANONYMOUS; pages of at most STAC_API_MAX_LIMIT items).
    pgstac_enabled: bool = False
    stac_api_anonymous: bool = False
    stac_api_max_limit: int = Field(default=1000, ge=1, le=10_000)

    # Task execution.
    task_max_attempts: int = Field(default=3, ge=1, le=100)
    task_retry_base_seconds: float = Field(default=1.0, ge=0)
    task_retry_max_seconds: float = Field(default=60.0, ge=0)
    # A task's lease is its heartbeat: renewed every third of it while the handler runs, so a dead
    # instance's tasks are re-queued by the janitor within lease + JANITOR_LEASE_GRACE_SECONDS + one
    # janitor period (30 + 5 + 10 s by default), while a live one's lease never lapses.
    task_lease_seconds: int = Field(default=30, ge=5)
    # An invocation goes on to the fan-out/task its own messages released while younger than
    # this (services/engine/work_chain.py); 0 turns the chaining off.
    inline_chain_seconds: float = Field(default=60.0, ge=0)
    publish_concurrency: int = Field(default=16, ge=1, le=64)
    # Re-sends of a message while Postgres is unavailable, before letting the host retry it.
    max_message_deferrals: int = Field(default=20, ge=0)
    deferral_max_seconds: float = Field(default=60.0, ge=1)

    # Circuit breakers (closed/open/half-open) around Postgres, Blob/queue storage, outbound HTTP.
    circuit_fail_max: int = Field(default=5, ge=1)
    circuit_reset_seconds: float = Field(default=10.0, gt=0)

    # Janitor (timer trigger JANITOR_SCHEDULE, NCRONTAB with seconds).
    janitor_schedule: str = "*/10 * * * * *"
    janitor_outbox_grace_seconds: float = Field(default=30.0, ge=0)
    janitor_lease_grace_seconds: float = Field(default=5.0, ge=0)
    janitor_requeue_queued_after_seconds: float = Field(default=900.0, ge=1)
    janitor_stalled_job_after_seconds: float = Field(default=120.0, ge=1)
    poison_retention_hours: float = Field(default=168.0, gt=0)

    # Raster jobs (process_raster).
    bronze_container: ContainerName = "bronze"  # default input container
    silver_container: ContainerName = "silver"  # default output container
    # Peak RSS one raster task may use; sources larger than fits are converted as a grid of tiles.
    raster_task_memory_budget_bytes: int = Field(default=1024**3, ge=16 * 1024**2)
    # RSS of an idle worker process (interpreter, GDAL, SDKs), counted in every task's budget.
    raster_worker_baseline_bytes: int = Field(default=320 * 1024**2, ge=0)
    # Threads GDAL uses inside one task (compression, decoding, overviews).
    gdal_threads: int = Field(default=2, ge=1, le=64)
    # COG conversions one process runs at a time (the others wait), so a process holds at most this
    # many task budgets however many messages the host hands it.
    raster_conversions_per_process: int = Field(default=1, ge=1, le=64)
    # Memory-heavy vector tasks (stage_vector loads, export_geoparquet writes and assembly; up to
    # ~0.9 GiB each) one process runs at a time; the others wait a few seconds, then go back to the
    # queue for an instance with room.
    vector_tasks_per_process: int = Field(default=1, ge=1, le=64)
    # COG conversions read the source window straight from the blob (a VRT over /vsiaz/) instead of
    # staging it to local disk first, where nothing requires the copy (services/raster/convert.py).
    # Off by default: against Azurite on one small machine it measured 1.06-1.26x slower.
    raster_read_directly: bool = False
    # A STAC collection's ownership lapses this long after its writer job last renewed it (conversion
    # tasks of process_raster and process_rasters renew it; every writer when it starts and finishes
    # writing) or after a submission claimed it without writing: another owner (409 until then) or a
    # newer writer may take it over. Ownership held by a job that is no longer running lapses at once.
    # Default: two functionTimeouts (30 min each), the longest a live writer's task can run.
    collection_writer_lease_seconds: float = Field(default=3600.0, ge=60)
    # Most tasks one stage of a job may fan out to (process_raster tiles, listing jobs' chunks): a
    # job that would need more fails at planning with a one-line reason naming what to raise.
    max_tasks_per_stage: int = Field(default=DEFAULT_MAX_TASKS_PER_STAGE, ge=1, le=100_000)

    # Key Vault (RBAC): secrets named by *_SECRET_NAME settings are read from it, cached this long.
    key_vault_url: str | None = Field(default=None, pattern=r"^https://[^/?#\s]+/?$")
    key_vault_cache_seconds: float = Field(default=300.0, ge=0)

    # Job-completion webhooks (job option callback_url, services/webhooks/). Signed with WEBHOOK_SECRET
    # (whsec_ + base64) or the Key Vault secret WEBHOOK_SECRET_NAME; none: callback_url is refused.
    # http:// callbacks and private, loopback or link-local addresses only when allowed (local use).
    # Attempts: one at once, then one after each delay of WEBHOOK_RETRY_DELAYS_SECONDS (comma-separated).
    webhook_secret: SecretStr = SecretStr("")
    webhook_secret_name: str | None = Field(default=None, pattern=r"^[0-9A-Za-z-]{1,127}$")
    webhook_allow_http: bool = False
    webhook_allow_private_networks: bool = False
    webhook_retry_delays_seconds: Annotated[tuple[float, ...], NoDecode] = (60.0, 300.0, 900.0, 1800.0, 3600.0)
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=60)  # one whole attempt

    log_level: str = "INFO"
    # Application Insights (services/telemetry): traces, logs and metrics through
    # azure-monitor-opentelemetry. Empty: telemetry off (no exporter, no thread, no network).
    applicationinsights_connection_string: SecretStr = Field(
        default=SecretStr(""),
        validation_alias=_alias("APPLICATIONINSIGHTS_CONNECTION_STRING", "applicationinsights_connection_string"),
    )
    # The telemetry's service name (Application Insights' cloud role name). Azure sets
    # WEBSITE_SITE_NAME to the Function App's name; locally "geoetl".
    site_name: str = Field(
        default="geoetl", min_length=1, max_length=200, validation_alias=_alias("WEBSITE_SITE_NAME", "site_name")
    )

    @field_validator("input_containers", "output_containers", "webhook_retry_delays_seconds", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("input_containers", "output_containers")
    @classmethod
    def _no_host_containers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        host = [name for name in value if name.startswith(HOST_CONTAINER_PREFIX)]
        if host:
            raise ValueError(f"{', '.join(host)}: {HOST_CONTAINER_PREFIX}* containers belong to the Functions host")
        return value

    @field_validator("webhook_retry_delays_seconds")
    @classmethod
    def _webhook_delays(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if len(value) > 20 or any(not 0 <= d <= 7 * 24 * 3600 for d in value):
            raise ValueError("at most 20 delays, each 0 to 604800 seconds (a queue message's longest delay)")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr) -> SecretStr:
        import base64
        import binascii

        text = value.get_secret_value()
        if text:
            try:
                key = base64.b64decode(text.removeprefix("whsec_") + "==", validate=False)
            except (binascii.Error, ValueError):
                key = b""
            if not text.startswith("whsec_") or len(key) < 24:
                raise ValueError("must be whsec_ followed by the base64 of at least 24 random bytes")
        return value

    @field_validator(
        *sorted(IDENTITY_STORAGE_SETTINGS),
        "postgres_password_secret_name",
        "webhook_secret_name",
        "key_vault_url",
        "postgres_max_connections",
        "app_max_instances",
        mode="before",
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_storage_and_budget(self) -> Settings:
        host_ok = bool(self.storage_connection_string.get_secret_value()) or bool(
            self.storage_account_name or (self.storage_queue_service_uri and self.storage_blob_service_uri)
        )
        if not host_ok:
            raise ValueError(
                "AzureWebJobsStorage: set a connection string, or AzureWebJobsStorage__accountName, or both "
                "AzureWebJobsStorage__queueServiceUri and AzureWebJobsStorage__blobServiceUri"
            )
        for name, default, allowed in (
            ("BRONZE_CONTAINER", self.bronze_container, self.readable_containers),
            ("SILVER_CONTAINER", self.silver_container, self.writable_containers),
        ):
            if default not in allowed or default.startswith(HOST_CONTAINER_PREFIX):
                raise ValueError(f"{name} {default!r} is not in its allow-list {', '.join(allowed)}")
        if self.postgres_password_secret_name and not self.key_vault_url:
            raise ValueError("POSTGRES_PASSWORD_SECRET_NAME needs KEY_VAULT_URL")
        if self.webhook_secret_name and not self.key_vault_url:
            raise ValueError("WEBHOOK_SECRET_NAME needs KEY_VAULT_URL")
        if self.postgres_max_connections is not None and self.app_max_instances is not None:
            budget = self.postgres_max_connections - self.postgres_reserved_connections
            needed = self.db_pool_max_size * self.app_max_instances
            if needed > budget:
                raise ValueError(
                    f"DB_POOL_MAX_SIZE {self.db_pool_max_size} x APP_MAX_INSTANCES {self.app_max_instances} = "
                    f"{needed} connections, more than POSTGRES_MAX_CONNECTIONS {self.postgres_max_connections} "
                    f"less POSTGRES_RESERVED_CONNECTIONS {self.postgres_reserved_connections} = {budget}"
                )
        return self

    @property
    def readable_containers(self) -> tuple[str, ...]:
        """Containers jobs may read: INPUT_CONTAINERS, else BRONZE_CONTAINER."""
        return self.input_containers or (self.bronze_container,)

    @property
    def writable_containers(self) -> tuple[str, ...]:
        """Containers jobs may write: OUTPUT_CONTAINERS, else SILVER_CONTAINER."""
        return self.output_containers or (self.silver_container,)

    def postgres_conninfo(self) -> str:
        from psycopg.conninfo import make_conninfo

        return make_conninfo(
            host=self.postgres_host,
            port=self.postgres_port,
            dbname=self.postgres_db,
            user=self.postgres_user,
            password=self.postgres_password.get_secret_value() or None,
            sslmode=self.postgres_sslmode,
            connect_timeout=self.db_connect_timeout_seconds,
            application_name="geoetl",
        )


def setting_env_name(field_name: str) -> str:
    """The app setting (environment variable) a Settings field is read from."""
    alias = Settings.model_fields[field_name].validation_alias
    if isinstance(alias, AliasChoices):
        first = alias.choices[0]
        return first if isinstance(first, str) else field_name.upper()
    return field_name.upper()


def setting_env_names() -> dict[str, str]:
    """Every Settings field and the app setting it is read from."""
    return {name: setting_env_name(name) for name in Settings.model_fields}
