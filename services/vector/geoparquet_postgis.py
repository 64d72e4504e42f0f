"""Reading a PostGIS table for GeoParquet: its columns, geometry column, CRS, extent, and its rows
in parts of the Hilbert order.

Parts: a table larger than one part is cut along the Hilbert curve at a coarse level (``PART_LEVEL``:
256 x 256 cells of the extent). One SQL pass counts the rows per cell (the cell of the bbox centre,
computed in SQL with the same formula as ``geoparquet.cell_of``); cells are taken in their Hilbert
order and cut into runs of about ``rows_per_part`` rows. A part task selects its cells' rows
(``WHERE cell = ANY(…)``) and sorts them by the fine Hilbert key: parts in order make one globally
ordered table. Rows without a geometry form cell -1, the last.

Rows come through the ADBC PostgreSQL driver (binary COPY → Arrow in C++, about 2.5 x faster than
psycopg rows turned into Arrow arrays): ``ST_AsBinary`` (ISO WKB) and the row's bounds computed by
PostGIS; types without a plain Arrow equivalent (numeric, json, uuid, arrays…) are cast to text.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import adbc_driver_postgresql.dbapi as adbc
import numpy as np
import psycopg
import pyarrow as pa
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import tuple_row
from pyproj import CRS
from pyproj.exceptions import CRSError

from schemas.errors import DatabaseUnavailableError
from services.vector.geometry import VectorInputError
from services.vector.geoparquet import Extent, hilbert_index

PART_LEVEL = 8
NO_GEOMETRY_CELL = -1
ARROW_TYPES: dict[str, pa.DataType] = {
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "bool": pa.bool_(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "name": pa.string(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "time": pa.time64("us"),
    "bytea": pa.binary(),
}


@dataclass(frozen=True)
class TableSource:
    """What the plan found: attribute columns (name, Postgres type name), the geometry column, the CRS."""

    schema: str
    table: str
    columns: list[tuple[str, str]]
    geometry: str
    srid: int
    crs_wkt: str | None
    crs_epsg: int | None
    rows: int
    extent: Extent | None
    extension_schema: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TableSource:
        values = dict(raw)
        values["columns"] = [tuple(c) for c in values["columns"]]
        values["extent"] = tuple(values["extent"]) if values["extent"] else None
        return cls(**values)

    def crs(self) -> CRS | None:
        if self.crs_epsg is not None:
            return CRS.from_epsg(self.crs_epsg)
        return CRS.from_wkt(self.crs_wkt) if self.crs_wkt else None

    def arrow_type(self, pg_type: str) -> pa.DataType:
        return ARROW_TYPES.get(pg_type, pa.string())


def _rows(
    conn: psycopg.Connection[Any], query: sql.Composed | sql.SQL | str, params: Any = None
) -> list[tuple[Any, ...]]:
    with conn.cursor(row_factory=tuple_row) as cur:
        return cur.execute(query, params).fetchall()


def postgis_schema(conn: psycopg.Connection[Any]) -> str | None:
    found = _rows(conn, "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'postgis'")
    return str(found[0][0]) if found else None


def inspect_table(conn: psycopg.Connection[Any], schema: str, table: str, geometry: str | None) -> TableSource:
    """The table's columns, geometry column, SRID / CRS, row count and extent (bad input:
    ``VectorInputError``). Runs in the caller's transaction."""
    extension = postgis_schema(conn)
    if extension is None:
        raise VectorInputError("PostGIS is not installed in this database: no table can have a geometry column")
    found = _rows(conn, "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))::oid", (schema, table))
    oid = found[0][0] if found else None
    if oid is None:
        raise VectorInputError(f"table {schema}.{table} does not exist")
    attributes = _rows(
        conn,
        """SELECT a.attname, t.typname, a.atttypmod FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
           WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum""",
        (oid,),
    )
    geometries = [str(name) for name, typname, _ in attributes if typname == "geometry"]
    if not geometries:
        raise VectorInputError(f"table {schema}.{table} has no geometry column")
    if geometry is None:
        geometry = "geom" if "geom" in geometries else geometries[0]
    elif geometry not in geometries:
        raise VectorInputError(
            f"table {schema}.{table} has no geometry column {geometry!r} (geometry columns: {', '.join(geometries)})"
        )
    columns = [(str(name), str(typname)) for name, typname, _ in attributes if name != geometry]
    conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(extension)))
    target, column = sql.Identifier(schema, table), sql.Identifier(geometry)
    [(count, xmin, ymin, xmax, ymax)] = _rows(
        conn,
        sql.SQL(
            "SELECT n, ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) "
            "FROM (SELECT count(*) AS n, ST_Extent({g}) AS e FROM {t}) s"
        ).format(g=column, t=target),
    )
    typmod = next(int(mod) for name, _, mod in attributes if name == geometry)
    srid = int(_rows(conn, "SELECT postgis_typmod_srid(%s)", (typmod,))[0][0] or 0) if typmod >= 0 else 0
    if srid == 0:
        first = _rows(
            conn, sql.SQL("SELECT ST_SRID({g}) FROM {t} WHERE {g} IS NOT NULL LIMIT 1").format(g=column, t=target)
        )
        srid = int(first[0][0]) if first else 0
    extent = None if xmin is None else (float(xmin), float(ymin), float(xmax), float(ymax))
    epsg, wkt = _crs_of(conn, extension, schema, table, srid)
    return TableSource(schema, table, columns, geometry, srid, wkt, epsg, int(count), extent, extension)


