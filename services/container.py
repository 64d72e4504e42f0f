"""Builds the object graph from Settings once; triggers ask it for services.

Nothing connects at construction: the Functions host imports function_app to index functions,
so pools and clients are created on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

import pybreaker
from azure.core.credentials import TokenCredential

from controllers.registry import default_registry
from repositories.azure_credentials import default_credential
from repositories.blob_storage import BlobStorage
from repositories.database import Database
from repositories.key_vault import SecretStore, secret_store_from_settings, unresolved_key_vault_references
from repositories.postgres_credentials import needs_credential, postgres_connect_options
from repositories.storage_account import StorageAccount
from schemas.settings import Settings
from services.circuit_breakers import counts_database_outage, counts_storage_outage, make_breaker
from services.container_browser import ContainerBrowser
from services.engine.dead_letters import DeadLetterHandler
from services.engine.deferral import MessageDeferral
from services.engine.janitor import Janitor, JanitorOptions
from services.engine.job_control import JobControl
from services.engine.job_orchestrator import JobOrchestrator
from services.engine.job_service import JobService
from services.engine.outbox_relay import OutboxRelay
from services.engine.queue_publisher import QueuePublisher
from services.engine.registry import JobTypeRegistry
from services.engine.retry_policy import RetryPolicy
from services.engine.task_runner import TaskRunner, TaskRunnerOptions
from services.engine.work_chain import WorkChain
from services.health import HealthCheck, HealthTargets
from services.operations import Operations, OperationsOptions, QueueInspector
from services.rate_limits import SubmissionLimiter
from services.stac_api import StacApi
from services.telemetry.backlog import BacklogProbe, backlog_probe
from services.webhooks.delivery import DeliveryOptions, WebhookDeliverer
from services.webhooks.sender import WebhookSender
from services.webhooks.signing import WebhookSecretError, WebhookSigner
from services.webhooks.subscriptions import CallbackPolicy

T = TypeVar("T")


class ServiceContainer:
    """``credential``: the Azure identity for identity-based storage, Key Vault and Entra Postgres
    (default: ``DefaultAzureCredential``, made on first need). ``tls_verify``: a CA bundle path for
    storage endpoints with a private certificate (Azurite over HTTPS in tests)."""

    def __init__(
        self,
        settings: Settings,
        registry: JobTypeRegistry | None = None,
        *,
        credential: TokenCredential | None = None,
        tls_verify: str | bool = True,
    ) -> None:
        self.settings = settings
        self._registry = registry
        self._credential = credential
        self._tls_verify = tls_verify
        self._lock = threading.RLock()
        self._instances: dict[str, object] = {}

    def _once(self, name: str, factory: Callable[[], T]) -> T:
        with self._lock:
            if name not in self._instances:
                self._instances[name] = factory()
            return self._instances[name]  # type: ignore[return-value]

    @property
    def registry(self) -> JobTypeRegistry:
        if self._registry is not None:
            return self._registry
        return self._once("registry", lambda: default_registry(self.settings, self.blob_storage, self.db))

    @property
    def credential(self) -> TokenCredential:
        """The app's Azure identity; constructing it sends nothing (tokens are fetched on first use)."""
        return self._once("credential", lambda: self._credential or default_credential(self.settings.azure_client_id))

    @property
    def host_storage(self) -> StorageAccount:
        """The Functions host's account (AzureWebJobsStorage): the engine's queues."""
        s = self.settings
        connection = s.storage_connection_string.get_secret_value()
        return self._once(
            "host_storage",
            lambda: (
                StorageAccount(connection_string=connection, verify=self._tls_verify)
                if connection
                else StorageAccount.identity(
                    self.credential,
                    account_name=s.storage_account_name,
                    blob_service_uri=s.storage_blob_service_uri,
                    queue_service_uri=s.storage_queue_service_uri,
                    verify=self._tls_verify,
                )
            ),
        )

    @property
    def data_storage(self) -> StorageAccount:
        """The data account (DATA_STORAGE*): bronze and silver; the host's account when not set."""
        s = self.settings
        connection = s.data_storage_connection_string.get_secret_value()
        if connection:
            return self._once(
                "data_storage", lambda: StorageAccount(connection_string=connection, verify=self._tls_verify)
            )
        if s.data_storage_account_name or s.data_storage_blob_service_uri:
            return self._once(
                "data_storage",
                lambda: StorageAccount.identity(
                    self.credential,
                    account_name=s.data_storage_account_name,
                    blob_service_uri=s.data_storage_blob_service_uri,
                    verify=self._tls_verify,
                ),
            )
        return self.host_storage

    def breaker(self, service: str) -> pybreaker.CircuitBreaker:
        """One breaker per external service: "postgres", "storage" (queues and blobs), "http"."""
        s = self.settings
        counts = counts_database_outage if service == "postgres" else counts_storage_outage
        return self._once(
            f"breaker:{service}", lambda: make_breaker(service, s.circuit_fail_max, s.circuit_reset_seconds, counts)
        )

    @property
    def default_retry(self) -> RetryPolicy:
        s = self.settings
        return RetryPolicy(s.task_max_attempts, s.task_retry_base_seconds, s.task_retry_max_seconds)

    @property
    def secret_store(self) -> SecretStore | None:
        """Key Vault (KEY_VAULT_URL) through the app's identity, cached; None without a vault."""
        s = self.settings
        if not s.key_vault_url:
            return None
        return self._once("secret_store", lambda: secret_store_from_settings(s, self.credential))

    @property
    def db(self) -> Database:
        s = self.settings

        def build() -> Database:
            # The password of each new connection: POSTGRES_PASSWORD, the Key Vault secret, or an
            # Entra token of the app's identity (repositories/postgres_credentials.py).
            options = postgres_connect_options(
                s,
                credential=self.credential if needs_credential(s) else None,
                secret_store=self.secret_store,
            )
            return Database(
                s.postgres_conninfo(),
                schema=s.postgres_schema,
                min_size=s.db_pool_min_size,
                max_size=s.db_pool_max_size,
                timeout_seconds=s.db_pool_timeout_seconds,
                reconnect_timeout_seconds=s.db_reconnect_timeout_seconds,
                breaker=self.breaker("postgres"),
                password_provider=options.password_provider,
                on_password_rejected=options.on_password_rejected,
                prepare_threshold=options.prepare_threshold,
            )

        return self._once("db", build)

    @property
    def publisher(self) -> QueuePublisher:
        s = self.settings
        return self._once(
            "publisher",
            lambda: QueuePublisher(
                self.host_storage,
                {
                    "jobs": s.job_queue,
                    "tasks": s.task_queue,
                    "tasks_high": s.high_priority_task_queue,
                    "webhooks": s.webhook_queue,
                },
                concurrency=s.publish_concurrency,
                breaker=self.breaker("storage"),
            ),
        )

    @property
    def deferral(self) -> MessageDeferral:
        s = self.settings
        return self._once(
            "deferral",
            lambda: MessageDeferral(
                self.publisher, max_deferrals=s.max_message_deferrals, max_delay_seconds=s.deferral_max_seconds
            ),
        )

    @property
    def relay(self) -> OutboxRelay:
        return self._once("relay", lambda: OutboxRelay(self.db, self.publisher))

    @property
    def job_service(self) -> JobService:
        return self._once(
            "job_service",
            lambda: JobService(
                self.db,
                self.registry,
                self.relay,
                max_list_limit=self.settings.job_list_max_limit,
                callbacks=self.callback_policy,
            ),
        )

    @property
    def callback_policy(self) -> CallbackPolicy:
        """Which callback_url values submissions accept (WEBHOOK_* settings)."""
        s = self.settings
        return CallbackPolicy(
            signing_configured=bool(s.webhook_secret.get_secret_value() or s.webhook_secret_name),
            allow_http=s.webhook_allow_http,
            allow_private=s.webhook_allow_private_networks,
            max_attempts=1 + len(s.webhook_retry_delays_seconds),
        )

    def webhook_secret(self) -> str:
        """The signing secret: WEBHOOK_SECRET, else the Key Vault secret WEBHOOK_SECRET_NAME (cached)."""
        s = self.settings
        if s.webhook_secret.get_secret_value():
            return s.webhook_secret.get_secret_value()
        store = self.secret_store
        if s.webhook_secret_name and store is not None:
            return store.get(s.webhook_secret_name)
        raise WebhookSecretError("no webhook secret: set WEBHOOK_SECRET or WEBHOOK_SECRET_NAME")

    @property
    def webhook_deliverer(self) -> WebhookDeliverer:
        """One delivery attempt per 'webhooks' queue message (triggers/queue_webhooks.py)."""
        s = self.settings

        def build() -> WebhookDeliverer:
            sender = WebhookSender(
                allow_private=s.webhook_allow_private_networks,
                allow_http=s.webhook_allow_http,
                timeout_seconds=s.webhook_timeout_seconds,
            )
            options = DeliveryOptions(s.webhook_retry_delays_seconds, s.webhook_timeout_seconds)
            return WebhookDeliverer(self.db, self.relay, sender, WebhookSigner(self.webhook_secret), options)

        return self._once("webhook_deliverer", build)

    @property
    def submission_limiter(self) -> SubmissionLimiter:
        """Per-caller submission limit (SUBMIT_RATE_PER_MINUTE, SUBMIT_BURST): token buckets in Postgres."""
        s = self.settings
        return self._once(
            "submission_limiter",
            lambda: SubmissionLimiter(self.db, rate_per_minute=s.submit_rate_per_minute, burst=s.submit_burst),
        )

    @property
    def blob_storage(self) -> BlobStorage:
        return self._once(
            "blob_storage",
            lambda: BlobStorage(self.data_storage, breaker=self.breaker("storage")),
        )

    @property
    def container_browser(self) -> ContainerBrowser:
        return self._once(
            "container_browser",
            lambda: ContainerBrowser(
                self.blob_storage,
                max_limit=self.settings.blob_list_max_limit,
                visible=(*self.settings.readable_containers, *self.settings.writable_containers),
            ),
        )

    @property
    def job_control(self) -> JobControl:
        return self._once("job_control", lambda: JobControl(self.db, self.relay))

    @property
    def orchestrator(self) -> JobOrchestrator:
        return self._once("orchestrator", lambda: JobOrchestrator(self.db, self.registry, self.relay, self.deferral))

    @property
    def task_runner(self) -> TaskRunner:
        options = TaskRunnerOptions(lease_seconds=self.settings.task_lease_seconds, default_retry=self.default_retry)
        return self._once("task_runner", lambda: TaskRunner(self.db, self.registry, self.relay, self.deferral, options))

    @property
    def work_chain(self) -> WorkChain:
        """What the engine's queue triggers call: one message, then the work it made runnable."""
        budget = self.settings.inline_chain_seconds
        return self._once("work_chain", lambda: WorkChain(self.orchestrator, self.task_runner, budget_seconds=budget))

    @property
    def dead_letters(self) -> DeadLetterHandler:
        return self._once("dead_letters", lambda: DeadLetterHandler(self.db, self.registry, self.relay))

    @property
    def janitor(self) -> Janitor:
        s = self.settings
        options = JanitorOptions(
            outbox_grace_seconds=s.janitor_outbox_grace_seconds,
            lease_grace_seconds=s.janitor_lease_grace_seconds,
            requeue_queued_after_seconds=s.janitor_requeue_queued_after_seconds,
            stalled_job_after_seconds=s.janitor_stalled_job_after_seconds,
            poison_retention_hours=s.poison_retention_hours,
            default_retry=self.default_retry,
            poison_queues=tuple(
                f"{q}-poison" for q in (s.job_queue, s.task_queue, s.high_priority_task_queue, s.webhook_queue)
            ),
        )
        return self._once("janitor", lambda: Janitor(self.db, self.registry, self.relay, self.publisher, options))

    @property
    def stac_api(self) -> StacApi:
        """The STAC API over pgstac (PGSTAC_ENABLED), on the app's pool."""
        return self._once("stac_api", lambda: StacApi(self.db, max_limit=self.settings.stac_api_max_limit))

    @property
    def health(self) -> HealthCheck:
        s = self.settings
        targets = HealthTargets(
            job_queue=s.job_queue,
            containers=(s.bronze_container, s.silver_container),
            unresolved_settings=tuple(unresolved_key_vault_references(s)),
            pgstac=s.pgstac_enabled,
        )
        store, secret_name = self.secret_store, s.postgres_password_secret_name
        key_vault = (lambda: store.get(secret_name)) if store is not None and secret_name else None
        return self._once(
            "health", lambda: HealthCheck(self.db, self.publisher, self.blob_storage, targets, key_vault=key_vault)
        )

    @property
    def operations(self) -> Operations:
        """Operator tools: queue depths, dead letters, poison queues, statistics (triggers/http_operations.py)."""
        s = self.settings
        options = OperationsOptions(s.job_queue, s.task_queue, s.high_priority_task_queue, s.webhook_queue)
        return self._once(
            "operations", lambda: Operations(self.db, self.relay, QueueInspector(self.host_storage), options)
        )

    @property
    def telemetry_backlog(self) -> BacklogProbe:
        """What the backlog gauges read (services/telemetry/metrics.py): the engine's queues and their
        poison queues, the outbox and open dead letters; each read at most every 30 s."""
        s = self.settings
        queues = (s.job_queue, s.task_queue, s.high_priority_task_queue, s.webhook_queue)
        return self._once(
            "telemetry_backlog", lambda: backlog_probe(self.db, QueueInspector(self.host_storage), queues)
        )

    def close(self) -> None:
        with self._lock:
            publisher = self._instances.pop("publisher", None)
            db = self._instances.pop("db", None)
            health = self._instances.pop("health", None)
            secret_store = self._instances.pop("secret_store", None)
            deliverer = self._instances.pop("webhook_deliverer", None)
            self._instances.clear()
        if isinstance(deliverer, WebhookDeliverer):
            deliverer.close()
        if isinstance(secret_store, SecretStore):
            secret_store.close()
        if isinstance(health, HealthCheck):
            health.close()
        if isinstance(publisher, QueuePublisher):
            publisher.close()
        if isinstance(db, Database):
            db.close()
