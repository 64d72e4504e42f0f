"""A local Application Insights ingestion endpoint: what the Azure Monitor exporter talks to when a
connection string's IngestionEndpoint (and LiveEndpoint) point here.

``POST {endpoint}/v2.1/track``: a JSON array of envelopes (gzip when Content-Encoding says so),
answered like the service: ``{"itemsReceived": n, "itemsAccepted": n, "errors": []}``. Live Metrics
pings are answered "not subscribed". Every accepted envelope is kept, in order.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class IngestionServer:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._envelopes: list[dict[str, Any]] = []
        self.track_requests = 0
        self.other_paths: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, name="ingestion", daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    def connection_string(self, instrumentation_key: str = "00000000-0000-0000-0000-00000000e7e1") -> str:
        return (
            f"InstrumentationKey={instrumentation_key};IngestionEndpoint={self.endpoint};LiveEndpoint={self.endpoint}"
        )

    def envelopes(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._envelopes)

    def _accept(self, items: list[dict[str, Any]]) -> None:
        with self._lock:
            self._envelopes.extend(items)
            self.track_requests += 1

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?", 1)[0]
                if not path.endswith("/v2.1/track"):
                    server.other_paths.append(path)  # Live Metrics ping/post: nobody is watching
                    self._reply(200, {}, {"x-ms-qps-subscribed": "false"})
                    return
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    raw = gzip.decompress(raw)
                text = raw.decode("utf-8")
                try:
                    parsed = json.loads(text)
                    items = parsed if isinstance(parsed, list) else [parsed]
                except json.JSONDecodeError:  # newline-delimited envelopes
                    items = [json.loads(line) for line in text.splitlines() if line.strip()]
                server._accept(items)
                self._reply(200, {"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})

        return Handler

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextmanager
def ingestion_server() -> Iterator[IngestionServer]:
    server = IngestionServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def base_type(envelope: dict[str, Any]) -> str:
    return str(envelope.get("data", {}).get("baseType", ""))


def base_data(envelope: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = envelope.get("data", {}).get("baseData", {})
    return data


def properties(envelope: dict[str, Any]) -> dict[str, Any]:
    props: dict[str, Any] = base_data(envelope).get("properties") or {}
    return props
