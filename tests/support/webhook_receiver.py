"""A local HTTP server standing in for a webhook receiver: answers from a script, records every
request (path, headers, body, when) and can verify its Standard Webhooks signature."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Answer:
    status: int = 200
    body: bytes = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # before answering
    drip: float = 0.0  # between the body's bytes (a slow receiver that keeps each read under its timeout)


@dataclass
class Receiver:
    """``script``: the answers to the first requests in order; later ones get ``default``."""

    script: list[Answer] = field(default_factory=list)
    default: Answer = field(default_factory=Answer)
    requests: list[Received] = field(default_factory=list)
    port: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def answer(self, received: Received) -> Answer:
        with self._lock:
            self.requests.append(received)
            return self.script.pop(0) if self.script else self.default

    def on(self, path: str) -> list[Received]:
        return [r for r in self.requests if r.path.split("?")[0] == path]

    def wait_for(self, count: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.requests)} of {count} webhook requests arrived")
            time.sleep(0.02)


def verify(secret: str, received: Received) -> Any:
    """The payload, if the request's signature is valid for ``secret`` (else WebhookVerificationError)."""
    return Webhook(secret).verify(received.body, received.headers)


@contextmanager
def running_receiver(given: Receiver | None = None) -> Iterator[Receiver]:
    receiver = given or Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            answer = receiver.answer(Received(self.path, headers, body, time.monotonic()))
            time.sleep(answer.delay)
            self.send_response(answer.status)
            for name, value in answer.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.body)))
            self.end_headers()
            if not answer.drip:
                self.wfile.write(answer.body)
                return
            for byte in answer.body:
                self.wfile.write(bytes([byte]))
                self.wfile.flush()
                time.sleep(answer.drip)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a sender that gave up (time limit, bounded read) closed the connection: expected

    server = Server(("127.0.0.1", 0), Handler)
    receiver.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
