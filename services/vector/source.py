"""A vector source in blob storage → a local GDAL path (downloaded once per process and version).

Vector files are read from a local copy, not through /vsiaz/: GeoPackages are SQLite databases
(many small random reads), Shapefiles need their sidecar blobs beside them, and a zip is checked
for bombs before GDAL inflates anything. The copy is streamed in 8 MiB ranges, four at a time (bounded memory),
kept under ``<tmp>/geoetl-vector/`` keyed by container, name and etag, so the inspect and load
tasks of a job (and other jobs on the same file) on one instance download once; copies unused for
an hour are swept when another source is fetched (an open file stays readable when swept).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import sqlite3
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pyogrio
from pyogrio.errors import DataLayerError, DataSourceError

from services.vector.geometry import VectorInputError

DOWNLOAD_CHUNK_BYTES = 8 * 1024 * 1024
DOWNLOAD_THREADS = 4
CACHE_MAX_AGE_SECONDS = 3600  # since last use
# Zip bomb guards: declared uncompressed total, and the compression ratio of a large archive.
ZIP_MAX_UNCOMPRESSED_BYTES = 16 * 1024**3
ZIP_MAX_RATIO = 200
ZIP_RATIO_CHECKED_ABOVE_BYTES = 64 * 1024**2
ZIP_MAX_MEMBERS = 10_000

FORMATS = {  # extension → GDAL driver (the only drivers a source may be opened with)
    ".gpkg": "GPKG",
    ".shp": "ESRI Shapefile",
    ".geojson": "GeoJSON",
    ".json": "GeoJSON",
    ".geojsonl": "GeoJSONSeq",
    ".geojsons": "GeoJSONSeq",
    ".geojsonseq": "GeoJSONSeq",
    ".fgb": "FlatGeobuf",
    ".csv": "CSV",
}
SHAPEFILE_REQUIRED = (".shx", ".dbf")
SHAPEFILE_OPTIONAL = (".prj", ".cpg", ".qix", ".sbn", ".sbx")
CURVED_GPKG_TYPES = frozenset(
    {"CIRCULARSTRING", "COMPOUNDCURVE", "CURVEPOLYGON", "MULTICURVE", "MULTISURFACE", "CURVE", "SURFACE"}
)


class BlobSource(Protocol):
    """What the loader needs of blob storage (repositories.blob_storage.BlobStorage)."""

    def properties(self, container: str, name: str) -> Any: ...
    def download_range(self, container: str, name: str, offset: int = 0, length: int | None = None) -> bytes: ...
    def list_blobs(self, container: str, prefix: str = "") -> Iterator[Any]: ...


@dataclass(frozen=True)
class CsvOptions:
    """How CSV rows carry their geometry: a WKT column, or x/y (lon/lat) columns."""

    geometry_column: str | None = None  # default: wkt, geometry, geom, the_geom
    x_column: str | None = None  # default: lon, longitude, x, lng
    y_column: str | None = None  # default: lat, latitude, y
    separator: str | None = None  # COMMA, SEMICOLON, TAB, SPACE; default: detected

    def open_options(self) -> dict[str, str]:
        options = {
            "GEOM_POSSIBLE_NAMES": self.geometry_column or "wkt,geometry,geom,the_geom",
            "X_POSSIBLE_NAMES": self.x_column or "lon,longitude,x,lng,long",
            "Y_POSSIBLE_NAMES": self.y_column or "lat,latitude,y",
            "KEEP_GEOM_COLUMNS": "NO",
            "AUTODETECT_TYPE": "YES",
            "EMPTY_STRING_AS_NULL": "YES",
        }
        if self.separator:
            options["SEPARATOR"] = self.separator
        return options


@dataclass(frozen=True)
class LocalSource:
    """A source GDAL can open: ``path`` (maybe /vsizip/), its driver and open options."""

    path: str
    driver: str
    open_options: dict[str, str] = field(default_factory=dict)
    etag: str = ""

    def layers(self) -> list[tuple[str, str | None]]:
        """(name, declared geometry type) of every layer."""
        try:
            listed = pyogrio.list_layers(self.path)
        except (DataSourceError, DataLayerError) as exc:
            raise VectorInputError(f"not a readable {self.driver} file ({_gdal_reason(exc)})") from exc
        return [(str(name), None if gtype is None else str(gtype)) for name, gtype in listed]

    def declares_curves(self, layer: str) -> bool:
        """Whether the layer declares a curved geometry type (CurvePolygon, MultiSurface …), which
        pyogrio reports by its linear counterpart. Known for a GeoPackage on disk (its
        ``gpkg_geometry_columns``); otherwise False (curves then load into Unknown-type layers)."""
        if self.driver != "GPKG" or self.path.startswith("/vsi"):
            return False
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)) as db:
                row = db.execute(
                    "SELECT geometry_type_name FROM gpkg_geometry_columns WHERE lower(table_name) = lower(?)", (layer,)
                ).fetchone()
        except sqlite3.Error:
            return False
        return row is not None and str(row[0]).upper() in CURVED_GPKG_TYPES

    def info(self, layer: str) -> dict[str, Any]:
        try:
            return dict(pyogrio.read_info(self.path, layer=layer, force_feature_count=True, **self.open_options))
        except (DataSourceError, DataLayerError) as exc:
            raise VectorInputError(f"layer {layer!r} cannot be read ({_gdal_reason(exc)})") from exc


def _gdal_reason(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def cache_root() -> Path:
    return Path(tempfile.gettempdir()) / "geoetl-vector"


def _sweep(root: Path) -> None:
    now = time.time()
    for entry in root.glob("*"):
        try:
            if now - entry.stat().st_mtime > CACHE_MAX_AGE_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            continue


def download(storage: BlobSource, container: str, name: str, target: Path, size: int) -> None:
    """Stream a blob into ``target`` in ranges, a few at a time (written to a part file, renamed when
    complete); at most DOWNLOAD_THREADS ranges are in memory."""
    target.parent.mkdir(parents=True, exist_ok=True)  # swept meanwhile
    part = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.{secrets.token_hex(4)}.part")
    offsets = range(0, size, DOWNLOAD_CHUNK_BYTES)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:

        def fetch(offset: int) -> None:
            data = storage.download_range(container, name, offset, min(DOWNLOAD_CHUNK_BYTES, size - offset))
            os.pwrite(fd, data, offset)

        with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
            list(pool.map(fetch, offsets))
    except BaseException:
        os.close(fd)
        part.unlink(missing_ok=True)
        raise
    os.close(fd)
    part.replace(target)


def _fetch(storage: BlobSource, container: str, name: str, directory: Path, local_name: str | None = None) -> Path:
    props = storage.properties(container, name)
    target = directory / (local_name or name.rsplit("/", 1)[-1])
    if not target.exists() or target.stat().st_size != props.size:
        download(storage, container, name, target, int(props.size))
    return target


def source_directory(container: str, name: str, etag: str) -> Path:
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(f"{container}/{name}@{etag}".encode()).hexdigest()[:24]
    directory = root / key
    if not directory.exists():
        _sweep(root)
    directory.mkdir(parents=True, exist_ok=True)
    os.utime(directory)  # in use: not swept for another hour
    return directory


def extension_of(name: str) -> str:
    lowered = name.lower()
    if lowered.endswith(".zip"):
        return ".zip"
    return "." + lowered.rsplit(".", 1)[-1] if "." in lowered.rsplit("/", 1)[-1] else ""


def is_vector_file(name: str) -> bool:
    """Whether ``name`` is a file stage_vector reads (sidecars such as .dbf are not: they go with their .shp)."""
    ext = extension_of(name)
    return ext == ".zip" or ext in FORMATS


def open_source(storage: BlobSource, container: str, name: str, csv: CsvOptions | None = None) -> LocalSource:
    """The blob (and its sidecars) as a local GDAL source; bad input raises VectorInputError."""
    ext = extension_of(name)
    if ext != ".zip" and ext not in FORMATS:
        known = ", ".join(sorted({*FORMATS, ".zip"}))
        raise VectorInputError(f"{name} is not a supported vector file (extension {ext or 'none'}; supported: {known})")
    etag = str(storage.properties(container, name).etag).strip('"')
    directory = source_directory(container, name, etag)
    if ext == ".shp":  # local names get lower-case extensions, so GDAL finds X.SHP's X.Dbf
        _fetch_sidecars(storage, container, name, directory)
        local = _fetch(storage, container, name, directory, _basename(name)[: -len(ext)] + ext)
    else:
        local = _fetch(storage, container, name, directory)
    if ext == ".zip":
        return _zip_source(local, etag, csv)
    options = (csv or CsvOptions()).open_options() if FORMATS[ext] == "CSV" else {}
    return LocalSource(str(local), FORMATS[ext], options, etag)


def _basename(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _fetch_sidecars(storage: BlobSource, container: str, name: str, directory: Path) -> None:
    """Download the .shp's sidecars beside it, their extensions matched in any case (X.SHP, X.Dbf)."""
    stem = name[: -len(".shp")]
    wanted = (*SHAPEFILE_REQUIRED, *SHAPEFILE_OPTIONAL)
    found: dict[str, str] = {}
    for blob in sorted(storage.list_blobs(container, stem), key=lambda b: str(b.name)):
        ext = str(blob.name)[len(stem) :].lower()
        if ext in wanted:
            found.setdefault(ext, str(blob.name))
    missing = [_basename(stem) + ext for ext in SHAPEFILE_REQUIRED if ext not in found]
    if missing:
        raise VectorInputError(f"the shapefile's sidecar file(s) {', '.join(missing)} are missing beside {name}")
    for ext, blob_name in found.items():
        _fetch(storage, container, blob_name, directory, _basename(stem) + ext)


