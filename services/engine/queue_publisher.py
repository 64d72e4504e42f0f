"""Sends JSON messages to the engine's Storage queues, base64-encoded like the Functions host expects."""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pybreaker
import requests
from azure.core.exceptions import ResourceExistsError
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.queue import LinearRetry, QueueClient, TextBase64EncodePolicy

from repositories.storage_account import StorageAccount

logger = logging.getLogger(__name__)

# Explicit retry policy: the SDK's default (its own ExponentialRetry; ``retry_backoff_factor`` has no
# effect on it) sleeps 15, 18 and 24 s, so a submission during a storage outage hung over a minute.
# A message that is not sent stays in the outbox (the janitor resends it): retry briefly and report.
RETRY_TOTAL = 2
RETRY_BACKOFF_SECONDS = 1
CONNECT_TIMEOUT_SECONDS = 2
READ_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class OutgoingMessage:
    queue: str  # logical queue: "jobs" | "tasks"
    body: dict[str, Any]
    delay_seconds: float = 0.0


def encode_body(body: dict[str, Any]) -> str:
    """Compact JSON text; the client's encode policy base64-encodes it on the wire."""
    return json.dumps(body, separators=(",", ":"), sort_keys=True)


class QueuePublisher:
    """One QueueClient per logical queue, created (and the queue with it) on first use."""

    def __init__(
        self,
        account: StorageAccount | str,
        queue_names: dict[str, str],
        *,
        concurrency: int = 16,
        breaker: pybreaker.CircuitBreaker | None = None,
    ) -> None:
        self._breaker = breaker
        self._account = StorageAccount.of(account)
        self._queue_names = dict(queue_names)
        self._concurrency = concurrency
        self._clients: dict[str, QueueClient] = {}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        session = requests.Session()
        session.trust_env = False  # no proxy/netrc lookup in os.environ on every request
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=concurrency * 2)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._transport = RequestsTransport(
            session=session, session_owner=False, connection_verify=self._account.verify
        )

    def queue_name(self, queue: str) -> str:
        return self._queue_names[queue]

    def client(self, queue: str) -> QueueClient:
        """The client of a logical queue ("jobs", "tasks", "tasks_high")."""
        return self.client_for_name(self._queue_names[queue])

    def client_for_name(self, queue_name: str) -> QueueClient:
        """A client for any queue of the account (poison queues too), created with its queue."""
        with self._lock:
            client = self._clients.get(queue_name)
            if client is None:
                client = self._account.queue_client(
                    queue_name,
                    message_encode_policy=TextBase64EncodePolicy(),
                    transport=self._transport,
                    retry_policy=LinearRetry(
                        backoff=RETRY_BACKOFF_SECONDS, random_jitter_range=0, retry_total=RETRY_TOTAL
                    ),
                    connection_timeout=CONNECT_TIMEOUT_SECONDS,
                    read_timeout=READ_TIMEOUT_SECONDS,
                )
                with contextlib.suppress(ResourceExistsError):
                    client.create_queue()
                self._clients[queue_name] = client
            return client

    def send(self, message: OutgoingMessage) -> None:
        delay = max(0, round(message.delay_seconds)) or None
        client = self.client(message.queue)
        if self._breaker is None:
            client.send_message(encode_body(message.body), visibility_timeout=delay)
            return
        # calling() checks and records around the block without holding the breaker's lock while
        # the request is in flight (breaker.call() would serialise all sends of the process).
        with self._breaker.calling():
            client.send_message(encode_body(message.body), visibility_timeout=delay)

    def send_many(self, messages: Sequence[OutgoingMessage]) -> list[bool]:
        """Send concurrently; returns per-message success (failures are logged, not raised)."""
        if not messages:
            return []
        if len(messages) == 1:
            return [self._try_send(messages[0])]
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._concurrency, thread_name_prefix="queue-publisher")
            executor = self._executor
        return list(executor.map(self._try_send, messages))

    def _try_send(self, message: OutgoingMessage) -> bool:
        try:
            self.send(message)
            return True
        except Exception:
            logger.exception("could not send message to %s queue", message.queue, extra={"body": message.body})
            return False

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        for client in self._clients.values():
            client.close()
