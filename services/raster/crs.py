"""User-supplied CRS text (the ``assume_crs`` job parameter), parsed without network or file access.

GDAL's ``SetFromUserInput`` (behind rasterio's ``CRS.from_user_input``/``from_string``) downloads
http(s) URLs, with the GIL held, and reads local and /vsi* paths; PROJ strings can name init and
grid files. So only three forms are accepted, each parsed by PROJ from the text alone:

- ``AUTHORITY:CODE`` (``EPSG:32633``), looked up in PROJ's bundled database;
- WKT (1 or 2);
- PROJJSON (a JSON object).

A CRS that names a file anyway (an ``init=``/grid file in a WKT1 PROJ4 extension, a
``PARAMETERFILE`` in a bound CRS) is refused: using it later would open that file. The result is
canonical (``canonical_crs_text``): the code for the first form, else WKT2 that parses back to
itself, so the stored job parameter resolves the same way at every later re-validation.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from pyproj import CRS as ProjCRS
from pyproj import Proj
from pyproj.exceptions import CRSError as ProjCRSError
from pyproj.exceptions import ProjError
from rasterio.crs import CRS

AUTHORITY_CODE = re.compile(r"^([A-Za-z][A-Za-z0-9_]{0,31}):([A-Za-z0-9_.-]{1,64})$")
# WKT starts with a CRS keyword and a bracket (WKT1 and WKT2 keywords).
WKT_START = re.compile(
    r"^(PROJCS|GEOGCS|GEOCCS|COMPD_CS|VERT_CS|LOCAL_CS|PROJCRS|PROJECTEDCRS|GEOGCRS|GEOGRAPHICCRS|GEODCRS|"
    r"GEODETICCRS|BASEGEOGCRS|COMPOUNDCRS|VERTCRS|VERTICALCRS|ENGCRS|ENGINEERINGCRS|BOUNDCRS|DERIVEDPROJCRS)"
    r"\s*[\[(]",
    re.IGNORECASE,
)
# What makes PROJ or GDAL open a file when the CRS is used: init files, grid files.
_GRIDS = re.compile(r"grids\s*=\s*([^\s\"\]+]+)", re.IGNORECASE)
_FILE_REFERENCES = re.compile(r"init\s*=|PARAMETERFILE", re.IGNORECASE)
_LOCATIONS = re.compile(r"/vsi|://", re.IGNORECASE)  # only in the text given: output WKT may cite URIs
_WKT_VERSION = "WKT2_2019"
FORMS = 'an AUTHORITY:CODE (e.g. "EPSG:32633"), WKT or PROJJSON'


class CrsInputError(ValueError):
    """The text is not an accepted CRS form, or not a CRS PROJ knows."""


def _refuse_file_references(text: str, *, given: bool = True) -> None:
    if (
        (given and _LOCATIONS.search(text))
        or _FILE_REFERENCES.search(text)
        or any(part.strip().lstrip("@") != "null" for value in _GRIDS.findall(text) for part in value.split(","))
    ):
        raise CrsInputError("not a CRS geoetl accepts: it refers to a file (init or grid file, URL or path)")


def _parse(text: str) -> ProjCRS:
    """The CRS of ``text`` in one of the accepted forms; never touches the network or a file."""
    stripped = text.strip()
    match = AUTHORITY_CODE.match(stripped)
    try:
        if match:
            return ProjCRS.from_authority(match.group(1).upper(), match.group(2))
        if WKT_START.match(stripped):
            _refuse_file_references(stripped)
            crs = ProjCRS.from_wkt(stripped)
        elif stripped.startswith("{"):
            data = json.loads(stripped)
            if not isinstance(data, dict):
                raise CrsInputError("PROJJSON must be a JSON object")
            data.pop("$schema", None)  # a URL PROJ never fetches
            _refuse_file_references(json.dumps(data))
            crs = ProjCRS.from_json_dict(data)
        else:
            raise CrsInputError(f"not a CRS geoetl accepts: give {FORMS} (URLs, paths and PROJ strings are refused)")
    except (ProjCRSError, json.JSONDecodeError) as exc:
        raise CrsInputError(f"not a CRS PROJ knows: {' '.join(str(exc).split())[:300]}") from exc
    _refuse_file_references(crs.to_wkt(version=_WKT_VERSION), given=False)
    return crs


def canonical_crs_text(text: str) -> str:
    """``text`` resolved once: "AUTHORITY:CODE" as given (authority upper-cased), else canonical WKT2.

    Parsing the result again returns it unchanged (WKT2 is re-read until it is a fixed point)."""
    crs = _parse(text)
    match = AUTHORITY_CODE.match(text.strip())
    if match:
        return f"{match.group(1).upper()}:{match.group(2)}"
    wkt = crs.to_wkt(version=_WKT_VERSION)
    for _ in range(3):
        again = ProjCRS.from_wkt(wkt).to_wkt(version=_WKT_VERSION)
        if again == wkt:
            break
        wkt = again
    return wkt


def crs_from_text(text: str) -> CRS:
    """The rasterio CRS of accepted CRS text (handed to GDAL as WKT only)."""
    return CRS.from_wkt(_parse(text).to_wkt(version=_WKT_VERSION))


# --- why GDAL/PROJ could not use a file's CRS ------------------------------------------------------
#
# GDAL reports a CRS it cannot build from a file's GeoKeys (or a projection PROJ refuses) only as a
# logged message; rasterio passes those to the "rasterio._env" logger (errors at INFO, warnings at
# WARNING) and the dataset just has no CRS, or one that does not transform. ``gdal_messages``
# collects the messages GDAL emits in the calling thread (GDAL calls its error handler in the thread
# that hit the error) without changing what other threads log.

_GDAL_LOGGER = logging.getLogger("rasterio._env")
_capture_lock = threading.Lock()
_sinks: dict[int, list[str]] = {}
_restore: dict[str, int] = {}


class _CaptureFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        sink = _sinks.get(record.thread or 0)
        if sink is not None and record.levelno >= logging.INFO and len(sink) < 50:
            sink.append(record.getMessage())
        # Everyone else sees exactly what they saw before the capture lowered the logger's level.
        return record.levelno >= _restore.get("effective", logging.NOTSET)


_FILTER = _CaptureFilter()


@contextmanager
def gdal_messages() -> Iterator[list[str]]:
    """The messages (errors and warnings) GDAL logs in this thread while the block runs."""
    sink: list[str] = []
    with _capture_lock:
        if not _sinks:
            _restore.update(level=_GDAL_LOGGER.level, effective=_GDAL_LOGGER.getEffectiveLevel())
            _GDAL_LOGGER.addFilter(_FILTER)
            if _restore["effective"] > logging.INFO:
                _GDAL_LOGGER.setLevel(logging.INFO)
        _sinks[threading.get_ident()] = sink
    try:
        yield sink
    finally:
        with _capture_lock:
            _sinks.pop(threading.get_ident(), None)
            if not _sinks:
                _GDAL_LOGGER.removeFilter(_FILTER)
                _GDAL_LOGGER.setLevel(_restore["level"])
                _restore.clear()


_PROJ_MESSAGE = re.compile(r"PROJ: (.*?)'?$")
_PROJ_PREFIXES = re.compile(r"^(?:(?:internal_)?proj_[a-z_]+|pipeline|Pipeline): ")
# PROJ's words for a CRS it parsed but cannot use (a parameter out of range, an unsupported value).
_UNUSABLE = re.compile(r"Invalid value|Unsupported value|Illegal|out of range|should be", re.IGNORECASE)
MAX_REASON_CHARS = 200


def proj_reason(messages: list[str]) -> str | None:
    """The short reason PROJ gave for refusing a CRS, from GDAL's messages, or None when it gave none.

    ``"GDAL signalled an error: err_no=1, msg='PROJ: internal_proj_as_wkt: Unsupported value for
    Latitude of natural origin'"`` → ``"Unsupported value for Latitude of natural origin"``."""
    reasons: list[str] = []
    for message in messages:
        match = _PROJ_MESSAGE.search(" ".join(message.split()))
        if not match:
            continue
        reason = match.group(1)
        while _PROJ_PREFIXES.match(reason):
            reason = _PROJ_PREFIXES.sub("", reason, count=1)
        # "Bad step definition: inv (…)" only repeats the parameter error in PROJ's pipeline words.
        if _UNUSABLE.search(reason) and reason not in reasons and not reason.startswith("Bad step"):
            reasons.append(reason)
    if not reasons:
        return None
    text = "; ".join(reasons)
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"


_PROJ_ERROR = re.compile(r"Error \d+ \([^)]*\): (.*)\)$")


def projection_problem(crs_wkt: str) -> str | None:
    """PROJ's reason for refusing the projection of a CRS it parses (``merc: Invalid value for
    lat_ts: |lat_ts| should be <= 90°``), or None. Asked of pyproj afresh each time: GDAL caches
    coordinate transformations and logs a refusal only the first time."""
    try:
        with warnings.catch_warnings():  # "you will likely lose … converting to a PROJ string"
            warnings.simplefilter("ignore", UserWarning)
            Proj(ProjCRS.from_wkt(crs_wkt))
    except (ProjError, ProjCRSError) as exc:
        match = _PROJ_ERROR.search(" ".join(str(exc).split()))
        if match and _UNUSABLE.search(match.group(1)):
            reason = match.group(1)
            return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"
    return None
