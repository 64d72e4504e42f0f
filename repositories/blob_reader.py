"""Many small blob reads of one container, concurrently, with little Python per request.

The Azure SDK spends 1-2 ms of Python (the GIL held) on each download — its policy pipeline,
request signing, response wrapping — so 32 threads reach ~550 GETs/s from Azurite, whichever pool
size its transport has. validate_stac reads thousands of objects of a few KB each: for that,
``HttpBlobReader`` sends plain ``GET``s (and ``HEAD``s, and List Blobs parsed for names and sizes
only) with ``http.client``, one keep-alive connection per thread, authorised once per reader — a read and list
container SAS signed with the account key, the connection string's own SAS, or the identity's bearer
token (refreshed) — and reaches Azurite's own ceiling (bench/README.md "STAC validation").
Errors are translated like ``repositories/blob_storage.py`` does for the SDK's: 404 →
``BlobNotFoundError``, 429 / 503 → ``ThrottlingError``, other 5xx and connection failures →
``StorageUnavailableError``, other 4xx → ``BlobAccessDeniedError`` (this reader does not go through
BlobStorage's circuit breaker).

``open_blob_reader`` falls back to ``SdkBlobReader`` (the SDK's downloads) for a storage it cannot
authorise that way.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast
from urllib.parse import quote, unquote, urlencode, urlsplit
from xml.etree import ElementTree

import certifi
from azure.core.credentials import TokenCredential
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from repositories.blob_storage import BlobStorage
from repositories.storage_account import STORAGE_SCOPE, RefreshingToken
from schemas.errors import (
    BlobAccessDeniedError,
    BlobNotFoundError,
    StorageUnavailableError,
    ThrottlingError,
)
from services.engine.error_classification import parse_retry_after

STREAM_BLOCK_BYTES = 1024 * 1024  # a streamed read holds this much at a time
LIST_PAGE = 5000  # names per List Blobs request (the service's maximum)
SAS_LIFETIME = timedelta(hours=6)  # a reader lives for one task
TOKEN_MIN_REMAINING_SECONDS = 5 * 60
RETRIES = 2  # like the SDK's policy in blob_storage.py: brief, the task retries at its own level
RETRY_BACKOFF_SECONDS = 1
CONNECT_TIMEOUT_SECONDS = 2
READ_TIMEOUT_SECONDS = 60


class BlobReader(Protocol):
    """Reads of one container's blobs, safe to call from many threads."""

    def read(self, name: str) -> bytes:
        """The whole blob."""
        ...

    def stream(self, name: str, consume: Callable[[bytes], object], length: int) -> int:
        """Hand the blob's first ``length`` bytes to ``consume`` in blocks; the bytes read."""
        ...

    def list_sizes(self, prefix: str) -> Iterator[tuple[str, int]]:
        """(name, size) of every blob whose name starts with ``prefix``."""
        ...

    def size_of(self, name: str) -> int | None:
        """The blob's size (a HEAD); None when it does not exist."""
        ...

    def close(self) -> None: ...


class SdkBlobReader:
    """Reads through ``BlobStorage.download_range`` (the Azure SDK)."""

    def __init__(self, storage: Any, container: str, block_bytes: int = 8 * 1024 * 1024) -> None:
        self._storage = storage
        self._container = container
        self._block = block_bytes

    def read(self, name: str) -> bytes:
        data: bytes = self._storage.download_range(self._container, name)
        return data

    def stream(self, name: str, consume: Callable[[bytes], object], length: int) -> int:
        offset = 0
        while offset < length:
            block = self._storage.download_range(self._container, name, offset, min(self._block, length - offset))
            if not block:
                break
            consume(block)
            offset += len(block)
        return offset

    def list_sizes(self, prefix: str) -> Iterator[tuple[str, int]]:
        for blob in self._storage.list_blobs(self._container, prefix):
            yield blob.name, blob.size

    def size_of(self, name: str) -> int | None:
        try:
            return int(self._storage.properties(self._container, name).size)
        except BlobNotFoundError:
            return None

    def close(self) -> None:
        pass


