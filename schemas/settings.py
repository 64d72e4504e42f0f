"""The one settings model. Read once at the edge (function_app.py, CLIs) and passed down."""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from schemas.blob_names import ContainerName

# Azure Storage queue names: 3-63 chars, lowercase letters, digits and single hyphens.
QUEUE_NAME_PATTERN = r"^[a-z0-9]([a-z0-9]|-[a-z0-9]){1,61}[a-z0-9]?$"
DEFAULT_MAX_TASKS_PER_STAGE = 10_000  # MAX_TASKS_PER_STAGE


class Settings(BaseSettings):
    """Every app setting the code reads. local.settings.example.json lists them all."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", populate_by_name=True)

    # Storage (queues, blobs). The Functions host reads the same connection for queue triggers.
    storage_connection_string: SecretStr = Field(
        validation_alias=AliasChoices("AzureWebJobsStorage", "AZUREWEBJOBSSTORAGE", "storage_connection_string"),
    )
    job_queue: str = Field(default="geospatial-jobs", pattern=QUEUE_NAME_PATTERN)
    task_queue: str = Field(default="geospatial-tasks", pattern=QUEUE_NAME_PATTERN)
    high_priority_task_queue: str = Field(default="geospatial-tasks-high", pattern=QUEUE_NAME_PATTERN)

    # Postgres.
    postgres_host: str = "127.0.0.1"
    postgres_port: int = Field(default=5432, ge=1, le=65535)
    postgres_db: str = "geoetl"
    postgres_user: str = "postgres"
    postgres_password: SecretStr = SecretStr("")
    postgres_sslmode: str = "prefer"
    postgres_schema: str = Field(default="geoetl", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
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

    # Task execution.
    task_max_attempts: int = Field(default=3, ge=1, le=100)
    task_retry_base_seconds: float = Field(default=1.0, ge=0)
    task_retry_max_seconds: float = Field(default=60.0, ge=0)
    # A task's lease is its heartbeat: renewed every third of it while the handler runs, so a dead
    # instance's tasks are re-queued by the janitor within lease + JANITOR_LEASE_GRACE_SECONDS + one
    # janitor period (30 + 5 + 10 s by default), while a live one's lease never lapses.
    task_lease_seconds: int = Field(default=30, ge=5)
    # An invocation goes on to the fan-out/task its own messages released while younger than
    # this (services/work_chain.py); 0 turns the chaining off.
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
    # Most tasks one stage of a job may fan out to (process_raster tiles, listing jobs' chunks): a
    # job that would need more fails at planning with a one-line reason naming what to raise.
    max_tasks_per_stage: int = Field(default=DEFAULT_MAX_TASKS_PER_STAGE, ge=1, le=100_000)

    log_level: str = "INFO"

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
