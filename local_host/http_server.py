"""HTTP triggers: a threaded stdlib server on a SO_REUSEPORT socket, routing to functions under routePrefix."""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import socket
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import azure.functions as func

from local_host.app_settings import is_truthy
from local_host.function_index import FunctionSpec, HttpTrigger
from local_host.invoker import Invoker
from local_host.routing import Route, RouteResult, RouteTable, split_path

logger = logging.getLogger("local_host.http")

MAX_BODY_BYTES = 100 * 1024 * 1024  # the Functions host's default request size limit
KEY_HEADER = "x-functions-key"
RESPONSE_BUFFER_BYTES = 64 * 1024  # a response up to this size leaves in one write
REDACTED = "[redacted]"
_KEY_IN_QUERY = re.compile(r"([?&;]code=)[^&;#\s'\"]*", re.IGNORECASE)
_KEY_IN_HEADER = re.compile(rf"({KEY_HEADER}[\"']?\s*[:=,]\s*[\"']?)[^\s,'\"]+", re.IGNORECASE)


def redact_function_keys(text: str) -> str:
    """``text`` with the value of any ``code`` query parameter and ``x-functions-key`` header masked."""
    return _KEY_IN_HEADER.sub(rf"\g<1>{REDACTED}", _KEY_IN_QUERY.sub(rf"\g<1>{REDACTED}", text))


class BadRequestError(ValueError):
    pass


class InvalidResponseError(TypeError):
    """An HTTP function returned something that is not an HTTP response."""


class FunctionKeyPolicy:
    """Function keys as Core Tools skips them by default; enforced when LOCAL_HOST_REQUIRE_FUNCTION_KEY is set."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.required = is_truthy(environ.get("LOCAL_HOST_REQUIRE_FUNCTION_KEY"))
        self.key = environ.get("LOCAL_HOST_FUNCTION_KEY", "")
        if self.required and not self.key:
            raise ValueError("LOCAL_HOST_REQUIRE_FUNCTION_KEY is set but LOCAL_HOST_FUNCTION_KEY is empty")

    def allows(self, trigger: HttpTrigger, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
        if not self.required or trigger.auth_level == "ANONYMOUS":
            return True
        given = headers.get(KEY_HEADER) or query.get("code") or ""
        return hmac.compare_digest(given.encode(), self.key.encode())


def build_route_table(specs: list[FunctionSpec]) -> RouteTable[FunctionSpec]:
    table: RouteTable[FunctionSpec] = RouteTable()
    for spec in specs:
        if isinstance(spec.trigger, HttpTrigger):
            table.add(Route(spec.trigger.route, spec.trigger.methods, spec))
    return table


class ReusePortHTTPServer(ThreadingHTTPServer):
    """Several worker processes bind the same port; the kernel spreads connections across them."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def server_bind(self) -> None:
        if hasattr(socket, "SO_REUSEPORT"):
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


