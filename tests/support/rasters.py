"""Tiny real GeoTIFFs (and broken files) for raster tests, written with rasterio: never a mocked GDAL."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.rpc import RPC
from rasterio.transform import Affine, from_origin

from devstack.sample_raster import terrain_strip, write_sample_geotiff

UTM_33N = "EPSG:32633"
WGS84 = "EPSG:4326"
PALETTE = {0: (0, 0, 0, 0), 1: (34, 139, 34, 255), 2: (65, 105, 225, 255), 3: (210, 180, 140, 255)}


def _write(path: Path, data: np.ndarray[Any, Any], **profile: Any) -> Path:
    count, height, width = data.shape
    base = {"driver": "GTiff", "width": width, "height": height, "count": count, "dtype": data.dtype.name}
    with rasterio.open(path, "w", **{**base, **profile}) as dataset:
        dataset.write(data)
    return path


def uint8_rgb(path: Path, width: int = 700, height: int = 500) -> Path:
    surface = terrain_strip(0, height, width, height)
    rgb = np.stack([(surface / 6 + shift) % 256 for shift in (0, 60, 120)]).astype("uint8")
    path = _write(path, rgb, crs=UTM_33N, transform=from_origin(500_000, 6_000_000, 10, 10), photometric="RGB")
    with rasterio.open(path, "r+") as dataset:
        dataset.update_tags(TIFFTAG_DATETIME="2021:06:15 10:30:00")
    return path


def uint16_multiband(path: Path, width: int = 600, height: int = 450, bands: int = 4) -> Path:
    return write_sample_geotiff(
        path, width=width, height=height, bands=bands, dtype="uint16", nodata=None, crs=UTM_33N, compress="lzw"
    )


def float32_nodata_nan(path: Path, width: int = 520, height: int = 530) -> Path:
    """EPSG:4326 float32 with nodata -9999 in a corner and NaN pixels elsewhere; band described."""
    data = terrain_strip(0, height, width, height)[None, ...]
    data[0, :40, :60] = -9999.0
    data[0, 100:110, 200:230] = np.nan
    path = _write(
        path,
        data,
        crs=WGS84,
        transform=from_origin(10.0, 50.0, 0.001, 0.001),
        nodata=-9999.0,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    with rasterio.open(path, "r+") as dataset:
        dataset.set_band_description(1, "elevation")
        dataset.set_band_unit(1, "metre")
    return path


def paletted(path: Path, width: int = 640, height: int = 480) -> Path:
    surface = terrain_strip(0, height, width, height)
    classes = np.digitize(surface, [200.0, 600.0, 1000.0]).astype("uint8")[None, ...]
    path = _write(path, classes, crs=UTM_33N, transform=from_origin(400_000, 5_500_000, 30, 30), nodata=0)
    with rasterio.open(path, "r+") as dataset:
        dataset.write_colormap(1, PALETTE)
        dataset.colorinterp = [ColorInterp.palette]
    return path


def one_pixel(path: Path) -> Path:
    return _write(path, np.array([[[42.5]]], dtype="float32"), crs=WGS84, transform=from_origin(5.0, 45.0, 0.01, 0.01))


def large_for_tiling(path: Path, width: int = 1300, height: int = 1100) -> Path:
    """uint16 x 2 bands, big enough to be cut into a grid at a small test budget."""
    return write_sample_geotiff(
        path, width=width, height=height, bands=2, dtype="uint16", nodata=None, crs=UTM_33N, compress="deflate"
    )


def antimeridian(path: Path) -> Path:
    """EPSG:4326 from 179.5°E to 180.5°E (written as lon > 180) over Fiji's latitudes."""
    data = terrain_strip(0, 100, 200, 100)[None, ...]
    return _write(path, data, crs=WGS84, transform=from_origin(179.5, -16.0, 0.005, 0.005))


def no_crs(path: Path) -> Path:
    data = terrain_strip(0, 64, 64, 64)[None, ...]
    return _write(path, data, transform=from_origin(1000, 2000, 1, 1))


