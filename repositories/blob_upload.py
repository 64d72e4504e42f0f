"""Block-blob uploads: block ids, and uploading a file while another library is still writing it.

GDAL's COG driver appends its output front to back and, when it closes the file, seeks back to
rewrite the first few KiB (TIFF header, tile offsets). ``GrowingFileUpload`` stages (Put Block)
each block as soon as the file has grown well past it, so that after the writer closes only the
tail and the blocks that changed remain to send. Correctness never depends on guessing what the
writer will still change: at commit the final file is read once and every block whose digest
(BLAKE2b, not a CRC: a CRC collision would commit stale bytes) differs from what was staged is
staged again before the block list is committed.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from azure.storage.blob import BlobBlock, BlobClient, ContentSettings

logger = logging.getLogger(__name__)

# Names of the poller and stager threads (tests check none outlives its upload).
THREAD_NAME_PREFIX = "growing-upload"
POLL_SECONDS = 0.05
_MIB = 1024 * 1024
# The first block is at most this big: COG writers rewrite the header at close, and re-sending a
# small head block instead of a whole ``block_bytes`` one is what keeps the commit short.
HEAD_BLOCK_BYTES = 1 * _MIB
# Blocks of a growing file are at most this big, whatever the storage's block size: what is left to
# send when the writer closes is the last block, the margin and the head, so small blocks keep the
# commit short (Put Block costs the service the same per byte at 4 and at 64 MiB: bench/README.md).
GROWING_BLOCK_BYTES = 4 * _MIB
# A block is staged while writing once the file extends this far past it (at most one block).
# Writers only append until they close, so bytes below the size are final; the margin keeps reads
# clear of a write still in progress. A wrong guess costs one re-staged block, never correctness.
MARGIN_BYTES = 1 * _MIB
_COUNTER_DIGITS = 6


@dataclass(frozen=True)
class UploadedBlob:
    container: str
    name: str
    size: int
    sha256: str  # hex digest of the uploaded bytes

    def as_output(self) -> dict[str, Any]:
        return {"container": self.container, "blob": self.name, "bytes": self.size, "sha256": self.sha256}


def new_upload_nonce() -> str:
    """8 random URL-safe characters (48 bits), unique to one upload attempt."""
    return secrets.token_urlsafe(6)


def block_id(nonce: str, number: int) -> str:
    """Base64 id of an upload's ``number``-th staged block.

    Uncommitted blocks are kept per blob *name*, so two uploads of one name at once (a zombie task
    and its retry) would replace each other's blocks if ids were just indexes; the per-upload nonce
    keeps them apart, and a commit then fails instead of mixing bytes. Ids are 14 bytes before
    encoding, as before nonces, because the service rejects ids of different lengths on one blob.
    """
    if not 0 <= number < 10**_COUNTER_DIGITS:
        raise ValueError(f"block number {number} out of range")
    return base64.b64encode(f"{nonce}{number:0{_COUNTER_DIGITS}d}".encode()).decode()


def block_digest(data: bytes) -> bytes:
    """What decides whether a block changed since it was staged: a cryptographic digest, so two
    different blocks never compare equal (a CRC32 collision is easy to make, even by accident)."""
    return hashlib.blake2b(data, digest_size=32).digest()


@dataclass(frozen=True)
class _Staged:
    block_id: str
    digest: bytes
    length: int


Guarded = Callable[[str], AbstractContextManager[None]]


class GrowingFileUpload:
    """Uploads ``path`` to one block blob while it is written; see ``BlobStorage.upload_while_written``.

    Blocks: a head block of ``min(block_bytes, HEAD_BLOCK_BYTES)``, then ``min(block_bytes,
    GROWING_BLOCK_BYTES)`` each.
    Counts, set as blocks go: ``staged_while_writing`` (sent before ``commit``), ``staged_at_commit``
    (sent by ``commit``; 1 for the single Put Blob of a file of at most that block size), of which
    ``restaged`` had been sent while writing and then changed.
    """

    def __init__(
        self,
        blob: BlobClient,
        path: Path,
        *,
        content_type: str,
        block_bytes: int,
        concurrency: int,
        guarded: Guarded,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._blob, self._path, self._content_type = blob, path, content_type
        self._block_bytes = min(block_bytes, GROWING_BLOCK_BYTES)
        self._head_bytes = min(block_bytes, HEAD_BLOCK_BYTES)
        self._margin_bytes = min(block_bytes, MARGIN_BYTES)
        self._guarded, self._poll_seconds = guarded, poll_seconds
        self._nonce = new_upload_nonce()
        self._numbers = 0  # Put Block calls so far: each gets a fresh id, so no call replaces another
        self._staged: dict[int, _Staged] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()  # the poller stops (commit or close)
        self._abandon = threading.Event()  # queued stages are skipped (close)
        # Stage calls in flight (background and commit together): bounds memory to that many blocks.
        self._slots = threading.Semaphore(concurrency)
        self._in_flight: dict[int, Future[None]] = {}  # background stages by block index
        self.background_error: BaseException | None = None  # the first, re-raised by commit()
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix=f"{THREAD_NAME_PREFIX}-stage")
        self._poller = threading.Thread(target=self._poll, name=f"{THREAD_NAME_PREFIX}-poll", daemon=True)
        self._finished = False  # commit() or close() was called
        self.committed = False
        self.staged_while_writing = 0
        self.staged_at_commit = 0
        self.restaged = 0

    def start(self) -> None:
        self._poller.start()

    def _span(self, index: int) -> tuple[int, int]:
        """Offset and length of block ``index``."""
        if index == 0:
            return 0, self._head_bytes
        return self._head_bytes + (index - 1) * self._block_bytes, self._block_bytes

    # --- background ------------------------------------------------------------------------

    def _poll(self) -> None:
        """Every ``poll_seconds``, hand the blocks the file has grown past to the stager threads."""
        index = 0
        while not self._stop.wait(self._poll_seconds) and self.background_error is None:
            try:
                size = self._path.stat().st_size
            except FileNotFoundError:
                continue  # not created yet (or being replaced): look again next time
            except OSError as exc:
                self._fail(exc)
                return
            while sum(self._span(index)) + self._margin_bytes <= size and self._slots.acquire(blocking=False):
                self._in_flight[index] = self._pool.submit(self._stage_job, index)
                index += 1

    def _stage_job(self, index: int, data: bytes | None = None) -> None:
        """Stage block ``index``: ``data`` at commit, else read from the file as it is written."""
        try:
            while_writing = data is None
            if data is None:
                if self._abandon.is_set() or self.background_error is not None:
                    return
                offset, length = self._span(index)
                with self._path.open("rb") as source:
                    source.seek(offset)
                    if len(data := source.read(length)) < length:
                        return  # the file shrank: commit sends this block
            self._stage(index, data)
            with self._lock:
                self.staged_while_writing += while_writing
        except FileNotFoundError:
            pass  # replaced under us; commit reads the final file anyway
        except BaseException as exc:
            self._fail(exc)
        finally:
            self._slots.release()

    def _stage(self, index: int, data: bytes) -> None:
        with self._lock:
            number, self._numbers = self._numbers, self._numbers + 1
        staged = _Staged(block_id(self._nonce, number), block_digest(data), len(data))
        with self._guarded("stage block of"):
            self._blob.stage_block(staged.block_id, data, length=len(data))
        with self._lock:
            self._staged[index] = staged

    def _fail(self, exc: BaseException) -> None:
        with self._lock:
            if self.background_error is None:
                self.background_error = exc
        logger.debug("staging a block of %s failed: %s", self._blob.blob_name, exc)

    def _raise_if_failed(self) -> None:
        if self.background_error is not None:
            raise self.background_error

    def _settle(self, *, stages: bool = True) -> None:
        """Stop polling and, with ``stages``, wait for the background stages (they cannot be interrupted)."""
        self._stop.set()
        if self._poller.ident is not None:
            self._poller.join()
        if stages:
            wait(list(self._in_flight.values()))

    # --- commit and close ------------------------------------------------------------------

    def commit(self) -> UploadedBlob:
        """Send what the final file changed or added, commit it as the blob, return ``UploadedBlob``.

        Call once the writer has closed the file. It is read once, front to back, while the last
        background stages finish. Blocks staged for offsets past the final size are left out of
        the block list (the service discards uncommitted blocks on commit).
        """
        if self._finished:
            raise RuntimeError("commit() may be called once, inside the upload_while_written block")
        self._finished = True
        self._settle(stages=False)  # the file is read while the last background stages finish
        self._raise_if_failed()
        try:
            source = self._path.open("rb")
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"cannot commit {self._blob.container_name}/{self._blob.blob_name}: "
                f"the local file {self._path} does not exist (the writer did not create it or removed it)"
            ) from exc
        with source:
            if os.fstat(source.fileno()).st_size <= self._block_bytes:
                uploaded = self._put_whole(source.read())
            else:
                uploaded = self._commit_blocks(source)
        self.committed = True
        logger.debug(
            "uploaded %s/%s (%d bytes): %d blocks staged while written, %d at commit (%d changed)",
            uploaded.container, uploaded.name, uploaded.size,
            self.staged_while_writing, self.staged_at_commit, self.restaged,
        )  # fmt: skip
        return uploaded

    def _put_whole(self, data: bytes) -> UploadedBlob:
        self._settle()
        self._raise_if_failed()
        with self._guarded("upload"):
            self._blob.upload_blob(data, overwrite=True, content_settings=ContentSettings(self._content_type))
        self.staged_at_commit = 1
        return self._uploaded(len(data), hashlib.sha256(data).hexdigest())

    def _commit_blocks(self, source: BinaryIO) -> UploadedBlob:
        digest, size, index = hashlib.sha256(), 0, 0
        at_commit: list[Future[None]] = []
        # Blocks a background stage is still sending are compared once it is done, so the tail
        # is staged meanwhile instead of queueing behind them.
        deferred: list[tuple[int, bytes, int]] = []
        # The file's SHA-256 is computed in a thread of its own while this one digests the blocks
        # (both release the GIL): two passes over the file at the time of one, a block ahead at most.
        with ThreadPoolExecutor(1, thread_name_prefix=f"{THREAD_NAME_PREFIX}-sha256") as hasher:
            hashed: Future[None] | None = None
            while data := source.read(self._span(index)[1]):
                if hashed is not None:
                    hashed.result()
                hashed = hasher.submit(digest.update, data)
                size += len(data)
                background = self._in_flight.get(index)
                if background is not None and not background.done():
                    deferred.append((index, block_digest(data), len(data)))
                else:
                    self._stage_if_changed(index, data, block_digest(data), at_commit)
                index += 1
            if hashed is not None:
                hashed.result()
        self._settle()
        for late, digest_then, length in deferred:
            if self._changed(late, digest_then, length):  # rare: re-read just that block
                data = os.pread(source.fileno(), length, self._span(late)[0])
                self._stage_if_changed(late, data, block_digest(data), at_commit)
        wait(at_commit)
        self._raise_if_failed()
        blocks = [BlobBlock(block_id=self._staged[i].block_id) for i in range(index)]
        with self._guarded("commit block list of"):
            self._blob.commit_block_list(blocks, content_settings=ContentSettings(self._content_type))
        return self._uploaded(size, digest.hexdigest())

    def _changed(self, index: int, digest: bytes, length: int) -> bool:
        with self._lock:
            before = self._staged.get(index)
        return before is None or (before.digest, before.length) != (digest, length)

    def _stage_if_changed(self, index: int, data: bytes, digest: bytes, jobs: list[Future[None]]) -> None:
        self._raise_if_failed()
        if self._changed(index, digest, len(data)):
            self.staged_at_commit += 1
            self.restaged += index in self._staged
            self._slots.acquire()
            jobs.append(self._pool.submit(self._stage_job, index, data))

    def _uploaded(self, size: int, sha256: str) -> UploadedBlob:
        return UploadedBlob(self._blob.container_name, self._blob.blob_name, size, sha256)

    def close(self) -> None:
        """Stop and join every thread of this upload; commits nothing itself. Safe to call twice."""
        self._finished = True
        self._abandon.set()
        self._settle()
        self._pool.shutdown(wait=True, cancel_futures=True)
