"""What the backlog gauges report: queue depths and oldest-message ages (every engine queue and its
poison queue), the outbox backlog and open dead letters.

Read by the metric reader's thread at each export, never by a trigger. Each source is read at most
once per ``max_age_seconds`` (the snapshot is cached, so the five gauges cost one read), and a
failing read is logged (once per period) and answered with nothing for the queues or the last good
value: a metric callback never raises into the exporter and never touches the worker's threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from repositories.database import Database
from repositories.telemetry_queries import TelemetryQueries
from services.operations.queues import QueueInspector

logger = logging.getLogger(__name__)

T = TypeVar("T")
POISON_SUFFIX = "-poison"


@dataclass(frozen=True)
class QueueReading:
    name: str
    poison: bool
    approximate_messages: int
    oldest_age_seconds: float | None


@dataclass(frozen=True)
class StoreReading:
    outbox_messages: int
    outbox_oldest_age_seconds: float
    open_dead_letters: int


class CachedReading(Generic[T]):
    """``read()`` at most once per ``max_age_seconds``; on failure the last good value (or None)."""

    def __init__(
        self, what: str, read: Callable[[], T], max_age_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._what = what
        self._read = read
        self._max_age = max_age_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._read_at: float | None = None

    def get(self) -> T | None:
        with self._lock:
            now = self._clock()
            if self._read_at is not None and now - self._read_at < self._max_age:
                return self._value
            self._read_at = now  # also after a failure: at most one attempt (and one warning) per period
            try:
                self._value = self._read()
            except Exception as exc:
                logger.warning("telemetry: reading %s failed: %s: %s", self._what, type(exc).__name__, exc)
            return self._value


def _suppressed(read: Callable[[], T]) -> Callable[[], T]:
    """The gauges' own Postgres statements are not traced (they would be a trace per export)."""

    def run() -> T:
        from opentelemetry.instrumentation.utils import suppress_instrumentation

        with suppress_instrumentation():
            return read()

    return run


class BacklogProbe:
    def __init__(
        self,
        read_queues: Callable[[], list[QueueReading]],
        read_store: Callable[[], StoreReading],
        max_age_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._queues = CachedReading("queue depths", _suppressed(read_queues), max_age_seconds, clock)
        self._store = CachedReading("outbox and dead letters", _suppressed(read_store), max_age_seconds, clock)

    def queues(self) -> list[QueueReading]:
        return self._queues.get() or []

    def store(self) -> StoreReading | None:
        return self._store.get()


def queue_reader(inspector: QueueInspector, queues: Sequence[str]) -> Callable[[], list[QueueReading]]:
    """Every queue of ``queues`` and its poison queue. A missing queue reads as empty (QueueInspector)."""
    names = [name for queue in queues for name in (queue, f"{queue}{POISON_SUFFIX}")]

    def read() -> list[QueueReading]:
        readings = []
        for name in names:
            state = inspector.state(name)
            readings.append(
                QueueReading(
                    name,
                    name.endswith(POISON_SUFFIX),
                    state.approximate_messages,
                    state.oldest_age_seconds(datetime.now(UTC)),
                )
            )
        return readings

    return read


def store_reader(db: Database) -> Callable[[], StoreReading]:
    def read() -> StoreReading:
        with db.statements() as repo:
            row = TelemetryQueries.within(repo).backlog()
        return StoreReading(
            int(row["outbox_messages"]), float(row["outbox_oldest_age_seconds"]), int(row["open_dead_letters"])
        )

    return read


def backlog_probe(
    db: Database, inspector: QueueInspector, queues: Sequence[str], max_age_seconds: float = 30.0
) -> BacklogProbe:
    return BacklogProbe(queue_reader(inspector, queues), store_reader(db), max_age_seconds)
