"""assume_crs is parsed from its text alone: URLs, paths and PROJ strings (which GDAL would fetch or
read) are refused fast without touching the network or a file; codes, WKT and PROJJSON are stored
resolved, so re-validating the stored parameters is pure and gives the same value."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import rasterio
from pydantic import ValidationError
from pyproj import CRS as ProjCRS

from controllers.process_raster_parameters import ProcessRasterParameters
from services.engine.job_service import field_errors
from services.raster.crs import canonical_crs_text
from services.raster.inspect import UnsupportedRasterError, inspect_dataset
from tests.support import rasters

UTM_WKT1 = ProjCRS.from_epsg(32633).to_wkt(version="WKT1_GDAL")
TMERC_PROJJSON = ProjCRS.from_proj4("+proj=tmerc +lon_0=12.3 +ellps=GRS80 +units=m +type=crs").to_json()


class Listener:
    """A local TCP server that counts the connections made to it (none may be)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    yield server
    server.close()


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A named pipe: opening it for reading blocks until a writer comes, so any read would hang."""
    path = tmp_path / "crs.fifo"
    os.mkfifo(path)
    return path


def nobody_opened(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:  # ENXIO: no reader has the pipe open
        return True
    return False


def validate_quickly(raw: dict[str, Any], limit: float = 0.5) -> tuple[ProcessRasterParameters | None, dict[str, str]]:
    """Validate in a thread that must be done within ``limit`` seconds (a blocked open would hang it)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["params"] = ProcessRasterParameters.model_validate(raw)
        except ValidationError as exc:
            outcome["errors"] = {e["field"]: e["message"] for e in field_errors(exc)}

    started = time.monotonic()
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(limit)
    assert not worker.is_alive(), f"validating {raw} took over {limit}s"
    assert time.monotonic() - started < limit
    return outcome.get("params"), outcome.get("errors", {})


def rejected_fast(value: str) -> str:
    params, errors = validate_quickly({"blob_name": "a.tif", "assume_crs": value})
    assert params is None and "assume_crs" in errors, errors
    return errors["assume_crs"]


def test_urls_are_refused_without_a_connection(listener: Listener) -> None:
    for value in (
        f"http://127.0.0.1:{listener.port}/crs.wkt",
        f"https://127.0.0.1:{listener.port}/crs.json",
        f"/vsicurl/http://127.0.0.1:{listener.port}/crs.wkt",
        f"/vsicurl_streaming/http://127.0.0.1:{listener.port}/crs",
    ):
        assert "not a CRS" in rejected_fast(value)
    time.sleep(0.3)
    assert listener.accepted == 0


def test_local_paths_are_refused_without_being_opened(fifo: Path) -> None:
    for value in ("/etc/passwd", str(fifo), f"/vsigzip/{fifo}", "file:///etc/passwd", f"{fifo}"):
        assert "not a CRS" in rejected_fast(value)
    assert nobody_opened(fifo)


def test_proj_strings_naming_files_are_refused(fifo: Path) -> None:
    for value in (f"+init={fifo}:4326", "+init=epsg:4326", f"+proj=longlat +nadgrids={fifo}", "+proj=longlat"):
        assert "not a CRS" in rejected_fast(value)
    assert nobody_opened(fifo)


def test_wkt_and_projjson_that_name_files_are_refused(fifo: Path) -> None:
    extension = UTM_WKT1.replace('AUTHORITY["EPSG","32633"]]', f'EXTENSION["PROJ4","+init={fifo}:foo"]]')
    grids = UTM_WKT1.replace('AUTHORITY["EPSG","32633"]]', f'EXTENSION["PROJ4","+proj=utm +zone=33 +nadgrids={fifo}"]]')
    for value in (extension, grids, json.dumps({"$schema": "x", "type": "GeographicCRS", "name": str(fifo)})):
        rejected_fast(value)
    assert nobody_opened(fifo)


@pytest.mark.parametrize("value", ["EPSG:999999", "NOPE:1", "PROJCS[broken", "{}", "[1, 2]", " "])
def test_unknown_or_malformed_crs_is_a_field_error(value: str) -> None:
    assert rejected_fast(value)


@pytest.mark.parametrize(
    ("value", "expected_epsg"),
    [("EPSG:32633", 32633), ("epsg:4326", 4326), (UTM_WKT1, 32633), (ProjCRS.from_epsg(3857).to_json(), 3857)],
    ids=["epsg", "lowercase", "wkt1", "projjson"],
)
def test_codes_wkt_and_projjson_are_stored_resolved(value: str, expected_epsg: int) -> None:
    params, errors = validate_quickly({"blob_name": "a.tif", "assume_crs": value})
    assert params is not None, errors
    stored = params.model_dump(mode="json")["assume_crs"]
    if value.lower().startswith("epsg:"):
        assert stored == value.upper()
    else:
        assert stored.startswith(("PROJCRS[", "GEOGCRS[")) and stored != value  # canonical WKT2
    assert ProjCRS.from_user_input(stored).to_epsg() == expected_epsg
    # Re-validation of the stored parameters (fan-out, each task, janitor) is a fixed point.
    again = ProcessRasterParameters.model_validate(params.model_dump(mode="json"))
    assert again.assume_crs == stored and canonical_crs_text(stored) == stored


def test_a_crs_without_a_code_is_stored_as_wkt2_and_assumed(tmp_path: Path) -> None:
    params, errors = validate_quickly({"blob_name": "a.tif", "assume_crs": TMERC_PROJJSON})
    assert params is not None and params.assume_crs is not None, errors
    assert "TRANSVERSE" in params.assume_crs.upper()
    with rasterio.open(rasters.no_crs(tmp_path / "nocrs.tif")) as dataset:
        meta = inspect_dataset(dataset, assume_crs=params.assume_crs)
    assert meta.crs_assumed and meta.crs_code is None and "12.3" in meta.crs_wkt


def test_inspect_refuses_an_unresolved_value_too(tmp_path: Path) -> None:
    with (
        rasterio.open(rasters.no_crs(tmp_path / "nocrs.tif")) as dataset,
        pytest.raises(UnsupportedRasterError, match="assume_crs"),
    ):
        inspect_dataset(dataset, assume_crs="/etc/passwd")