class FunctionsHttpHost:
    """Owns the server thread, the route table and the shutdown state."""

    def __init__(
        self,
        specs: list[FunctionSpec],
        *,
        host: str,
        port: int,
        route_prefix: str,
        invoker: Invoker,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.routes = build_route_table(specs)
        self.route_prefix = route_prefix.strip("/")
        self.invoker = invoker
        self.keys = FunctionKeyPolicy(environ if environ is not None else os.environ)
        self.stopping = threading.Event()
        self.server = ReusePortHTTPServer((host, port), _make_handler(self))
        self._thread = threading.Thread(target=self.server.serve_forever, name="http-server", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting connections; requests already being handled finish."""
        self.stopping.set()
        self.server.shutdown()
        self.server.socket.close()

    def strip_prefix(self, path: str) -> str | None:
        if not self.route_prefix:
            return path
        prefix = "/" + self.route_prefix
        if path.lower() == prefix.lower():
            return "/"
        if path.lower().startswith(prefix.lower() + "/"):
            return path[len(prefix) :]
        return None

    def resolve(self, method: str, path: str) -> RouteResult[FunctionSpec] | None:
        inner = self.strip_prefix(path)
        segments = split_path(inner) if inner is not None else None
        if segments is None:
            return None
        return self.routes.resolve(method, segments)


def split_url_path(url: str) -> str:
    return urlsplit(url).path


def _json_body(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode("utf-8")


def _make_handler(host: FunctionsHttpHost) -> type[BaseHTTPRequestHandler]:
    class FunctionRequestHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "local_host"
        timeout = 120
        # Status line, headers and body in one write, and no Nagle delay: written separately, the second
        # write waited for the client's delayed ACK (~40 ms per keep-alive request).
        wbufsize = RESPONSE_BUFFER_BYTES
        disable_nagle_algorithm = True

        def __getattr__(self, name: str) -> Any:
            if name.startswith("do_"):  # any method: routing answers 404 or 405, as the Functions host does
                return self._handle
            raise AttributeError(name)

        def handle_expect_100(self) -> bool:
            answered = super().handle_expect_100()
            self.wfile.flush()  # output is buffered: the interim 100 Continue must leave now
            return answered

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            """Access log: method, URL path (never the query: it may hold ``code``) and status."""
            path = urlsplit(getattr(self, "path", None) or "").path
            status = code.value if isinstance(code, HTTPStatus) else code
            method = self.command or "-"
            logger.debug("%s %s %s", method, path, status, extra={"method": method, "path": path, "status": status})

        def log_message(self, format: str, *args: Any) -> None:
            """The stdlib's error lines quote the request line: function keys are masked."""
            logger.debug("%s - %s", self.address_string(), redact_function_keys(format % args))

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._read_chunked()
            length_text = self.headers.get("Content-Length")
            if not length_text:
                return b""
            try:
                length = int(length_text)
            except ValueError as error:
                raise BadRequestError("invalid Content-Length") from error
            if length < 0 or length > MAX_BODY_BYTES:
                raise BadRequestError("request body too large or invalid")
            return self.rfile.read(length)

        def _read_chunked(self) -> bytes:
            chunks: list[bytes] = []
            total = 0
            while True:
                size_line = self.rfile.readline(65537).strip()
                try:
                    size = int(size_line.split(b";", 1)[0], 16)
                except ValueError as error:
                    raise BadRequestError("invalid chunk size") from error
                if size == 0:
                    while self.rfile.readline(65537).strip():  # trailers up to the blank line
                        pass
                    return b"".join(chunks)
                total += size
                if total > MAX_BODY_BYTES:
                    raise BadRequestError("request body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)  # CRLF after the chunk

        def _send(self, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
            self.send_response(status)
            for name, value in headers:
                if name.lower() not in ("content-length", "transfer-encoding", "connection", "date", "server"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            if host.stopping.is_set():
                self.close_connection = True
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _send_json(
            self, status: int, payload: dict[str, Any], headers: list[tuple[str, str]] | None = None
        ) -> None:
            content_type = ("Content-Type", "application/json; charset=utf-8")
            self._send(status, _json_body(payload), [content_type, *(headers or [])])

        def _handle(self) -> None:
            try:
                body = self._read_body()
            except BadRequestError as error:
                self.close_connection = True
                self._send_json(400, {"error": str(error)})
                return
            if host.stopping.is_set():
                self._send_json(503, {"error": "host is shutting down"})
                return
            split = urlsplit(self.path)
            result = host.resolve(self.command, split.path)
            if result is None or (result.match is None and not result.allowed):
                self._send_json(404, {"error": "not found"})
                return
            if result.match is None:
                allow = ", ".join(sorted(result.allowed))
                self._send_json(405, {"error": "method not allowed"}, [("Allow", allow)])
                return
            spec = result.match.route.target
            assert isinstance(spec.trigger, HttpTrigger)
            query: dict[str, str] = {}
            for key, value in parse_qsl(split.query, keep_blank_values=True):
                query.setdefault(key, value)
            headers: dict[str, str] = {}
            for name, value in self.headers.items():
                key = name.lower()
                headers[key] = f"{headers[key]}, {value}" if key in headers else value
            if not host.keys.allows(spec.trigger, headers, query):
                self._send_json(401, {"error": "unauthorized: a valid function key is required"})
                return
            address = host.server.server_address
            authority = headers.get("host") or f"{address[0]!s}:{address[1]!s}"
            request = func.HttpRequest(
                self.command,
                f"http://{authority}{self.path}",
                headers=headers,
                params=query,
                route_params=result.match.values,
                body=body,
            )
            self._invoke(spec, request)

        def _invoke(self, spec: FunctionSpec, request: func.HttpRequest) -> None:
            answered = threading.Lock()  # taken by whoever answers: this thread, or the timeout watchdog

            def answer_timeout() -> None:
                if answered.acquire(blocking=False):
                    self.close_connection = True
                    self._send_json(500, {"error": "internal server error"})
                    self.wfile.flush()

            try:
                reason = f"HTTP {request.method} {split_url_path(request.url)}"
                response = host.invoker.invoke(spec, request, reason=reason, on_timeout=answer_timeout)
                status, body, headers = _encode_response(response)
            except Exception as error:
                if isinstance(error, InvalidResponseError):  # the invoker logged the function's own errors
                    logger.exception("Function %s: %s", spec.name, error, extra={"function": spec.name})
                if answered.acquire(blocking=False):
                    self._send_json(500, {"error": "internal server error"})
                return
            if answered.acquire(blocking=False):
                self._send(status, body, headers)

        def handle_one_request(self) -> None:
            try:
                super().handle_one_request()
            except (ConnectionError, TimeoutError):
                self.close_connection = True

    return FunctionRequestHandler


def _encode_response(response: Any) -> tuple[int, bytes, list[tuple[str, str]]]:
    """What the Python worker's HTTP output converter does with a return value."""
    if isinstance(response, str):
        return 200, response.encode("utf-8"), [("Content-Type", "text/plain; charset=utf-8")]
    if not isinstance(response, func.HttpResponse):
        kind = type(response).__name__
        raise InvalidResponseError(f"an HTTP function must return func.HttpResponse or str, got {kind}")
    headers: list[tuple[str, str]] = [(str(name), str(value)) for name, value in response.headers.items()]
    if not any(name.lower() == "content-type" for name, _ in headers):
        mimetype = response.mimetype
        content_type = f"{mimetype}; charset={response.charset}" if mimetype.startswith("text/") else mimetype
        headers.append(("Content-Type", content_type))
    return int(response.status_code), response.get_body() or b"", headers
