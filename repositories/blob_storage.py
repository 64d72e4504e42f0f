"""Blob access: uploads from file in blocks, range downloads, listing, and GDAL ``/vsiaz/`` access.

Azure SDK errors are translated at this boundary (like ``repositories/database.py`` does for
Postgres): a missing container or blob → ``BlobNotFoundError`` (permanent); 429 and 503
ServerBusy → ``ThrottlingError`` with the service's Retry-After; other 5xx, timeouts and
connection failures → ``StorageUnavailableError`` (transient); other 4xx → ``BlobAccessDeniedError``
(permanent). The SDK's own retry policy runs first, so these are what is left after it.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pybreaker
import rasterio
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.storage.blob import BlobBlock, BlobServiceClient, ContentSettings, LinearRetry

from repositories.blob_upload import GrowingFileUpload, UploadedBlob, block_id, new_upload_nonce
from repositories.storage_account import StorageAccount, gdal_connection_string
from schemas.errors import (
    BlobAccessDeniedError,
    BlobNotFoundError,
    BlobWriteConflictError,
    StorageUnavailableError,
    ThrottlingError,
)
from services.engine.error_classification import parse_retry_after

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
# GDAL reads /vsiaz/ in chunks of this size: fewer, larger range requests (a 16 KiB default makes
# a 400 MB read ~4x slower against Azurite and costs one request per 16 KiB on Azure).
GDAL_READ_CHUNK_BYTES = 4 * MIB

# The SDK's default retry policy (its own ExponentialRetry, which ignores ``retry_backoff_factor``)
# sleeps 15, 18 and 24 s between attempts: during an outage a caller would wait over a minute for an
# error. Our callers retry at their own level (tasks with backoff, HTTP clients after a 503), so the
# SDK retries briefly: a refused connection fails in ~2 s, an unanswered one in ~8 s.
STORAGE_RETRY_TOTAL = 2
STORAGE_RETRY_BACKOFF_SECONDS = 1
STORAGE_CONNECT_TIMEOUT_SECONDS = 2


def storage_client_options() -> dict[str, Any]:
    """Retry policy and timeouts for the storage SDK clients this app builds."""
    return {
        "retry_policy": LinearRetry(
            backoff=STORAGE_RETRY_BACKOFF_SECONDS, random_jitter_range=0, retry_total=STORAGE_RETRY_TOTAL
        ),
        "connection_timeout": STORAGE_CONNECT_TIMEOUT_SECONDS,
    }


@dataclass(frozen=True)
class BlobInfo:
    container: str
    name: str
    size: int
    etag: str
    last_modified: datetime | None
    content_type: str | None


def _error_code(exc: HttpResponseError) -> str | None:
    return getattr(exc, "error_code", None)


def _describe(exc: HttpResponseError) -> str:
    lines = str(exc.message or exc).splitlines()
    return f"HTTP {exc.status_code} {_error_code(exc) or ''}: {lines[0] if lines else ''}".strip()


# A commit whose staged blocks another upload of the same blob discarded (its commit won); retrying
# the whole write succeeds, so this is transient, yet no sign of a storage outage.
_WRITE_CONFLICT_CODES = frozenset({"InvalidBlockList"})


@contextmanager
def _translated(action: str, container: str, name: str | None = None) -> Iterator[None]:
    """Translate Azure SDK errors raised inside the block into geoetl's error types."""
    target = f"{container}/{name}" if name else f"container {container}"
    try:
        yield
    except ResourceNotFoundError as exc:
        missing = f"container {container}" if name is None or _error_code(exc) == "ContainerNotFound" else target
        raise BlobNotFoundError(f"{action}: {missing} not found") from exc
    except HttpResponseError as exc:
        status = exc.status_code or 0
        if status == 429 or (status == 503 and _error_code(exc) in {"ServerBusy", "OperationTimedOut", None}):
            headers = getattr(exc.response, "headers", None) or {}
            retry_after = parse_retry_after(headers.get("Retry-After"))
            raise ThrottlingError(f"{action} {target}: throttled ({_describe(exc)})", retry_after=retry_after) from exc
        if status >= 500 or status in {408, 0}:
            raise StorageUnavailableError(f"{action} {target}: {_describe(exc)}") from exc
        if _error_code(exc) in _WRITE_CONFLICT_CODES:
            conflict = f"{action} {target}: another write got there first ({_describe(exc)})"
            raise BlobWriteConflictError(conflict) from exc
        raise BlobAccessDeniedError(f"{action} {target}: {_describe(exc)}") from exc
    except (ServiceRequestError, ServiceResponseError, ConnectionError, TimeoutError) as exc:
        raise StorageUnavailableError(f"{action} {target}: storage unreachable: {exc}") from exc


def _blob_info(container: str, item: Any) -> BlobInfo:
    return BlobInfo(
        container=container,
        name=item.name,
        size=int(item.size),
        etag=str(item.etag),
        last_modified=item.last_modified,
        content_type=item.content_settings.content_type if item.content_settings else None,
    )


