"""Upload while written (repositories/blob_upload.py) on real Azurite: a block the writer changed
after it was staged is sent again even when the new bytes have the same CRC32 as the old ones."""

from __future__ import annotations

import hashlib
import random
import secrets
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from repositories.blob_storage import BlobStorage
from repositories.blob_upload import THREAD_NAME_PREFIX

pytestmark = pytest.mark.integration

BLOCK = 64 * 1024
COG = "image/tiff; application=geotiff; profile=cloud-optimized"


def force_crc32(prefix: bytes, target: int) -> bytes:
    """4 bytes that make ``prefix + them`` have CRC32 ``target`` (CRC32 is affine over GF(2))."""
    base = zlib.crc32(prefix + bytes(4))
    columns = [zlib.crc32(prefix + (1 << bit).to_bytes(4, "little")) ^ base for bit in range(32)]
    # Solve sum(x_bit * columns[bit]) == target ^ base by Gaussian elimination.
    rows = [(columns[bit], 1 << bit) for bit in range(32)]
    basis: dict[int, tuple[int, int]] = {}
    for column, unit in rows:
        value, combo = column, unit
        for pivot in sorted(basis, reverse=True):
            if value >> pivot & 1:
                value, combo = value ^ basis[pivot][0], combo ^ basis[pivot][1]
        if value:
            basis[value.bit_length() - 1] = (value, combo)
    want, solution = target ^ base, 0
    for pivot in sorted(basis, reverse=True):
        if want >> pivot & 1:
            want, solution = want ^ basis[pivot][0], solution ^ basis[pivot][1]
    assert want == 0
    forged = solution.to_bytes(4, "little")
    assert zlib.crc32(prefix + forged) == target
    return forged


def colliding_block(original: bytes) -> bytes:
    """Different bytes, same length and same CRC32 as ``original``."""
    changed = b"STALE?" + original[6:-4]
    block = changed + force_crc32(changed, zlib.crc32(original))
    assert block != original and len(block) == len(original) and zlib.crc32(block) == zlib.crc32(original)
    return block


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the uploader"
        time.sleep(0.01)


def test_a_changed_block_with_the_same_crc32_is_staged_again(azurite_connection_string: str, tmp_path: Path) -> None:
    storage = BlobStorage(azurite_connection_string, upload_block_bytes=BLOCK, upload_concurrency=3)
    container, name = f"crc-{secrets.token_hex(4)}", f"cogs/{secrets.token_hex(4)}/tile_r0_c0.tif"
    storage.ensure_container(container)
    path = tmp_path / "tile.tif"
    data = random.Random(7).randbytes(10 * BLOCK + BLOCK // 2)
    block3 = data[3 * BLOCK : 4 * BLOCK]
    with storage.upload_while_written(container, name, path, content_type=COG) as upload:

        def write() -> None:
            with path.open("wb") as target:
                for start in range(0, len(data), 16 * 1024):
                    target.write(data[start : start + 16 * 1024])
                    target.flush()
                    time.sleep(0.002)
                wait_until(lambda: upload.staged_while_writing >= 9)  # block 3 went with its first bytes
                target.seek(3 * BLOCK)
                target.write(colliding_block(block3))

        with ThreadPoolExecutor(1) as writer:
            writer.submit(write).result(timeout=20)
        uploaded = upload.commit()
    final = path.read_bytes()
    assert final[3 * BLOCK : 4 * BLOCK] != block3
    blob = storage.client.get_blob_client(container, name).download_blob().readall()
    assert hashlib.sha256(blob).hexdigest() == uploaded.sha256 == hashlib.sha256(final).hexdigest()
    assert blob == final
    assert upload.restaged >= 1
    assert not [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME_PREFIX)]