def rotated(path: Path) -> Path:
    data = terrain_strip(0, 64, 64, 64)[None, ...]
    transform = Affine(10.0, 2.0, 500_000.0, 2.0, -10.0, 6_000_000.0)
    return _write(path, data, crs=UTM_33N, transform=transform)


def gcp_only(path: Path) -> Path:
    """uint16, nodata 0, placed by four ground control points in UTM 33N only (no geotransform): an
    affine grid turned about 11° (what a rotated geotransform would say, as GCPs)."""
    data = (terrain_strip(0, 80, 96, 80) + 500).clip(1, None).astype("uint16")[None, ...]
    data[0, :6, :6] = 0
    grid = Affine(10.0, 2.0, 500_000.0, 2.0, -10.0, 6_000_000.0)
    gcps = [
        GroundControlPoint(row, col, *(grid @ (col, row)), id=f"{row}-{col}")
        for row, col in ((0, 0), (0, 96), (80, 0), (80, 96))
    ]
    return _write(path, data, gcps=gcps, crs=UTM_33N, nodata=0)


def corrupt(path: Path) -> Path:
    """A real TIFF whose compressed tiles are overwritten with garbage (headers intact)."""
    source = path.with_suffix(".ok.tif")
    float32_nodata_nan(source)
    raw = bytearray(source.read_bytes())
    with rasterio.open(source) as dataset:
        offset = int(dataset.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(dataset.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    raw[offset : offset + size] = bytes((i * 37 + 11) % 256 for i in range(size))
    source.unlink()
    path.write_bytes(bytes(raw))
    return path


def truncated(path: Path) -> Path:
    """A COG-layout file (headers first, so it still opens) cut to two thirds of its bytes."""
    source = path.with_suffix(".full.tif")
    layout = path.with_suffix(".cog.tif")
    uint16_multiband(source)
    rasterio.shutil.copy(source, layout, driver="COG", compress="deflate", blocksize=256)
    data = layout.read_bytes()
    source.unlink()
    layout.unlink()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


def empty(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def not_a_raster(path: Path) -> Path:
    path.write_text("station,lat,lon\nA,50.1,8.6\n")
    return path


MARS_2015 = (
    'GEOGCRS["Mars (2015) - Sphere / Ocentric",DATUM["Mars (2015) - Sphere",ELLIPSOID["Mars (2015) - Sphere",'
    '3396190,0,LENGTHUNIT["metre",1]]],PRIMEM["Reference Meridian",0,ANGLEUNIT["degree",0.0174532925199433]],'
    'CS[ellipsoidal,2],AXIS["geodetic latitude (Lat)",north,ORDER[1],ANGLEUNIT["degree",0.0174532925199433]],'
    'AXIS["geodetic longitude (Lon)",east,ORDER[2],ANGLEUNIT["degree",0.0174532925199433]]]'
)


def non_earth(path: Path) -> Path:
    """Georeferenced on Mars: PROJ has no operation to the Earth's WGS 84."""
    data = np.full((1, 64, 64), 7, dtype="uint8")
    return _write(path, data, crs=CRS.from_wkt(MARS_2015), transform=from_origin(10, 20, 0.1, 0.1))


def off_earth(path: Path) -> Path:
    """A geostationary full disk: the grid's corners look past the Earth into space."""
    data = np.full((1, 64, 64), 3, dtype="uint8")
    geos = CRS.from_proj4("+proj=geos +h=35785831 +lon_0=-75 +sweep=x +ellps=GRS80 +units=m +no_defs")
    return _write(path, data, crs=geos, transform=from_origin(-5_500_000, 5_500_000, 171_875, 171_875))


_MERCATOR_1SP = (
    'PROJCS["Mercator 1SP",GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563]],'
    'PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Mercator_1SP"],'
    'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",0],PARAMETER["scale_factor",{scale}],'
    'PARAMETER["false_easting",0],PARAMETER["false_northing",0],UNIT["metre",1]]'
)
_GEO_KEY_DIRECTORY, _GEO_DOUBLE_PARAMS = 34735, 34736
_PROJ_NAT_ORIGIN_LAT = 3081  # ProjNatOriginLatGeoKey


def _set_geokey_double(path: Path, key: int, value: float) -> None:
    """Rewrite one double-valued GeoKey in place (little-endian classic TIFF, as GDAL writes small files):
    GeoKeys GDAL itself would never write, as other software does."""
    raw = bytearray(path.read_bytes())
    assert raw[:4] == b"II*\x00", "expects a little-endian classic TIFF"
    ifd = struct.unpack_from("<I", raw, 4)[0]
    tags = {}
    for i in range(struct.unpack_from("<H", raw, ifd)[0]):
        tag, _, count, offset = struct.unpack_from("<HHII", raw, ifd + 2 + 12 * i)
        tags[tag] = (count, offset)
    count, offset = tags[_GEO_KEY_DIRECTORY]
    keys = struct.unpack_from(f"<{count}H", raw, offset)
    for entry in range(4, len(keys), 4):
        key_id, location, _, index = keys[entry : entry + 4]
        if key_id == key and location == _GEO_DOUBLE_PARAMS:
            struct.pack_into("<d", raw, tags[_GEO_DOUBLE_PARAMS][1] + 8 * index, value)
            path.write_bytes(bytes(raw))
            return
    raise ValueError(f"GeoKey {key} is not a double parameter of {path}")


def unusable_crs(path: Path, latitude_of_origin: float = 30.0, scale_factor: float = 0.9996) -> Path:
    """GeoKeys of a Mercator (1SP) whose latitude of natural origin is not 0: with a scale factor
    other than 1 GDAL cannot turn it into a Mercator 2SP and PROJ refuses it, so rasterio reports no
    CRS at all ("Unsupported value for Latitude of natural origin" only in GDAL's log)."""
    data = np.full((1, 32, 32), 9, dtype="uint8")
    crs = CRS.from_wkt(_MERCATOR_1SP.format(scale=scale_factor))
    _write(path, data, crs=crs, transform=from_origin(0, 3_500_000, 1000, 1000))
    _set_geokey_double(path, _PROJ_NAT_ORIGIN_LAT, latitude_of_origin)
    return path


def rpc_only(path: Path, constant: bool = True) -> Path:
    """Georeferenced by rational polynomial coefficients only (a raw satellite scene): no geotransform,
    no CRS; the RPCs (a trivial affine model around 7°E 45°N) in the TIFF's RPC tag. Pixels all 5, or
    (``constant=False``) a diagonal gradient."""
    data = np.full((1, 64, 64), 5, dtype="uint8") if constant else (np.indices((64, 64)).sum(axis=0) * 2)
    data = data.reshape(1, 64, 64).astype("uint8")
    zeros = [0.0] * 20
    rpc = RPC(
        height_off=100.0, height_scale=500.0, lat_off=45.0, lat_scale=0.05, long_off=7.0, long_scale=0.05,
        line_off=32.0, line_scale=32.0, samp_off=32.0, samp_scale=32.0,
        line_num_coeff=[0.0, 0.0, -1.0, *zeros[3:]], line_den_coeff=[1.0, *zeros[1:]],
        samp_num_coeff=[0.0, 1.0, *zeros[2:]], samp_den_coeff=[1.0, *zeros[1:]],
    )  # fmt: skip
    return _write(path, data, rpcs=rpc)


def wide_lambert(path: Path) -> Path:
    """~35° wide in ETRS89 Lambert conformal conic Europe (EPSG:3034), 1700 x 1200 km in 100 km pixels:
    its top edge bows north between the corners, most at the central meridian (10°E), which lies
    halfway between two of 21 evenly spaced outline points, so a bbox of those falls short of it."""
    data = np.arange(17 * 12, dtype="uint16").reshape(1, 12, 17)
    return _write(path, data, crs="EPSG:3034", transform=from_origin(3_192_500, 4_200_000, 100_000, 100_000))
