"""Health of the app and its dependencies, for GET /api/health (Azure's health check, the dashboard).

Liveness is the process answering at all. Readiness checks each dependency at once, concurrently and
each within its own time limit: Postgres (and whether its schema has every migration this code
knows), queue storage (the job queue) and data storage (the input and output containers). Each
reports its status and latency; the app is ready only when every required one is ok. With
KEY_VAULT_URL and POSTGRES_PASSWORD_SECRET_NAME the vault is checked too (reading that secret,
through the store's cache). An app setting still holding an unresolved ``@Microsoft.KeyVault(...)``
reference (App Service could not resolve it) makes the app not ready, naming the setting. With
PGSTAC_ENABLED, pgstac's version is reported (down unless pypgstac's own). Nothing
in a report names a host, key or password: errors are given by their type only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from repositories.blob_storage import BlobStorage
from repositories.database import Database
from repositories.migrator import discover_migrations
from repositories.pgstac_migrator import PYPGSTAC_VERSION, pgstac_version
from services.engine.queue_publisher import QueuePublisher

CHECK_TIMEOUT_SECONDS = 4.0


@dataclass(frozen=True)
class HealthTargets:
    job_queue: str
    containers: tuple[str, ...]
    # App settings whose value is still an unresolved Key Vault reference literal.
    unresolved_settings: tuple[str, ...] = ()
    # PGSTAC_ENABLED: report pgstac's version, down unless it is the one pypgstac migrates to.
    pgstac: bool = False


class HealthCheck:
    def __init__(
        self,
        db: Database,
        publisher: QueuePublisher,
        storage: BlobStorage,
        targets: HealthTargets,
        *,
        key_vault: Callable[[], object] | None = None,
    ) -> None:
        self._db = db
        self._key_vault = key_vault
        self._publisher = publisher
        self._storage = storage
        self._targets = targets
        self._expected_migration = len(discover_migrations())
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="health")

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, report): every dependency checked concurrently, each within CHECK_TIMEOUT_SECONDS."""
        checks: dict[str, Callable[[], dict[str, Any]]] = {
            "postgres": self._postgres,
            "queue_storage": self._queue_storage,
            "data_storage": self._data_storage,
        }
        if self._key_vault is not None:
            checks["key_vault"] = self._read_key_vault
        if self._targets.pgstac:
            checks["pgstac"] = self._pgstac
        started = {name: self._pool.submit(_timed, check) for name, check in checks.items()}
        report: dict[str, Any] = {}
        for name, future in started.items():
            try:
                report[name] = future.result(timeout=CHECK_TIMEOUT_SECONDS)
            except FutureTimeout:
                report[name] = {"status": "down", "error": f"no answer within {CHECK_TIMEOUT_SECONDS:.0f} s"}
        if self._targets.unresolved_settings:
            names = ", ".join(self._targets.unresolved_settings)
            report["configuration"] = {
                "status": "down",
                "error": f"unresolved Key Vault reference in app setting(s) {names}: check the identity's access",
            }
        ready = all(entry["status"] == "ok" for entry in report.values())
        return ready, {"status": "ready" if ready else "not ready", "dependencies": report}

    def _postgres(self) -> dict[str, Any]:
        with self._db.statements() as repo:
            applied = repo.applied_migration_version()
        migrations = {"applied": applied, "expected": self._expected_migration}
        if applied < self._expected_migration:
            return {"status": "down", "error": "schema migrations pending", "migrations": migrations}
        return {"status": "ok", "migrations": migrations}

    def _pgstac(self) -> dict[str, Any]:
        with self._db.connection() as conn:
            version = pgstac_version(conn)
        if version != PYPGSTAC_VERSION:
            problem = "pgstac is not installed" if version is None else "pgstac migrations pending"
            return {"status": "down", "error": problem, "version": version, "expected": PYPGSTAC_VERSION}
        return {"status": "ok", "version": version}

    def _read_key_vault(self) -> dict[str, Any]:
        assert self._key_vault is not None
        self._key_vault()
        return {"status": "ok"}

    def _queue_storage(self) -> dict[str, Any]:
        self._publisher.client_for_name(self._targets.job_queue).get_queue_properties()
        return {"status": "ok"}

    def _data_storage(self) -> dict[str, Any]:
        client = self._storage.client
        present = {name: bool(client.get_container_client(name).exists()) for name in self._targets.containers}
        return {"status": "ok", "containers": present}

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _timed(check: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        entry = check()
    except Exception as exc:  # reported, by type only: a message may name a host or carry a key
        entry = {"status": "down", "error": type(exc).__name__}
    return {**entry, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}