def _crs_of(
    conn: psycopg.Connection[Any], extension: str, schema: str, table: str, srid: int
) -> tuple[int | None, str | None]:
    """(EPSG code, WKT): the EPSG code when spatial_ref_sys says so, else its WKT; SRID 0: the WKT
    stage_vector recorded in the table comment (a CRS without an EPSG code), else unknown."""
    if srid:
        found = _rows(
            conn,
            sql.SQL("SELECT auth_name, auth_srid, srtext FROM {}.spatial_ref_sys WHERE srid = %s").format(
                sql.Identifier(extension)
            ),
            (srid,),
        )
        if not found:
            raise VectorInputError(f"table {schema}.{table}: SRID {srid} is not in spatial_ref_sys")
        auth, code, wkt = found[0]
        if str(auth).upper() == "EPSG" and code:
            return int(code), None
        return None, _checked_wkt(str(wkt), f"table {schema}.{table}: SRID {srid}")
    comment = _rows(conn, "SELECT obj_description(format('%%I.%%I', %s::text, %s::text)::regclass)", (schema, table))
    try:
        wkt = json.loads(comment[0][0]).get("source_crs_wkt") if comment and comment[0][0] else None
    except (ValueError, AttributeError):
        wkt = None
    return None, _checked_wkt(str(wkt), f"table {schema}.{table}") if wkt else None


def _checked_wkt(wkt: str, label: str) -> str:
    try:
        CRS.from_wkt(wkt)
    except CRSError as exc:
        raise VectorInputError(f"{label}: the CRS cannot be read ({str(exc).splitlines()[0][:200]})") from exc
    return wkt


def _cell_expression(source: TableSource) -> sql.Composable:
    """SQL: the coarse cell id (iy * 2^level + ix) of the bbox centre, -1 without geometry."""
    assert source.extent is not None
    xmin, ymin, xmax, ymax = source.extent
    cells = 1 << PART_LEVEL
    g = sql.Identifier(source.geometry)

    def axis(low_fn: str, high_fn: str, low: float, span: float) -> sql.Composable:
        scale = cells / span if span > 0 else 0.0
        return sql.SQL("least({top}, greatest(0, floor((({lo}({g}) + {hi}({g})) / 2 - {low}) * {scale})))::int").format(
            top=sql.Literal(cells - 1),
            lo=sql.SQL(low_fn),
            hi=sql.SQL(high_fn),
            g=g,
            low=sql.Literal(low),
            scale=sql.Literal(scale),
        )

    # GREATEST/LEAST skip NULLs: rows without a (non-empty) geometry are caught first.
    return sql.SQL("CASE WHEN {g} IS NULL OR ST_IsEmpty({g}) THEN {none} ELSE {y} * {n} + {x} END").format(
        g=g,
        y=axis("ST_YMin", "ST_YMax", ymin, ymax - ymin),
        x=axis("ST_XMin", "ST_XMax", xmin, xmax - xmin),
        n=sql.Literal(cells),
        none=sql.Literal(NO_GEOMETRY_CELL),
    )


