"""One webhook POST, connecting only to addresses the SSRF rule allows (checked at connect time).

httpcore is used directly with a network backend that resolves the host once, checks every
address (``urls.address_refusal``) and connects to a checked address itself: what is checked is
what is connected to, so DNS rebinding cannot slip a private address in between. TLS still
verifies the certificate against the host name (SNI = the URL's host) and the Host header is the
URL's. httpcore never follows redirects: a 3xx answer is a failed attempt. The response body is
read up to ``MAX_RESPONSE_BYTES`` (for the error message), never more. The whole attempt (connect,
TLS, request, answer) has one time limit: every read and write gets at most what is left of it, so
a receiver that dribbles bytes cannot hold an attempt longer.
"""

from __future__ import annotations

import ssl
import time
import typing
from dataclasses import dataclass

import certifi
import httpcore

from services.webhooks.urls import (
    CallbackUrlError,
    Resolver,
    address_refusal,
    default_port,
    resolve_host,
    split_callback_url,
)

MAX_RESPONSE_BYTES = 64 * 1024
ERROR_BODY_CHARS = 200
USER_AGENT = "geoetl-webhooks/1"


@dataclass(frozen=True)
class AttemptResult:
    delivered: bool
    status_code: int | None
    error: str | None


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes all end by one deadline (one connection = one attempt)."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def _left(self, timeout: float | None, error: type[httpcore.TimeoutException]) -> float:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise error("the attempt's time limit (WEBHOOK_TIMEOUT_SECONDS) passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, self._left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, self._left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        tls = self._stream.start_tls(ssl_context, server_hostname, self._left(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(tls, self._deadline)

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _CheckedBackend(httpcore.SyncBackend):
    """httpcore's sync backend, but TCP connections go only to checked addresses of the host, and
    each connection must be done within ``budget_seconds`` of its start."""

    def __init__(self, allow_private: bool, resolve: Resolver, budget_seconds: float) -> None:
        self._allow_private = allow_private
        self._resolve = resolve
        self._budget = budget_seconds

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        name = host.strip("[]")
        deadline = time.monotonic() + self._budget
        try:
            addresses = self._resolve(name, port)
        except CallbackUrlError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        if not self._allow_private:
            for address in addresses:
                reason = address_refusal(address)
                if reason:
                    raise httpcore.ConnectError(f"refused to connect: {reason} (WEBHOOK_ALLOW_PRIVATE_NETWORKS is off)")
        last: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses:  # like socket.create_connection, but only over the checked list
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                limit = left if timeout is None else min(timeout, left)
                stream = super().connect_tcp(address, port, limit, local_address, socket_options)
                return _DeadlineStream(stream, deadline)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        if last is None or isinstance(last, httpcore.ConnectTimeout):
            raise httpcore.ConnectTimeout(f"connect to {name}:{port} timed out")
        raise httpcore.ConnectError(f"connect to {name}:{port} failed: {last}")


class WebhookSender:
    def __init__(
        self,
        *,
        allow_private: bool,
        allow_http: bool,
        timeout_seconds: float,
        resolve: Resolver = resolve_host,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._allow_http = allow_http
        self._timeout = timeout_seconds
        self._pool = httpcore.ConnectionPool(
            ssl_context=ssl_context or ssl.create_default_context(cafile=certifi.where()),
            max_connections=32,
            max_keepalive_connections=0,  # a connection per attempt: every attempt resolves and checks anew
            retries=0,
            network_backend=_CheckedBackend(allow_private, resolve, timeout_seconds),
        )

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> AttemptResult:
        try:
            parts = split_callback_url(url, allow_http=self._allow_http)
        except CallbackUrlError as exc:
            return AttemptResult(False, None, f"callback URL refused: {exc}")
        host = parts.hostname or ""
        host_header = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        request_headers = [
            (b"Host", host_header.encode("ascii")),
            (b"User-Agent", USER_AGENT.encode()),
            (b"Content-Type", b"application/json"),
            *((k.encode("ascii"), v.encode("ascii")) for k, v in headers.items()),
        ]
        timeouts = {"connect": min(5.0, self._timeout), "read": self._timeout, "write": self._timeout, "pool": 5.0}
        address = httpcore.URL(
            scheme=parts.scheme.encode(), host=host.encode("ascii"), port=default_port(parts), target=target.encode()
        )
        try:
            with self._pool.stream(
                "POST",
                address,
                headers=request_headers,
                content=body,
                extensions={"timeout": timeouts, "sni_hostname": host},
            ) as response:
                excerpt = _read_bounded(response)
                return _judge(response.status, dict((k.lower(), v) for k, v in response.headers), excerpt)
        except httpcore.TimeoutException as exc:
            return AttemptResult(False, None, f"timed out: {type(exc).__name__} {exc}".strip())
        except httpcore.ConnectError as exc:
            return AttemptResult(False, None, f"could not connect: {exc}")
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, ssl.SSLError) as exc:
            return AttemptResult(False, None, f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        self._pool.close()


def _judge(status: int, headers: dict[bytes, bytes], excerpt: bytes) -> AttemptResult:
    """2xx is delivered; a redirect is a failure (never followed); anything else fails with the
    start of the answer's body."""
    if 200 <= status < 300:
        return AttemptResult(True, status, None)
    if 300 <= status < 400:
        location = headers.get(b"location", b"").decode("latin-1")[:200]
        return AttemptResult(False, status, f"HTTP {status}: redirect to {location!r} not followed")
    text = " ".join(excerpt.decode("utf-8", "replace").split())[:ERROR_BODY_CHARS]
    return AttemptResult(False, status, f"HTTP {status}" + (f": {text}" if text else ""))


def _read_bounded(response: httpcore.Response) -> bytes:
    """At most MAX_RESPONSE_BYTES of the body; the rest is never read (the connection is closed)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_stream():
        chunks.append(chunk[: MAX_RESPONSE_BYTES - size])
        size += len(chunks[-1])
        if size >= MAX_RESPONSE_BYTES:
            break
    return b"".join(chunks)