__all__ = ["BlobInfo", "BlobStorage", "gdal_connection_string", "storage_client_options"]


class BlobStorage:
    """The blobs of one storage account (a ``StorageAccount``, or a connection string for local tools)."""

    def __init__(
        self,
        account: StorageAccount | str,
        *,
        upload_block_bytes: int = 16 * MIB,
        upload_concurrency: int = 4,
        breaker: pybreaker.CircuitBreaker | None = None,
    ) -> None:
        # Counts storage outages (translated to StorageUnavailableError / ThrottlingError); while
        # open, blob calls fail fast with StorageUnavailableError (transient).
        self._breaker = breaker
        if upload_block_bytes < 1 or upload_concurrency < 1:
            raise ValueError("upload_block_bytes and upload_concurrency must be positive")
        self._account = StorageAccount.of(account)
        self._upload_block_bytes = upload_block_bytes
        self._upload_concurrency = upload_concurrency
        self._client: BlobServiceClient | None = None
        self._lock = threading.Lock()

    @contextmanager
    def _guarded(self, action: str, container: str, name: str | None = None) -> Iterator[None]:
        """Translate SDK errors inside the block, through the storage circuit breaker if any."""
        if self._breaker is None:
            with _translated(action, container, name):
                yield
            return
        try:
            with self._breaker.calling(), _translated(action, container, name):
                yield
        except pybreaker.CircuitBreakerError as exc:
            raise StorageUnavailableError(f"{action} {container}: storage circuit open") from exc

    @property
    def upload_buffer_bytes(self) -> int:
        """Most memory ``upload_file`` and ``upload_while_written`` hold: the blocks in flight."""
        return self._upload_block_bytes * self._upload_concurrency

    @property
    def account(self) -> StorageAccount:
        """The storage account these blobs are in (how it is reached and authorised)."""
        return self._account

    @property
    def client(self) -> BlobServiceClient:
        with self._lock:
            if self._client is None:
                self._client = self._account.blob_service_client(**storage_client_options())
            return self._client

    # --- containers and properties ------------------------------------------------------------

    def ensure_container(self, container: str) -> None:
        with self._guarded("create container", container), suppress(ResourceExistsError):
            self.client.create_container(container)

    def properties(self, container: str, name: str) -> BlobInfo:
        with self._guarded("read properties of", container, name):
            props = self.client.get_blob_client(container, name).get_blob_properties()
        return BlobInfo(
            container=container,
            name=name,
            size=int(props.size),
            etag=str(props.etag),
            last_modified=props.last_modified,
            content_type=props.content_settings.content_type if props.content_settings else None,
        )

    def exists(self, container: str, name: str) -> bool:
        try:
            self.properties(container, name)
        except BlobNotFoundError:
            return False
        return True

    def list_blobs(self, container: str, prefix: str = "") -> Iterator[BlobInfo]:
        with self._guarded("list", container):
            for item in self.client.get_container_client(container).list_blobs(name_starts_with=prefix or None):
                yield _blob_info(container, item)

    def list_blob_page(
        self, container: str, *, prefix: str = "", limit: int = 100, continuation: str | None = None
    ) -> tuple[list[BlobInfo], str | None]:
        """One page of at most ``limit`` blobs and the storage continuation token of the next."""
        with self._guarded("list", container):
            pages = (
                self.client.get_container_client(container)
                .list_blobs(name_starts_with=prefix or None, results_per_page=limit)
                .by_page(continuation_token=continuation)
            )
            page = [_blob_info(container, item) for item in next(pages, [])]
            token: str | None = getattr(pages, "continuation_token", None)  # set once a page was read
            return page, token or None

    def list_containers(self) -> list[str]:
        with self._guarded("list containers", "(account)"):
            return sorted(c.name for c in self.client.list_containers())

    def delete(self, container: str, name: str) -> bool:
        """Delete a blob (and its snapshots); False when it did not exist."""
        try:
            with self._guarded("delete", container, name):
                self.client.get_blob_client(container, name).delete_blob(delete_snapshots="include")
        except BlobNotFoundError:
            return False
        return True

    # --- reads -----------------------------------------------------------------------------

    def download_range(self, container: str, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """Bytes ``[offset, offset + length)`` of a blob (to its end when ``length`` is None)."""
        with self._guarded("download", container, name):
            stream = self.client.get_blob_client(container, name).download_blob(offset=offset, length=length)
            return stream.readall()

    # --- writes ----------------------------------------------------------------------------

    def upload_bytes(self, container: str, name: str, data: bytes, *, content_type: str) -> UploadedBlob:
        """Write (or overwrite) a small blob in one request."""
        with self._guarded("upload", container, name):
            self.client.get_blob_client(container, name).upload_blob(
                data, overwrite=True, content_settings=ContentSettings(content_type=content_type)
            )
        return UploadedBlob(container, name, len(data), hashlib.sha256(data).hexdigest())

    def upload_file(self, container: str, name: str, path: Path, *, content_type: str) -> UploadedBlob:
        """Write (or overwrite) a blob from a local file, reading it once in blocks.

        Blocks are hashed in order while up to ``upload_concurrency`` of them are in flight, so
        memory stays at ``upload_block_bytes * upload_concurrency`` whatever the file size. The
        blob appears (or is replaced) atomically when the block list is committed.
        """
        size = path.stat().st_size
        if size <= self._upload_block_bytes:
            return self.upload_bytes(container, name, path.read_bytes(), content_type=content_type)
        blob = self.client.get_blob_client(container, name)
        digest = hashlib.sha256()
        nonce = new_upload_nonce()  # see block_id: concurrent uploads of one name stay apart
        block_ids: list[BlobBlock] = []
        with (
            self._guarded("upload", container, name),
            ThreadPoolExecutor(self._upload_concurrency, thread_name_prefix="blob-upload") as pool,
            path.open("rb") as source,
        ):
            in_flight: list[Future[Any]] = []
            while block := source.read(self._upload_block_bytes):
                digest.update(block)
                staged_id = block_id(nonce, len(block_ids))
                block_ids.append(BlobBlock(block_id=staged_id))
                in_flight.append(pool.submit(blob.stage_block, staged_id, block, length=len(block)))
                if len(in_flight) >= self._upload_concurrency:
                    in_flight.pop(0).result()
            for future in in_flight:
                future.result()
            blob.commit_block_list(block_ids, content_settings=ContentSettings(content_type=content_type))
        return UploadedBlob(container, name, size, digest.hexdigest())

    @contextmanager
    def upload_while_written(
        self, container: str, name: str, path: Path, *, content_type: str
    ) -> Iterator[GrowingFileUpload]:
        """Upload ``path`` to a blob while another library writes it; ``commit()`` once it is closed.

        ::

            with storage.upload_while_written("silver", "cogs/a.tif", path, content_type=...) as upload:
                write(path)  # may create the file later, from other threads
                uploaded = upload.commit()

        A background thread stages each block (a small head block, then ``upload_block_bytes``
        ones) once the file has grown a margin past it, at most ``upload_concurrency`` at a time
        (that much memory). ``commit()`` reads the final file once, hashes it, re-stages the blocks
        that changed (a COG's header), stages the rest and commits the block list: only then does
        the blob appear or change. ``upload.staged_while_writing``, ``staged_at_commit`` and
        ``restaged`` count the blocks sent.
        Leaving the block without ``commit()`` (an exception, say) commits nothing and leaves an
        existing blob as it was; the threads are joined before the block is left either way.
        """
        upload = GrowingFileUpload(
            self.client.get_blob_client(container, name),
            path,
            content_type=content_type,
            block_bytes=self._upload_block_bytes,
            concurrency=self._upload_concurrency,
            guarded=lambda action: self._guarded(action, container, name),
        )
        upload.start()
        failed = True
        try:
            yield upload
            failed = False
        finally:
            upload.close()
            if not failed and not upload.committed:
                logger.warning("upload of %s/%s left without commit(): nothing was uploaded", container, name)

    # --- GDAL -------------------------------------------------------------------------------

    @staticmethod
    def vsiaz_path(container: str, name: str) -> str:
        """The GDAL virtual path of a blob, read in place with HTTP range requests."""
        return f"/vsiaz/{container}/{name}"

    @contextmanager
    def gdal_env(self, **extra: str) -> Iterator[None]:
        """``rasterio.Env`` for /vsiaz/ access to this account (plus ``extra`` GDAL options), through the
        storage circuit breaker: a storage outage raised from the block (callers translate GDAL's
        errors into ``StorageUnavailableError``) counts toward it, and while it is open the block
        fails fast with ``StorageUnavailableError`` instead of GDAL retrying a dead endpoint."""
        if self._breaker is None:
            with rasterio.Env(**self.gdal_options(), **extra):
                yield
            return
        try:
            with self._breaker.calling(), rasterio.Env(**self.gdal_options(), **extra):
                yield
        except pybreaker.CircuitBreakerError as exc:
            raise StorageUnavailableError("GDAL /vsiaz/ access: storage circuit open") from exc

    def gdal_options(self) -> dict[str, str]:
        """GDAL configuration options for /vsiaz/ access to this account (pass to ``rasterio.Env``)."""
        return {
            **self._account.gdal_options(),  # connection string, or account + endpoint + bearer token
            # Do not list the container looking for sidecar files (.aux.xml, .ovr, .msk).
            "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
            "CPL_VSIL_CURL_CHUNK_SIZE": str(GDAL_READ_CHUNK_BYTES),
            # No process-wide cache of blob sizes and bytes: a blob replaced under the same name
            # (a fixed input resubmitted, a re-run overwriting an output) is always read afresh.
            "CPL_VSIL_CURL_NON_CACHED": "/vsiaz/",
            # GDAL retries 429/5xx itself with backoff before reporting an error.
            "GDAL_HTTP_MAX_RETRY": "4",
            "GDAL_HTTP_RETRY_DELAY": "1",
        }
