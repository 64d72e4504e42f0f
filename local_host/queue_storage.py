"""Storage-queue plumbing: per-thread raw-text clients, create-if-missing, message encoding."""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
from collections.abc import Callable

from azure.core.exceptions import ResourceExistsError
from azure.storage.queue import LinearRetry, QueueClient

from local_host.function_index import QueueOutput

logger = logging.getLogger("local_host.queues")

# Fail fast on a storage hiccup (the SDK default backs off 15 s, 60 s...): listener loops retry on their own.
RETRY_TOTAL = 2
RETRY_BACKOFF_SECONDS = 1
CONNECTION_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 30


def quick_retry() -> LinearRetry:
    return LinearRetry(backoff=RETRY_BACKOFF_SECONDS, retry_total=RETRY_TOTAL, random_jitter_range=1)


class MessageDecodeError(ValueError):
    """A message body that is not valid for the configured messageEncoding."""


def decode_message_body(raw: str | bytes, encoding: str) -> bytes:
    """The bytes a function sees: base64-decoded when messageEncoding is base64, else the UTF-8 text."""
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    if encoding != "base64":
        return text.encode("utf-8")
    try:
        # .NET's Convert.FromBase64String (used by the host) ignores whitespace; so do we.
        return base64.b64decode("".join(text.split()).encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError) as error:
        raise MessageDecodeError(f"message is not valid base64: {error}") from error


def encode_message_body(content: str | bytes, encoding: str) -> str:
    """Raw queue text for an outgoing message (base64 of the UTF-8 bytes, or the text itself)."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    if encoding == "base64":
        return base64.b64encode(data).decode("ascii")
    if isinstance(content, bytes):
        return content.decode("utf-8")
    return content


class QueueClients:
    """Thread-local ``QueueClient``s (no encode/decode policy: raw text) keyed by connection and queue."""

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        self._environ = environ if environ is not None else os.environ
        self._local = threading.local()
        self._created: set[tuple[str, str]] = set()
        self._created_lock = threading.Lock()

    def client(self, connection_setting: str, queue_name: str) -> QueueClient:
        cache: dict[tuple[str, str], QueueClient] | None = getattr(self._local, "clients", None)
        if cache is None:
            cache = {}
            self._local.clients = cache
        key = (connection_setting, queue_name)
        client = cache.get(key)
        if client is None:
            connection = self._environ[connection_setting]
            client = QueueClient.from_connection_string(
                connection,
                queue_name,
                retry_policy=quick_retry(),
                connection_timeout=CONNECTION_TIMEOUT_SECONDS,
                read_timeout=READ_TIMEOUT_SECONDS,
            )
            cache[key] = client
        return client

    def ensure_queue(self, connection_setting: str, queue_name: str) -> None:
        """Create the queue unless this process already did (sends do, like AddMessageAndCreateIfNotExists;
        trigger listeners never create their queue)."""
        key = (connection_setting, queue_name)
        with self._created_lock:
            if key in self._created:
                return
        try:
            self.client(connection_setting, queue_name).create_queue()
            logger.info("Created queue %s", queue_name, extra={"queue": queue_name})
        except ResourceExistsError:
            pass
        with self._created_lock:
            self._created.add(key)

    def send(self, connection_setting: str, queue_name: str, raw_text: str) -> None:
        self.ensure_queue(connection_setting, queue_name)
        self.client(connection_setting, queue_name).send_message(raw_text)


class OutputSender:
    """Sends queue output-binding messages after a successful invocation, then wakes local listeners."""

    def __init__(self, clients: QueueClients, encoding: str) -> None:
        self._clients = clients
        self._encoding = encoding
        self._watchers: dict[str, list[Callable[[], None]]] = {}

    def watch(self, queue_name: str, wake: Callable[[], None]) -> None:
        """Like the Functions host's shared queue watcher: a local write makes the local listener poll now."""
        self._watchers.setdefault(queue_name, []).append(wake)

    def __call__(self, output: QueueOutput, messages: list[str | bytes]) -> None:
        for message in messages:
            raw = encode_message_body(message, self._encoding)
            self._clients.send(output.connection_setting, output.queue_name, raw)
        for wake in self._watchers.get(output.queue_name, []):
            wake()
