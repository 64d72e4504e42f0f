"""Timer triggers: one instance runs each schedule (blob-lease singleton); missed occurrences run past due."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.functions.timer import TimerRequest
from azure.storage.blob import BlobServiceClient

from local_host.function_index import FunctionSpec, TimerTrigger
from local_host.invoker import Invoker
from local_host.singleton_lock import HOST_ID, HOSTS_CONTAINER, BlobSingletonLock, lock_blob_name

logger = logging.getLogger("local_host.timers")

LOCK_POLL_SECONDS = 5.0
MONITOR_THRESHOLD = timedelta(minutes=1)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class ScheduleStatus:
    last: datetime | None
    next: datetime | None
    last_updated: datetime | None

    def to_json(self) -> dict[str, str | None]:
        def text(value: datetime | None) -> str | None:
            return value.isoformat() if value else None

        return {"Last": text(self.last), "Next": text(self.next), "LastUpdated": text(self.last_updated)}

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> ScheduleStatus:
        def parse(value: Any) -> datetime | None:
            if not isinstance(value, str) or not value:
                return None
            moment = datetime.fromisoformat(value)
            return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

        return cls(parse(document.get("Last")), parse(document.get("Next")), parse(document.get("LastUpdated")))


class TimerListener:
    def __init__(self, spec: FunctionSpec, *, blob_service: BlobServiceClient, invoker: Invoker) -> None:
        assert isinstance(spec.trigger, TimerTrigger)
        self.spec = spec
        self.trigger: TimerTrigger = spec.trigger
        self._invoker = invoker
        self._lock = BlobSingletonLock(blob_service, lock_blob_name(spec.name))
        self._status_blob = blob_service.get_blob_client(HOSTS_CONTAINER, f"timers/{HOST_ID}/{spec.name}/status")
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"timer-{spec.name}", daemon=True)
        self._idle = threading.Event()
        self._idle.set()
        self._extra = {"function": spec.name}

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def wait_idle(self, timeout: float) -> bool:
        return self._idle.wait(timeout)

    def release(self) -> None:
        """Give up the singleton lock (after the last invocation finished) so another instance takes over."""
        if not self._idle.is_set():
            return
        self._lock.release()

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._lock.try_acquire():
                self._stopping.wait(LOCK_POLL_SECONDS)
                continue
            logger.info("This instance now runs the schedule of timer function %s", self.spec.name, extra=self._extra)
            try:
                self._run_schedule()
            except Exception:
                logger.exception("Timer %s failed; retrying", self.spec.name, extra=self._extra)
                self._stopping.wait(1.0)
            finally:
                if not self._stopping.is_set():
                    self._lock.release()

    def _use_monitor(self) -> bool:
        if self.trigger.use_monitor is not None:
            return self.trigger.use_monitor
        return self.trigger.schedule.typical_interval(utcnow()) >= MONITOR_THRESHOLD

    def _read_status(self) -> ScheduleStatus | None:
        try:
            document = json.loads(self._status_blob.download_blob().readall())
        except ResourceNotFoundError:
            return None
        except (ValueError, TypeError):
            logger.warning("Ignoring an unreadable schedule status for %s", self.spec.name, extra=self._extra)
            return None
        return ScheduleStatus.from_json(document) if isinstance(document, dict) else None

    def _write_status(self, status: ScheduleStatus) -> None:
        try:
            self._status_blob.upload_blob(json.dumps(status.to_json()), overwrite=True)
        except Exception:
            logger.warning("Writing the schedule status of %s failed", self.spec.name, exc_info=True, extra=self._extra)

    def _should_continue(self) -> bool:
        return not self._stopping.is_set() and not self._lock.lost.is_set()

    def _run_schedule(self) -> None:
        schedule = self.trigger.schedule
        monitor = self._use_monitor()
        status = self._read_status() if monitor else None
        now = utcnow()
        past_due = status is not None and status.next is not None and status.next < now
        if past_due or self.trigger.run_on_startup:
            last = self._invoke(past_due, status, reason="past due" if past_due else "runOnStartup")
            if monitor:
                self._write_status(ScheduleStatus(last, schedule.next_after(utcnow()), utcnow()))
        elif monitor and status is None:
            self._write_status(ScheduleStatus(None, schedule.next_after(now), now))
        while self._should_continue():
            due = schedule.next_after(utcnow())
            while self._should_continue():
                remaining = (due - utcnow()).total_seconds()
                if remaining <= 0:
                    break
                self._stopping.wait(min(remaining, 0.5))
            if not self._should_continue():
                return
            status = ScheduleStatus(due, due, utcnow())
            self._invoke(False, status, reason="Timer fired")
            if monitor:
                self._write_status(ScheduleStatus(due, schedule.next_after(max(utcnow(), due)), utcnow()))

    def _invoke(self, past_due: bool, status: ScheduleStatus | None, *, reason: str) -> datetime:
        started = utcnow()
        request = TimerRequest(
            past_due=past_due,
            schedule_status=status.to_json() if status else {},
            schedule={"AdjustForDST": True},
        )
        self._idle.clear()
        try:
            with contextlib.suppress(Exception):  # the invoker logged it; the schedule goes on
                self._invoker.invoke(self.spec, request, reason=f"{reason} at {started.isoformat()}")
        finally:
            self._idle.set()
        return started