class HttpBlobReader:
    """Plain GETs of ``{container_url}/{name}``, each thread on its own keep-alive connection
    (``http.client``: half urllib3's Python per request, bench/README.md)."""

    def __init__(
        self,
        container_url: str,
        *,
        query: str = "",
        token: Callable[[], str] | None = None,
        api_version: str,
        verify: str | bool = True,
    ) -> None:
        parts = urlsplit(container_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._container_path = parts.path.rstrip("/")
        self._query = query
        self._token = token
        self._headers = {"x-ms-version": api_version}
        self._tls = _tls_context(verify) if self._https else None
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        connection: http.client.HTTPConnection | None = getattr(self._local, "connection", None)
        if connection is None:
            if self._https:
                connection = http.client.HTTPSConnection(
                    self._host, self._port, timeout=CONNECT_TIMEOUT_SECONDS, context=self._tls
                )
            else:
                connection = http.client.HTTPConnection(self._host, self._port, timeout=CONNECT_TIMEOUT_SECONDS)
            with self._lock:
                self._connections.append(connection)
            self._local.connection = connection
        if connection.sock is None:  # new, or closed by the server after its last response
            connection.connect()
            cast(socket.socket, connection.sock).settimeout(READ_TIMEOUT_SECONDS)
        return connection

    def _drop_connection(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()

    def _target(self, name: str) -> str:
        target = f"{self._container_path}/{quote(name, safe='/~')}"
        return f"{target}?{self._query}" if self._query else target

    def _request(
        self, method: str, target: str, action: str, headers: dict[str, str] | None = None
    ) -> http.client.HTTPResponse:
        """The response of a successful request (its body still to read); a storage error otherwise.
        Connection failures and 500/502/504 are retried RETRIES times (GET and HEAD are idempotent)."""
        headers = {**self._headers, **(headers or {})}
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token()}"
        for attempt in range(RETRIES + 1):
            try:
                connection = self._connection()
                connection.request(method, target, headers=headers)
                response = connection.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                self._drop_connection()
                if attempt == RETRIES:
                    raise StorageUnavailableError(f"{action}: storage unreachable: {exc}") from exc
                time.sleep(RETRY_BACKOFF_SECONDS * attempt)  # at once first: a keep-alive the server closed
                continue
            if response.status < 300:
                return response
            body = self._body(response, action)
            if response.status in {500, 502, 504} and attempt < RETRIES:
                time.sleep(RETRY_BACKOFF_SECONDS * (attempt + 1))
                continue
            _raise_for(response.status, response.headers, body, action)
        raise AssertionError("unreachable")

    def _body(self, response: http.client.HTTPResponse, action: str) -> bytes:
        """The whole body (which frees the connection for the next request)."""
        try:
            return response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            raise StorageUnavailableError(f"{action}: {exc}") from exc

    def read(self, name: str) -> bytes:
        action = f"download {name}"
        return self._body(self._request("GET", self._target(name), action), action)

    def stream(self, name: str, consume: Callable[[bytes], object], length: int) -> int:
        if length <= 0:
            return 0
        action = f"download {name}"
        response = self._request("GET", self._target(name), action, {"Range": f"bytes=0-{length - 1}"})
        total = 0
        try:
            while block := response.read(STREAM_BLOCK_BYTES):
                consume(block)
                total += len(block)
        except (OSError, http.client.HTTPException) as exc:
            self._drop_connection()
            raise StorageUnavailableError(f"{action}: {exc}") from exc
        except BaseException:
            self._drop_connection()  # the rest of the body is still on the connection
            raise
        return total

    def size_of(self, name: str) -> int | None:
        action = f"read properties of {name}"
        try:
            response = self._request("HEAD", self._target(name), action)
        except BlobNotFoundError:
            return None
        self._body(response, action)
        return int(response.headers.get("Content-Length") or 0)

    def list_sizes(self, prefix: str) -> Iterator[tuple[str, int]]:
        """List Blobs pages of LIST_PAGE names, parsed for names and sizes only (the SDK's full
        deserialisation of every property costs more than the request)."""
        action = f"list {prefix or '(all)'}"
        marker = ""
        while True:
            query = {"restype": "container", "comp": "list", "maxresults": str(LIST_PAGE)}
            query.update({"prefix": prefix} if prefix else {})
            query.update({"marker": marker} if marker else {})
            target = f"{self._container_path}?{self._query + '&' if self._query else ''}{urlencode(query)}"
            body = self._body(self._request("GET", target, action), action)
            try:
                root = ElementTree.fromstring(body)  # noqa: S314 - the storage service, as the SDK parses it
            except ElementTree.ParseError as exc:
                raise StorageUnavailableError(f"{action}: {exc}") from exc
            for blob in root.iterfind("Blobs/Blob"):
                name_element = blob.find("Name")
                name = name_element.text or "" if name_element is not None else ""
                if name_element is not None and name_element.get("Encoded") == "true":
                    name = unquote(name)
                yield name, int(blob.findtext("Properties/Content-Length") or 0)
            marker = root.findtext("NextMarker") or ""
            if not marker:
                return

    def close(self) -> None:
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()


def _tls_context(verify: str | bool) -> ssl.SSLContext:
    """TLS as the SDK's transport does it: certifi's roots, a private CA bundle, or no verification."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=verify if isinstance(verify, str) else certifi.where())


def _raise_for(status: int, headers: Any, body: bytes, action: str) -> None:
    code = headers.get("x-ms-error-code") or ""
    what = f"{action}: HTTP {status} {code}".strip()
    if status == 404:
        raise BlobNotFoundError(f"{what}: not found")
    if status == 429 or (status == 503 and code in {"ServerBusy", "OperationTimedOut", ""}):
        raise ThrottlingError(f"{what}: throttled", retry_after=parse_retry_after(headers.get("Retry-After")))
    if status >= 500 or status == 408:
        raise StorageUnavailableError(what)
    text = body.decode("utf-8", "replace")
    detail = (
        text.split("<Message>", 1)[1].split("</Message>", 1)[0].splitlines()[0][:200] if "<Message>" in text else ""
    )
    raise BlobAccessDeniedError(f"{what}: {detail}" if detail else what)


def open_blob_reader(storage: Any, container: str) -> BlobReader:
    """The fastest reader of ``container`` that can be authorised (an SDK one otherwise)."""
    if not isinstance(storage, BlobStorage):
        return SdkBlobReader(storage, container)
    client = storage.client
    container_url, _, query = client.get_container_client(container).url.partition("?")
    credential = client.credential
    common: dict[str, Any] = {"api_version": client.api_version, "verify": storage.account.verify}
    account_key = getattr(credential, "account_key", None)  # the SDK's shared-key policy
    if isinstance(account_key, str) and account_key:
        now = datetime.now(UTC)
        query = generate_container_sas(
            credential.account_name,
            container,
            account_key=account_key,
            permission=ContainerSasPermissions(read=True, list=True),
            start=now - timedelta(minutes=5),  # clock skew
            expiry=now + SAS_LIFETIME,
        )
        return HttpBlobReader(container_url, query=query, **common)
    if credential is None and query:  # the connection string's SAS
        return HttpBlobReader(container_url, query=query, **common)
    if credential is not None and hasattr(credential, "get_token"):
        refreshing = RefreshingToken(
            cast(TokenCredential, credential), STORAGE_SCOPE, min_remaining_seconds=TOKEN_MIN_REMAINING_SECONDS
        )
        return HttpBlobReader(container_url, token=refreshing.get, **common)
    return SdkBlobReader(storage, container)