def plan_parts(
    conn: psycopg.Connection[Any], source: TableSource, rows_per_part: int, max_parts: int
) -> list[list[int]]:
    """Cell lists of the parts, in Hilbert order (one part: ``[[]]``, meaning every row)."""
    if source.rows <= rows_per_part or source.extent is None:
        return [[]]
    conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(source.extension_schema)))
    counts = _rows(
        conn,
        sql.SQL("SELECT c, count(*) FROM (SELECT {} AS c FROM {}) s GROUP BY c").format(
            _cell_expression(source), sql.Identifier(source.schema, source.table)
        ),
    )
    cells = np.array([int(c) for c, _ in counts], dtype=np.int64)
    sizes = np.array([int(n) for _, n in counts], dtype=np.int64)
    side = 1 << PART_LEVEL
    located = cells >= 0
    keys = np.full(len(cells), np.iinfo(np.int64).max, dtype=np.float64)
    keys[located] = hilbert_index(cells[located] % side, cells[located] // side, PART_LEVEL).astype(np.float64)
    order = np.argsort(keys, kind="stable")
    per_part = max(rows_per_part, -(-int(sizes.sum()) // max(1, max_parts)))
    parts: list[list[int]] = [[]]
    filled = 0
    for index in order:
        if filled >= per_part:
            parts.append([])
            filled = 0
        parts[-1].append(int(cells[index]))
        filled += int(sizes[index])
    return parts


def _select_list(source: TableSource) -> sql.Composable:
    items = []
    for name, pg_type in source.columns:
        column = sql.Identifier(name)
        items.append(column if pg_type in ARROW_TYPES else sql.SQL("{}::text AS {}").format(column, column))
    g = sql.Identifier(source.geometry)
    items.append(sql.SQL("ST_AsBinary({}) AS {}").format(g, g))
    items += [sql.SQL("{}({})").format(sql.SQL(fn), g) for fn in ("ST_XMin", "ST_YMin", "ST_XMax", "ST_YMax")]
    return sql.SQL(", ").join(items)


def adbc_conninfo(conn: psycopg.Connection[Any], extension_schema: str, password: str | None = None) -> str:
    """The pooled connection's parameters for an ADBC connection of its own, with PostGIS's schema
    on the search path. ``password``: what a new login uses now (a fresh Entra token); None: the
    pooled connection's own, which an older connection may hold past a token's expiry."""
    schema = extension_schema.replace("\\", "\\\\").replace(" ", "\\ ")
    login = password if password is not None else conn.info.password or ""
    return make_conninfo(conn.info.dsn, password=login, options=f"-c search_path={schema}")


def read_part(
    conn: psycopg.Connection[Any], source: TableSource, cells: list[int], password: str | None = None
) -> tuple[pa.Table, np.ndarray]:
    """The rows of the part's cells (every row when ``cells`` is empty): an Arrow table of the
    attribute columns and the geometry column as WKB, and each row's bounds (N x 4, NaN without
    geometry; exact: PostGIS computes them from the geometry in double precision).

    The rows come through the ADBC PostgreSQL driver (binary COPY decoded to Arrow in C++), on a
    connection of its own made from ``conn``'s parameters; ``conn`` renders the query."""
    query = sql.SQL("SELECT {} FROM {}").format(_select_list(source), sql.Identifier(source.schema, source.table))
    if cells:
        query = sql.SQL("{} WHERE {} = ANY({}::int[])").format(query, _cell_expression(source), sql.Literal(cells))
    text = query.as_string(conn)
    try:
        with adbc.connect(adbc_conninfo(conn, source.extension_schema, password)) as reader, reader.cursor() as cur:
            cur.execute(text)
            data = cur.fetch_arrow_table()
    except adbc.ProgrammingError as exc:  # the table changed shape since the plan
        raise VectorInputError(f"table {source.schema}.{source.table} cannot be read ({str(exc)[:300]})") from exc
    except adbc.Error as exc:
        raise DatabaseUnavailableError(f"reading {source.schema}.{source.table} failed: {str(exc)[:300]}") from exc
    bounds = np.stack(
        [data.column(i).to_numpy(zero_copy_only=False) for i in range(data.num_columns - 4, data.num_columns)], axis=1
    ).astype(np.float64)
    data = data.select(range(data.num_columns - 4))
    names = [name for name, _ in source.columns] + [source.geometry]
    types = [source.arrow_type(pg_type) for _, pg_type in source.columns] + [pa.binary()]
    schema = pa.schema([pa.field(n, t) for n, t in zip(names, types, strict=True)])
    return pa.Table.from_arrays([c.cast(t) for c, t in zip(data.columns, types, strict=True)], schema=schema), bounds
