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
import re

from pyproj import CRS as ProjCRS
from pyproj.exceptions import CRSError as ProjCRSError
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
