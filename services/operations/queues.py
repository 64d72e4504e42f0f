"""Live queue state for operators: message counts, the oldest message's age, and poison-queue
messages (peek, move back to the source queue, purge).

Clients here never create a queue (a missing queue counts 0 messages) and read message content
as it is on the wire: the host's messages are base64 text, decoded for display only and re-sent
byte for byte when moved back.
"""

from __future__ import annotations

import base64
import binascii
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.queue import LinearRetry, QueueClient, QueueMessage

from repositories.storage_account import StorageAccount
from schemas.errors import StorageUnavailableError, ThrottlingError
from services.engine.queue_publisher import CONNECT_TIMEOUT_SECONDS, RETRY_BACKOFF_SECONDS, RETRY_TOTAL

PEEK_MAX = 32  # the most messages one peek returns
BODY_MAX_CHARS = 10_000  # like a dead letter's body
MOVE_BATCH = 32
MOVE_VISIBILITY_SECONDS = 60  # a received message is ours this long while it is moved or deleted
MOVE_BUDGET_SECONDS = 20.0  # one HTTP request moves or purges at most this long (then reports what is left)
MOVE_MAX_MESSAGES = 5000
READ_TIMEOUT_SECONDS = 10


def decode_content(content: Any) -> str:
    """A message's text for display: base64 decoded when it is base64 of UTF-8, else as it is."""
    if content is None:
        return ""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else str(content)
    try:
        decoded = base64.b64decode(text, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # UnicodeDecodeError is a ValueError
        decoded = text
    return decoded[:BODY_MAX_CHARS]


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


@dataclass(frozen=True)
class QueueState:
    name: str
    approximate_messages: int
    oldest_inserted_on: datetime | None

    def oldest_age_seconds(self, now: datetime) -> float | None:
        if self.oldest_inserted_on is None:
            return None
        return round(max(0.0, (now - self.oldest_inserted_on).total_seconds()), 3)


@dataclass(frozen=True)
class MoveReport:
    moved: int
    failed: int
    remaining: int


@contextmanager
def storage_errors(action: str, queue: str) -> Iterator[None]:
    """Azure SDK errors as geoetl's: throttling and outages are 503 (the caller may retry)."""
    try:
        yield
    except HttpResponseError as exc:
        status = exc.status_code or 0
        if status in (429, 503):
            raise ThrottlingError(f"{action} queue {queue}: throttled (HTTP {status})") from exc
        raise StorageUnavailableError(f"{action} queue {queue}: HTTP {status}") from exc
    except (ServiceRequestError, ServiceResponseError, ConnectionError, TimeoutError) as exc:
        raise StorageUnavailableError(f"{action} queue {queue}: storage unreachable") from exc


class QueueInspector:
    """Raw (no encode/decode policy) clients for any queue of the account, created on first use."""

    def __init__(self, account: StorageAccount | str) -> None:
        self._account = StorageAccount.of(account)
        self._clients: dict[str, QueueClient] = {}
        self._lock = threading.Lock()

    def client(self, name: str) -> QueueClient:
        with self._lock:
            client = self._clients.get(name)
            if client is None:
                client = self._account.queue_client(
                    name,
                    retry_policy=LinearRetry(
                        backoff=RETRY_BACKOFF_SECONDS, random_jitter_range=0, retry_total=RETRY_TOTAL
                    ),
                    connection_timeout=CONNECT_TIMEOUT_SECONDS,
                    read_timeout=READ_TIMEOUT_SECONDS,
                )
                self._clients[name] = client
            return client

    def state(self, name: str) -> QueueState:
        """Approximate count and the front message's insertion time; a missing queue is empty."""
        client = self.client(name)
        with storage_errors("inspect", name):
            try:
                count = int(client.get_queue_properties().approximate_message_count or 0)
                front = list(client.peek_messages(max_messages=1))
            except ResourceNotFoundError:
                return QueueState(name, 0, None)
        return QueueState(name, count, front[0].inserted_on if front else None)

    def peek(self, name: str, limit: int = PEEK_MAX) -> list[dict[str, Any]]:
        client = self.client(name)
        with storage_errors("peek", name):
            try:
                messages = list(client.peek_messages(max_messages=max(1, min(limit, PEEK_MAX))))
            except ResourceNotFoundError:
                return []
        return [
            {
                "message_id": m.id,
                "inserted_on": iso(m.inserted_on),
                "dequeue_count": m.dequeue_count,
                "body": decode_content(m.content),
            }
            for m in messages
        ]

    def _receive(self, client: QueueClient, name: str) -> list[QueueMessage]:
        with storage_errors("receive from", name):
            try:
                return list(
                    client.receive_messages(max_messages=MOVE_BATCH, visibility_timeout=MOVE_VISIBILITY_SECONDS)
                )
            except ResourceNotFoundError:
                return []

    def _remaining(self, name: str) -> int:
        try:
            return self.state(name).approximate_messages
        except StorageUnavailableError:
            return -1

    def move_all(self, source: str, target: str) -> MoveReport:
        """Receive every message of ``source``, send its content unchanged to ``target``, then delete it
        from ``source`` (sent first: a crash in between duplicates a message, never loses one)."""
        poison, destination = self.client(source), self.client(target)
        moved = failed = 0
        deadline = time.monotonic() + MOVE_BUDGET_SECONDS
        while moved + failed < MOVE_MAX_MESSAGES and time.monotonic() < deadline:
            batch = self._receive(poison, source)
            if not batch:
                break
            for message in batch:
                try:
                    with storage_errors("send to", target):
                        destination.send_message(message.content)
                    with storage_errors("delete from", source):
                        poison.delete_message(message)
                except (StorageUnavailableError, ThrottlingError):
                    failed += 1  # visible again in the poison queue after its visibility timeout
                    continue
                moved += 1
            if failed:
                break
        return MoveReport(moved, failed, self._remaining(source))

    def purge(self, name: str) -> MoveReport:
        """Delete every (visible) message of ``name``; ``moved`` counts the deleted ones."""
        client = self.client(name)
        deleted = failed = 0
        deadline = time.monotonic() + MOVE_BUDGET_SECONDS
        while deleted + failed < MOVE_MAX_MESSAGES and time.monotonic() < deadline:
            batch = self._receive(client, name)
            if not batch:
                break
            for message in batch:
                try:
                    with storage_errors("delete from", name):
                        client.delete_message(message)
                except (StorageUnavailableError, ThrottlingError):
                    failed += 1
                    continue
                deleted += 1
            if failed:
                break
        return MoveReport(deleted, failed, self._remaining(name))

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()
