"""Builds the object graph from Settings once; triggers ask it for services.

Nothing connects at construction: the Functions host imports function_app to index functions,
so pools and clients are created on first use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from controllers.registry import JobTypeRegistry, default_registry
from repositories.database import Database
from schemas.settings import Settings
from services.job_orchestrator import JobOrchestrator
from services.job_service import JobService
from services.outbox_relay import OutboxRelay
from services.queue_publisher import QueuePublisher
from services.task_runner import TaskRunner, TaskRunnerOptions

T = TypeVar("T")


class ServiceContainer:
    def __init__(self, settings: Settings, registry: JobTypeRegistry | None = None) -> None:
        self.settings = settings
        self._registry = registry
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
        return self._once("registry", lambda: default_registry(self.settings))

    @property
    def db(self) -> Database:
        s = self.settings
        return self._once(
            "db",
            lambda: Database(
                s.postgres_conninfo(),
                schema=s.postgres_schema,
                min_size=s.db_pool_min_size,
                max_size=s.db_pool_max_size,
            ),
        )

    @property
    def publisher(self) -> QueuePublisher:
        s = self.settings
        return self._once(
            "publisher",
            lambda: QueuePublisher(
                s.storage_connection_string.get_secret_value(),
                {"jobs": s.job_queue, "tasks": s.task_queue},
                concurrency=s.publish_concurrency,
            ),
        )

    @property
    def relay(self) -> OutboxRelay:
        return self._once("relay", lambda: OutboxRelay(self.db, self.publisher))

    @property
    def job_service(self) -> JobService:
        return self._once(
            "job_service",
            lambda: JobService(self.db, self.registry, self.relay, max_list_limit=self.settings.job_list_max_limit),
        )

    @property
    def orchestrator(self) -> JobOrchestrator:
        return self._once("orchestrator", lambda: JobOrchestrator(self.db, self.registry, self.relay))

    @property
    def task_runner(self) -> TaskRunner:
        s = self.settings
        options = TaskRunnerOptions(
            lease_seconds=s.task_lease_seconds,
            default_max_attempts=s.task_max_attempts,
            retry_base_seconds=s.task_retry_base_seconds,
            retry_max_seconds=s.task_retry_max_seconds,
        )
        return self._once("task_runner", lambda: TaskRunner(self.db, self.registry, self.relay, options))

    def close(self) -> None:
        with self._lock:
            publisher = self._instances.pop("publisher", None)
            db = self._instances.pop("db", None)
            self._instances.clear()
        if isinstance(publisher, QueuePublisher):
            publisher.close()
        if isinstance(db, Database):
            db.close()
