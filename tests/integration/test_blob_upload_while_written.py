"""BlobStorage.upload_while_written on real Azurite: blocks staged while a writer appends, changed
blocks re-staged at commit, nothing committed when the block is left without commit()."""

from __future__ import annotations

import base64
import hashlib
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from azure.storage.blob import BlobClient

from repositories.blob_storage import BlobStorage, UploadedBlob
from repositories.blob_upload import THREAD_NAME_PREFIX, block_id, new_upload_nonce
from schemas.errors import BlobNotFoundError, BlobWriteConflictError

pytestmark = pytest.mark.integration

BLOCK = 64 * 1024
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


@pytest.fixture(scope="module")
def storage(azurite_connection_string: str) -> BlobStorage:
    return BlobStorage(azurite_connection_string, upload_block_bytes=BLOCK, upload_concurrency=3)


@pytest.fixture(scope="module")
def container(storage: BlobStorage) -> str:
    name = f"growing-{secrets.token_hex(4)}"
    storage.ensure_container(name)
    return name


@pytest.fixture
def name() -> Iterator[str]:
    yield f"cogs/{secrets.token_hex(4)}/tile_r0_c0.tif"
    assert not uploader_threads()  # no test leaves a poller or stager behind


def uploader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME_PREFIX)]


def payload(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the uploader"
        time.sleep(0.01)


def append_in_chunks(target: BinaryIO, data: bytes, chunk: int = 16 * 1024) -> None:
    for start in range(0, len(data), chunk):
        target.write(data[start : start + chunk])
        target.flush()
        time.sleep(0.002)


def in_thread(work: Callable[[], None]) -> None:
    """Run ``work`` in another thread, as GDAL would, and re-raise what it raised."""
    with ThreadPoolExecutor(1) as writer:
        writer.submit(work).result(timeout=10)


def download(storage: BlobStorage, container: str, name: str) -> bytes:
    # Not download_range: it asks for a range, which Azurite answers with 416 for an empty blob.
    return storage.client.get_blob_client(container, name).download_blob().readall()


def assert_blob_is(storage: BlobStorage, container: str, name: str, uploaded: UploadedBlob, final: bytes) -> None:
    assert uploaded == UploadedBlob(container, name, len(final), hashlib.sha256(final).hexdigest())
    assert download(storage, container, name) == final
    info = storage.properties(container, name)
    assert info.size == len(final) and info.content_type == COG


def test_blocks_are_staged_while_written_and_changed_ones_again(
    storage: BlobStorage, container: str, name: str, tmp_path: Path
) -> None:
    path = tmp_path / "tile.tif"
    data = payload(10 * BLOCK + BLOCK // 2, seed=1)  # blocks 0..9 full, block 10 partial
    with storage.upload_while_written(container, name, path, content_type=COG) as upload:

        def write() -> None:
            time.sleep(0.1)  # the file does not exist yet when the upload starts
            with path.open("wb") as target:
                append_in_chunks(target, data)
                # Blocks 0..8 end at least one block before the end of the file; 9 and 10 do not.
                wait_until(lambda: upload.staged_while_writing >= 9)
                target.seek(100)  # the "header" rewrite...
                target.write(b"H" * 300)
                target.seek(4 * BLOCK + 10)  # ...and a patch in a middle block
                target.write(b"M" * 50)

        in_thread(write)
        assert not storage.exists(container, name)  # nothing is visible before commit
        uploaded = upload.commit()
    final = path.read_bytes()
    assert final != data
    assert_blob_is(storage, container, name, uploaded, final)
    assert (upload.staged_while_writing, upload.staged_at_commit, upload.restaged) == (9, 4, 2)
    committed, _ = storage.client.get_blob_client(container, name).get_block_list("committed")
    assert [block.size for block in committed] == [BLOCK] * 10 + [BLOCK // 2]


def test_a_file_that_shrank_commits_only_its_final_blocks(
    storage: BlobStorage, container: str, name: str, tmp_path: Path
) -> None:
    path = tmp_path / "tile.tif"
    with storage.upload_while_written(container, name, path, content_type=COG) as upload:

        def write() -> None:
            with path.open("wb") as target:
                append_in_chunks(target, payload(8 * BLOCK, seed=2))
                wait_until(lambda: upload.staged_while_writing >= 7)  # blocks 0..6
                target.truncate(3 * BLOCK + 1000)

        in_thread(write)
        uploaded = upload.commit()
    assert_blob_is(storage, container, name, uploaded, path.read_bytes())
    # Blocks 0..2 were sent once; block 3 again (shorter); blocks 4..6 were staged but not committed.
    assert (upload.staged_while_writing, upload.staged_at_commit, upload.restaged) == (7, 1, 1)
    committed, _ = storage.client.get_blob_client(container, name).get_block_list("committed")
    assert [block.size for block in committed] == [BLOCK] * 3 + [1000]


def test_a_block_changed_while_its_stage_was_in_flight_is_sent_again(
    storage: BlobStorage, container: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first two Put Block calls (blocks 0 and 1, read while writing) are held back until after
    # the writer has changed block 1 and commit() has started: commit must not trust them blindly.
    stage_block, entered, release = BlobClient.stage_block, threading.Semaphore(0), threading.Event()
    held = iter(range(2))

    def slow_stage_block(self: BlobClient, *args: Any, **kwargs: Any) -> Any:
        if next(held, None) is not None:
            entered.release()
            release.wait(timeout=10)
        return stage_block(self, *args, **kwargs)

    monkeypatch.setattr(BlobClient, "stage_block", slow_stage_block)
    path = tmp_path / "tile.tif"
    with storage.upload_while_written(container, name, path, content_type=COG) as upload:
        with path.open("wb") as target:
            target.write(payload(3 * BLOCK, seed=9))
            target.flush()
            for _ in range(2):
                assert entered.acquire(timeout=10)  # blocks 0 and 1 were read and are being sent
            target.seek(BLOCK + 5)
            target.write(b"changed after it was read")
        threading.Timer(0.2, release.set).start()
        uploaded = upload.commit()
    assert_blob_is(storage, container, name, uploaded, path.read_bytes())
    # Block 2 is new at commit; block 1 is sent again because it changed after it was read.
    assert (upload.staged_while_writing, upload.staged_at_commit, upload.restaged) == (2, 2, 1)


@pytest.mark.parametrize(("size", "sent_at_commit"), [(0, 1), (1000, 1), (BLOCK, 1), (BLOCK + 1, 2)])
def test_small_and_empty_files(
    storage: BlobStorage, container: str, name: str, tmp_path: Path, size: int, sent_at_commit: int
) -> None:
    path = tmp_path / "tile.tif"
    with storage.upload_while_written(container, name, path, content_type=COG) as upload:
        path.write_bytes(payload(size, seed=size))
        uploaded = upload.commit()
    assert_blob_is(storage, container, name, uploaded, path.read_bytes())
    assert (upload.staged_while_writing, upload.staged_at_commit, upload.restaged) == (0, sent_at_commit, 0)


def test_an_error_inside_the_block_leaves_the_existing_blob_alone(
    storage: BlobStorage, container: str, name: str, tmp_path: Path
) -> None:
    path = tmp_path / "tile.tif"
    storage.upload_bytes(container, name, b"previous output", content_type="text/plain")
    before = storage.properties(container, name)
    with (
        pytest.raises(RuntimeError, match="invalid COG"),
        storage.upload_while_written(container, name, path, content_type=COG) as upload,
    ):
        path.write_bytes(payload(6 * BLOCK, seed=3))
        wait_until(lambda: upload.staged_while_writing >= 5)  # blocks 0..4
        raise RuntimeError("invalid COG")
    assert not uploader_threads()
    assert storage.download_range(container, name) == b"previous output"
    assert storage.properties(container, name) == before
    blob = storage.client.get_blob_client(container, name)
    assert len(blob.get_block_list("uncommitted")[1]) == 5  # staged, never committed
    # The next attempt's blocks are not confused with the abandoned ones.
    retried = payload(5 * BLOCK + 7, seed=4)
    path.write_bytes(retried)
    assert storage.upload_file(container, name, path, content_type=COG).size == len(retried)
    assert storage.download_range(container, name) == retried


def test_leaving_without_commit_commits_nothing(
    storage: BlobStorage, container: str, name: str, tmp_path: Path
) -> None:
    path = tmp_path / "tile.tif"
    with storage.upload_while_written(container, name, path, content_type=COG) as upload:
        path.write_bytes(payload(4 * BLOCK, seed=5))
        wait_until(lambda: upload.staged_while_writing >= 3)
    assert not uploader_threads()
    assert not storage.exists(container, name)


def test_a_missing_file_at_commit_is_a_clear_error(
    storage: BlobStorage, container: str, name: str, tmp_path: Path
) -> None:
    path = tmp_path / "never-written.tif"
    with (
        pytest.raises(FileNotFoundError, match=f"{name}: the local file {path} does not exist"),
        storage.upload_while_written(container, name, path, content_type=COG) as upload,
    ):
        time.sleep(0.2)  # the poller finds nothing and waits (no busy loop)
        upload.commit()
    assert not storage.exists(container, name)


def test_a_background_error_is_raised_translated_by_commit(storage: BlobStorage, name: str, tmp_path: Path) -> None:
    path = tmp_path / "tile.tif"
    missing = f"missing-{secrets.token_hex(4)}"
    with storage.upload_while_written(missing, name, path, content_type=COG) as upload:
        path.write_bytes(payload(3 * BLOCK, seed=6))
        wait_until(lambda: upload.background_error is not None)
        with pytest.raises(BlobNotFoundError, match=f"container {missing} not found"):
            upload.commit()


def test_concurrent_uploads_of_one_name_do_not_replace_each_others_blocks(
    storage: BlobStorage, container: str, name: str, tmp_path: Path
) -> None:
    first, second = tmp_path / "first.tif", tmp_path / "second.tif"
    with (
        storage.upload_while_written(container, name, first, content_type=COG) as zombie,
        storage.upload_while_written(container, name, second, content_type=COG) as retry,
    ):
        first.write_bytes(payload(4 * BLOCK, seed=7))
        wait_until(lambda: zombie.staged_while_writing >= 3)
        second.write_bytes(payload(4 * BLOCK, seed=8))  # same block indexes, staged afterwards
        wait_until(lambda: retry.staged_while_writing >= 3)
        uploaded = zombie.commit()
        assert storage.download_range(container, name) == first.read_bytes()  # not a mix
        # The other commit discarded this upload's uncommitted blocks: its commit fails, never mixes.
        with pytest.raises(BlobWriteConflictError, match="another write got there first"):
            retry.commit()
    assert uploaded.sha256 == hashlib.sha256(first.read_bytes()).hexdigest()
    assert storage.download_range(container, name) == first.read_bytes()


def test_block_ids_are_equal_length_base64_with_a_nonce_per_upload() -> None:
    nonces = {new_upload_nonce() for _ in range(100)}
    assert len(nonces) == 100
    ids = [block_id(nonce, number) for nonce in nonces for number in (0, 7, 999_999)]
    assert {len(base64.b64decode(i)) for i in ids} == {14}  # the length ids had before nonces
    with pytest.raises(ValueError, match="out of range"):
        block_id(new_upload_nonce(), 1_000_000)
