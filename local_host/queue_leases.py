"""Keep in-flight queue messages invisible while their function runs (the host's visibility renewal)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.storage.queue import QueueClient

logger = logging.getLogger("local_host.queues")


@dataclass
class HeldMessage:
    """A received message this process is working on; ``pop_receipt`` is always the latest one."""

    message_id: str
    pop_receipt: str
    dequeue_count: int
    next_renewal: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    released: bool = False
    lost: bool = False


class VisibilityRenewer:
    """One thread per listener: every lease/2 pushes each held message's visibility out by a full lease."""

    def __init__(self, client: Callable[[], QueueClient], lease_seconds: float, function_name: str) -> None:
        self._client = client
        self._lease = lease_seconds
        self._function_name = function_name
        self._held: dict[str, HeldMessage] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"renew-{function_name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def hold(self, message_id: str, pop_receipt: str, dequeue_count: int) -> HeldMessage:
        held = HeldMessage(message_id, pop_receipt, dequeue_count, time.monotonic() + self._lease / 2)
        with self._lock:
            self._held[message_id] = held
        return held

    def release(self, held: HeldMessage) -> str | None:
        """Stop renewing; returns the latest pop receipt, or None if already released by someone else."""
        with held.lock:
            if held.released:
                return None
            held.released = True
        with self._lock:
            self._held.pop(held.message_id, None)
        return held.pop_receipt

    def _run(self) -> None:
        tick = max(0.05, min(1.0, self._lease / 8))
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                due = [held for held in self._held.values() if held.next_renewal <= now]
            for held in due:
                self._renew(held)

    def _renew(self, held: HeldMessage) -> None:
        extra = {
            "function": self._function_name,
            "message_id": held.message_id,
            "dequeue_count": held.dequeue_count,
        }
        with held.lock:
            if held.released or held.lost:
                return
            try:
                updated = self._client().update_message(
                    held.message_id, pop_receipt=held.pop_receipt, visibility_timeout=round(self._lease)
                )
            except (ResourceNotFoundError, HttpResponseError) as error:
                status = getattr(error, "status_code", None)
                if isinstance(error, ResourceNotFoundError) or status in (400, 404):
                    held.lost = True
                    logger.warning(
                        "Lost message %s of function %s: could not renew its visibility (%s)",
                        held.message_id,
                        self._function_name,
                        error.__class__.__name__,
                        extra=extra,
                    )
                    return
                logger.warning("Renewing visibility of message %s failed; retrying", held.message_id, extra=extra)
                held.next_renewal = time.monotonic() + min(1.0, self._lease / 4)
                return
            except Exception:
                logger.warning("Renewing visibility of message %s failed; retrying", held.message_id, extra=extra)
                held.next_renewal = time.monotonic() + min(1.0, self._lease / 4)
                return
            if updated.pop_receipt:
                held.pop_receipt = updated.pop_receipt
            held.next_renewal = time.monotonic() + self._lease / 2
            logger.debug("Renewed visibility of message %s", held.message_id, extra=extra)