def check_zip(path: Path) -> list[zipfile.ZipInfo]:
    """The archive's members; refuses what is not a zip, too many members, or a likely zip bomb."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
    except zipfile.BadZipFile as exc:
        raise VectorInputError(f"not a readable zip archive ({exc})") from exc
    if len(members) > ZIP_MAX_MEMBERS:
        raise VectorInputError(f"the zip holds {len(members)} files (at most {ZIP_MAX_MEMBERS})")
    total = sum(m.file_size for m in members)
    packed = max(1, sum(m.compress_size for m in members))
    if total > ZIP_MAX_UNCOMPRESSED_BYTES or (total > ZIP_RATIO_CHECKED_ABOVE_BYTES and total / packed > ZIP_MAX_RATIO):
        raise VectorInputError(
            f"the zip would inflate {packed} bytes to {total} bytes (ratio {total / packed:.0f}): refused as a "
            f"possible zip bomb (limits: {ZIP_MAX_UNCOMPRESSED_BYTES} bytes, ratio {ZIP_MAX_RATIO})"
        )
    return members


def _zip_source(local: Path, etag: str, csv: CsvOptions | None) -> LocalSource:
    members = check_zip(local)
    names = {m.filename for m in members if not m.filename.startswith("__MACOSX/")}
    datasets = sorted(n for n in names if extension_of(n) in FORMATS and not n.lower().endswith(".json"))
    if not datasets:
        raise VectorInputError("the zip holds no vector file (.shp, .gpkg, .geojson, .fgb, .csv …)")
    shapefiles = [n for n in datasets if n.lower().endswith(".shp")]
    for shp in shapefiles:
        lowered = {n.lower() for n in names}
        missing = [shp[:-4] + ext for ext in SHAPEFILE_REQUIRED if (shp[:-4] + ext).lower() not in lowered]
        if missing:
            raise VectorInputError(f"the zip's shapefile {shp} has no sidecar file(s) {', '.join(missing)}")
    folders = {n.rsplit("/", 1)[0] if "/" in n else "" for n in shapefiles}
    if shapefiles and len(shapefiles) == len(datasets) and len(folders) == 1:
        folder = folders.pop()
        member = shapefiles[0] if len(shapefiles) == 1 else folder
        return LocalSource(f"/vsizip/{local}/{member}".rstrip("/"), "ESRI Shapefile", {}, etag)
    if len(datasets) > 1:
        raise VectorInputError(f"the zip holds {len(datasets)} vector files ({', '.join(datasets[:5])}); zip one")
    driver = FORMATS[extension_of(datasets[0])]
    options = (csv or CsvOptions()).open_options() if driver == "CSV" else {}
    return LocalSource(f"/vsizip/{local}/{datasets[0]}", driver, options, etag)
