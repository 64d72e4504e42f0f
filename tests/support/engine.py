"""In-process drivers for engine integration tests: real Azurite queues, real Postgres.

``QueuePump`` receives from the job and task queues and hands each message to the same services
the queue triggers call, optionally delivering every message twice (in sequence or concurrently)
to prove idempotency. It stands in for the Functions host where a test needs to control delivery.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import QueueClient, QueueMessage

from devstack.postgres import PostgresDatabase
from repositories.migrator import apply_migrations
from repositories.storage_account import StorageAccount
from schemas.errors import DatabaseUnavailableError
from schemas.jobs import JobStatus
from schemas.messages import JobMessage, TaskMessage
from schemas.settings import Settings
from services.container import ServiceContainer
from services.engine.registry import JobTypeRegistry
from services.webhooks.events import WebhookMessage


def make_settings(connection_string: str, database: PostgresDatabase, **overrides: Any) -> Settings:
    """Settings for a fresh schema in the test database (on the server the fixture chose); migrations applied."""
    values: dict[str, Any] = {
        "AzureWebJobsStorage": connection_string,
        "postgres_host": database.server.host,
        "postgres_port": database.server.port,
        "postgres_user": database.server.user,
        "postgres_password": database.server.password,
        "postgres_db": database.name,
        "postgres_schema": f"t_{secrets.token_hex(4)}",
        "job_queue": f"jobs-{secrets.token_hex(4)}",
        "task_queue": f"tasks-{secrets.token_hex(4)}",
        "high_priority_task_queue": f"tasks-high-{secrets.token_hex(4)}",
        "webhook_queue": f"webhooks-{secrets.token_hex(4)}",
        "db_pool_max_size": 20,
        "task_retry_base_seconds": 0.05,
        "task_retry_max_seconds": 0.2,
        **overrides,
    }
    settings = Settings.model_validate(values)
    apply_migrations(settings.postgres_conninfo(), settings.postgres_schema)
    return settings


def make_container(settings: Settings, registry: JobTypeRegistry | None = None) -> ServiceContainer:
    return ServiceContainer(settings, registry)


def sql(settings: Settings, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one read-only statement in the test schema (for assertions)."""
    with psycopg.connect(settings.postgres_conninfo()) as conn:
        conn.execute(f"SET search_path TO {settings.postgres_schema}")
        return conn.execute(statement, params).fetchall()


def queue_client(settings: Settings, name: str) -> QueueClient:
    return account_queue_client(StorageAccount.of(settings.storage_connection_string.get_secret_value()), name)


def account_queue_client(account: StorageAccount, name: str) -> QueueClient:
    """A plain client (no encode policy: bodies are base64 as the host sends them), queue created."""
    client = account.queue_client(name)
    with contextlib.suppress(ResourceExistsError):
        client.create_queue()
    return client


@dataclass
class QueuePump:
    container: ServiceContainer
    duplicate: bool = False  # deliver every message twice
    concurrent_duplicates: bool = False  # ...at the same time, from two threads
    workers: int = 8
    janitor_every: float | None = None  # run the janitor sweeps like the timer trigger would
    delivered: dict[str, int] = field(default_factory=lambda: {"jobs": 0, "tasks": 0, "tasks_high": 0, "webhooks": 0})

    def __post_init__(self) -> None:
        s = self.container.settings
        account = self.container.host_storage  # a connection string, or identity-based
        self._queues = {
            "jobs": account_queue_client(account, s.job_queue),
            "tasks_high": account_queue_client(account, s.high_priority_task_queue),
            "tasks": account_queue_client(account, s.task_queue),
            "webhooks": account_queue_client(account, s.webhook_queue),
        }
        self._pool = ThreadPoolExecutor(self.workers)
        self._copies = ThreadPoolExecutor(self.workers * 2)  # separate pool: no starvation deadlock
        self._lock = threading.Lock()

    def _dispatch(self, queue: str, message: QueueMessage) -> None:
        body = base64.b64decode(message.content)
        # Like the triggers: through the work chain (which follows what each message released).
        if queue == "jobs":
            self.container.work_chain.on_job_message(JobMessage.model_validate_json(body))
        elif queue == "webhooks":  # like triggers/queue_webhooks.py
            self.container.webhook_deliverer.deliver(WebhookMessage.model_validate_json(body).delivery_id)
        else:
            task = TaskMessage.model_validate_json(body)
            self.container.work_chain.on_task_message(
                task, message_id=message.id, dequeue_count=message.dequeue_count or 1, queue=queue
            )
        with self._lock:
            self.delivered[queue] += 1

    def _deliver(self, queue: str, message: QueueMessage) -> None:
        """Like the host: delete on success; on an exception the message comes back shortly
        (host.json visibilityTimeout) for another delivery."""
        try:
            if self.duplicate and self.concurrent_duplicates:
                copies = [self._copies.submit(self._dispatch, queue, message) for _ in range(2)]
                for copy in copies:
                    copy.result()
            else:
                self._dispatch(queue, message)
                if self.duplicate:
                    self._dispatch(queue, message)
        except Exception:
            logging.getLogger(__name__).warning("delivery failed; message released", exc_info=True)
            self._queues[queue].update_message(message, visibility_timeout=1)
            return
        self._queues[queue].delete_message(message)

    def pump_once(self) -> int:
        """Receive one batch from each queue and process it; returns messages handled."""
        handled = 0
        for queue, client in self._queues.items():
            batch = list(client.receive_messages(max_messages=32, visibility_timeout=60))
            futures = [self._pool.submit(self._deliver, queue, m) for m in batch]
            for future in futures:
                future.result()
            handled += len(batch)
        return handled

    def run_until(self, done: Callable[[], bool], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        next_janitor = time.monotonic() + (self.janitor_every or 0)
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError("pump timed out")
            if self.janitor_every is not None and time.monotonic() >= next_janitor:
                self.container.janitor.run()
                next_janitor = time.monotonic() + self.janitor_every
            if self.pump_once() == 0:
                time.sleep(0.05)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._copies.shutdown(wait=True)


def pump_until_terminal(
    container: ServiceContainer,
    job_id: str,
    *,
    timeout: float = 60.0,
    workers: int = 8,
    janitor_every: float | None = None,
) -> dict[str, Any]:
    """Deliver queued messages (like the host) until the job is terminal; its status document."""
    pump = QueuePump(container, workers=workers, janitor_every=janitor_every)
    try:
        pump.run_until(job_is_terminal(container, job_id), timeout=timeout)
    finally:
        pump.close()
    return container.job_service.job_status(job_id)


def job_is_terminal(container: ServiceContainer, job_id: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            status = container.job_service.job_status(job_id)["status"]
        except DatabaseUnavailableError:
            return False  # what an HTTP client sees as 503 + Retry-After: ask again
        return JobStatus(status).is_terminal

    return check
