"""Keeps the leases of the tasks this process is running alive: one thread per process renews
them all in one statement every third of the lease, instead of a thread per task. A lease is
renewed only under the claim (task id + claim token) that took it: a delivery whose claim was
taken over after its lease lapsed cannot extend the new holder's lease."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

from repositories.database import Database

logger = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, db: Database, lease_seconds: int) -> None:
        self._db = db
        self._lease_seconds = lease_seconds
        self._interval = max(1.0, lease_seconds / 3)
        self._active: Counter[tuple[str, UUID]] = Counter()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @contextmanager
    def kept(self, task_id: str, claim_token: UUID | None) -> Iterator[None]:
        """Renew the lease of ``task_id`` held under ``claim_token`` while the block runs."""
        if claim_token is None:  # not a claimed task: nothing to renew
            yield
            return
        claim = (task_id, claim_token)
        with self._lock:
            self._active[claim] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="task-lease-keeper", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._active[claim] -= 1
                if self._active[claim] <= 0:
                    del self._active[claim]

    def active(self) -> list[tuple[str, UUID]]:
        with self._lock:
            return list(self._active)

    def renew_now(self) -> int:
        claims = self.active()
        if not claims:
            return 0
        with self._db.statements() as repo:
            return repo.renew_task_leases(claims, self._lease_seconds)

    def _run(self) -> None:
        """Renew every third of the lease; after a failed renewal (Postgres unreachable) try again
        every second, so the lease (the task's heartbeat) does not lapse while the task is alive."""
        stop = threading.Event()
        wait = self._interval
        while not stop.wait(wait):
            try:
                self.renew_now()
                wait = self._interval
            except Exception:
                logger.warning("could not renew task leases; trying again in 1 s", exc_info=True)
                wait = min(1.0, self._interval)
