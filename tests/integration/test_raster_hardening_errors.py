"""GDAL errors that are not the input's fault are retried, never "corrupt input": reading /vsiaz/
while the storage endpoint is down (a private Azurite, stopped) or answers nothing, and a local
write that hits a full disk (/dev/full), with real GDAL, curl and Azurite."""

from __future__ import annotations

import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import rasterio
from rasterio.errors import RasterioError

from devstack.azurite import connection_string, start_azurite
from repositories.blob_storage import BlobStorage
from schemas.errors import PermanentTaskError, StorageUnavailableError, WorkerResourceError
from services.engine.error_classification import ErrorCategory, classify
from services.inventory.probe import probe_blob
from services.raster.cog import stage_window
from services.raster.gdal_errors import gdal_error
from services.raster.inspect import UnsupportedRasterError
from services.raster.pipeline import open_raster
from services.raster.tiling import TileWindow
from tests.support import rasters

pytestmark = pytest.mark.integration


def assert_transient(exc: BaseException, kind: type[Exception]) -> None:
    assert isinstance(exc, kind) and not isinstance(exc, PermanentTaskError), repr(exc)
    assert classify(exc).category is ErrorCategory.TRANSIENT


@pytest.fixture
def stopped_azurite(tmp_path: Path) -> Iterator[tuple[BlobStorage, dict[str, object]]]:
    """A private Azurite holding bronze/a.tif, then stopped (as during a restart)."""
    handle = start_azurite(location=tmp_path / "azurite", in_memory=True)
    try:
        storage = BlobStorage(handle.connection_string)
        storage.ensure_container("bronze")
        source = rasters.uint8_rgb(tmp_path / "a.tif", 64, 48)
        storage.upload_file("bronze", "a.tif", source, content_type="image/tiff")
        blob = {"name": "a.tif", "size": source.stat().st_size}
        with storage.gdal_env(), open_raster(storage.vsiaz_path("bronze", "a.tif")) as dataset:
            assert dataset.width == 64  # readable while it is up
    finally:
        handle.stop()
    yield storage, blob


def test_reading_while_storage_is_down_is_transient(stopped_azurite: tuple[BlobStorage, dict[str, object]]) -> None:
    storage, blob = stopped_azurite
    with (
        pytest.raises(StorageUnavailableError) as caught,
        storage.gdal_env(),
        open_raster(storage.vsiaz_path("bronze", "a.tif")),
    ):
        pass
    assert_transient(caught.value, StorageUnavailableError)
    assert "connect" in str(caught.value).lower()
    # The inventory probe lets it propagate (the chunk task is retried) instead of recording the
    # blob as unreadable.
    with pytest.raises(StorageUnavailableError):
        probe_blob(storage, "bronze", blob)


@pytest.fixture
def empty_replies() -> Iterator[int]:
    """A TCP server that accepts and closes every connection at once: curl's "Empty reply from server"."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.recv(65536)
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def test_an_empty_reply_from_storage_is_transient(empty_replies: int) -> None:
    storage = BlobStorage(connection_string(blob_port=empty_replies))
    with (
        pytest.raises(StorageUnavailableError) as caught,
        storage.gdal_env(),
        open_raster(storage.vsiaz_path("bronze", "a.tif")),
    ):
        pass
    assert_transient(caught.value, StorageUnavailableError)


def test_a_full_local_disk_is_a_worker_resource_error_not_a_corrupt_input(tmp_path: Path) -> None:
    source = rasters.uint8_rgb(tmp_path / "rgb.tif", 1024, 1024)
    with rasterio.open(source) as dataset, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        window = TileWindow(0, 0, 0, 0, dataset.width, dataset.height)
        with pytest.raises(RasterioError) as caught:
            stage_window(dataset, window, Path("/dev/full"), crs=dataset.crs)  # write() fails: ENOSPC
    error = gdal_error(caught.value, str(source))
    assert not isinstance(error, UnsupportedRasterError)
    assert_transient(error, WorkerResourceError)


@pytest.mark.parametrize(
    "message",
    [
        "CURL error: Failed to connect to 127.0.0.1 port 10000 after 0 ms: Could not connect to server",
        "CURL error: Empty reply from server",
        "CURL error: Recv failure: Connection reset by peer",
    ],
)
def test_curl_transport_messages_are_storage_outages(message: str) -> None:
    assert_transient(gdal_error(RasterioError(message), "/vsiaz/bronze/a.tif"), StorageUnavailableError)


def test_a_corrupt_file_is_still_permanent(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedRasterError), open_raster(str(rasters.not_a_raster(tmp_path / "fake.tif"))):
        pass
