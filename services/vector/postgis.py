"""The PostGIS side: extension and schema on first use, staging tables, binary COPY, the swap.

Every statement names the target schema explicitly and runs with ``search_path`` set (SET LOCAL)
to the target schema and the schema PostGIS lives in, so ``geometry`` and ``ST_*`` resolve
wherever the extension was installed.

PostGIS is created on first use by stage_vector (``CREATE EXTENSION IF NOT EXISTS postgis``, in
``public``), not by a numbered migration: the engine's schema does not need PostGIS, and a
deployment without it keeps working until someone submits a stage_vector job, which then fails
with a reason naming what to install (or, on Azure Flexible Server, to allow-list).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from schemas.errors import PermanentTaskError
from services.vector.geometry import GeometryColumn, VectorInputError

IfExists = Literal["fail", "replace", "append"]
FID, GEOM = "fid", "geom"
STAGING_PREFIX = "_geoetl_stage_"
INDEX_BUILD_MEMORY = "256MB"  # maintenance_work_mem for the swap's primary key and GIST builds (at least)


class PostgisUnavailableError(PermanentTaskError):
    """The server has no PostGIS to create (not installed, or not allow-listed on Azure)."""


@dataclass(frozen=True)
class TableColumn:
    name: str
    sql_type: str
    copy_type: str


def staging_table(job_id: str, table: str) -> str:
    return STAGING_PREFIX + hashlib.sha256(f"{job_id}/{table}".encode()).hexdigest()[:20]


def _scalar(conn: psycopg.Connection[Any], query: sql.Composed | str, params: Sequence[Any] = ()) -> Any:
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(query, params).fetchone()
    return None if row is None else row[0]


def postgis_schema(conn: psycopg.Connection[Any]) -> str | None:
    return _scalar(conn, "SELECT extnamespace::regnamespace::text FROM pg_extension WHERE extname = 'postgis'")


def ensure_postgis(conn: psycopg.Connection[Any], schema: str) -> str:
    """Create PostGIS (when missing) and ``schema``; the schema PostGIS lives in. Own transaction."""
    with conn.transaction():
        found = postgis_schema(conn)
        if found is None:
            available = _scalar(conn, "SELECT 1 FROM pg_available_extensions WHERE name = 'postgis'")
            if not available:
                raise PostgisUnavailableError(
                    "PostGIS is not installed on the database server (Debian: postgresql-15-postgis-3; "
                    "Azure Flexible Server: add POSTGIS to the azure.extensions server parameter)"
                )
            try:
                with conn.transaction():
                    conn.execute("CREATE EXTENSION IF NOT EXISTS postgis SCHEMA public")
            except psycopg.errors.UniqueViolation:
                pass  # created by a concurrent job meanwhile
            except psycopg.errors.InsufficientPrivilege as exc:
                raise PostgisUnavailableError(
                    f"PostGIS is not enabled and this role may not create it ({exc})"
                ) from exc
            found = postgis_schema(conn) or "public"
        try:
            with conn.transaction():
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        except psycopg.errors.UniqueViolation:
            pass
    return found


def use_schemas(conn: psycopg.Connection[Any], schema: str, extension_schema: str) -> None:
    """SET LOCAL search_path for the current transaction."""
    conn.execute(
        sql.SQL("SET LOCAL search_path TO {}, {}").format(sql.Identifier(schema), sql.Identifier(extension_schema))
    )


def srid_known(conn: psycopg.Connection[Any], extension_schema: str, srid: int) -> bool:
    query = sql.SQL("SELECT 1 FROM {}.spatial_ref_sys WHERE srid = %s").format(sql.Identifier(extension_schema))
    return _scalar(conn, query, (srid,)) is not None


def table_exists(conn: psycopg.Connection[Any], schema: str, table: str) -> bool:
    return _scalar(conn, "SELECT to_regclass(%s)", (f'"{schema}"."{table}"',)) is not None


def create_staging(
    conn: psycopg.Connection[Any],
    schema: str,
    staging: str,
    columns: Sequence[TableColumn],
    geometry: GeometryColumn | None,
) -> None:
    """(Re)create the empty staging table: fid, the layer's columns, geom (caller's transaction)."""
    target = sql.Identifier(schema, staging)
    definitions = [sql.SQL("{} bigint NOT NULL").format(sql.Identifier(FID))]
    definitions += [sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(c.sql_type)) for c in columns]
    if geometry is not None:
        definitions.append(sql.SQL("{} {}").format(sql.Identifier(GEOM), sql.SQL(geometry.sql)))
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(target, sql.SQL(", ").join(definitions)))
    _set_comment(conn, schema, staging, {"staging_created": time.time()})


def sweep_stale_staging(conn: psycopg.Connection[Any], schema: str, max_age_seconds: float) -> list[str]:
    """Drop staging tables older than ``max_age_seconds`` (left by jobs that failed on transient
    errors after their retries: a permanent failure drops its own at once). Caller's transaction."""
    query = """SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = %s AND c.relkind = 'r' AND c.relname LIKE %s"""
    with conn.cursor(row_factory=tuple_row) as cur:
        rows = cur.execute(query, (schema, STAGING_PREFIX.replace("_", "\\_") + "%")).fetchall()
    stale = []
    for name, text in rows:
        try:
            created = float(json.loads(text)["staging_created"]) if text else 0.0
        except (ValueError, KeyError, TypeError):
            created = 0.0
        if time.time() - created > max_age_seconds:
            drop_table(conn, schema, str(name))
            stale.append(str(name))
    return stale


def drop_table(conn: psycopg.Connection[Any], schema: str, table: str) -> None:
    conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(schema, table)))


def copy_statement(schema: str, staging: str, columns: Sequence[TableColumn], geometry: bool) -> sql.Composed:
    names = [FID, *(c.name for c in columns), *([GEOM] if geometry else [])]
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(schema, staging), sql.SQL(", ").join(map(sql.Identifier, names))
    )


def copy_types(columns: Sequence[TableColumn], geometry: bool) -> list[str]:
    # Geometry goes as EWKB bytes: the server's geometry receive function parses (E)WKB.
    return ["int8", *(c.copy_type for c in columns), *(["bytea"] if geometry else [])]


def delete_range(conn: psycopg.Connection[Any], schema: str, staging: str, start: int, stop: int) -> int:
    """Remove what an earlier attempt of the same range committed (a zombie delivery's rows)."""
    query = sql.SQL("DELETE FROM {} WHERE {} >= %s AND {} < %s").format(
        sql.Identifier(schema, staging), sql.Identifier(FID), sql.Identifier(FID)
    )
    return conn.execute(query, (start, stop)).rowcount


def _index_name(table: str, suffix: str) -> str:
    return table.encode()[: 63 - len(suffix)].decode(errors="ignore") + suffix


def _columns_of(conn: psycopg.Connection[Any], schema: str, table: str) -> list[tuple[str, str]]:
    query = """SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
               WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum"""
    with conn.cursor(row_factory=tuple_row) as cur:
        return [(str(a), str(b)) for a, b in cur.execute(query, (f'"{schema}"."{table}"',))]


def _comment(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[str, Any]:
    text = _scalar(conn, "SELECT obj_description(%s::regclass, 'pg_class')", (f'"{schema}"."{table}"',))
    try:
        return dict(json.loads(text)) if text else {}
    except (ValueError, TypeError):
        return {}


def swap_into_place(
    conn: psycopg.Connection[Any],
    *,
    schema: str,
    staging: str,
    table: str,
    if_exists: IfExists,
    geometry: bool,
    expected_rows: int,
    comment: dict[str, Any],
    scanned: tuple[int, list[float] | None] | None = None,
    analyze: bool = True,
) -> dict[str, Any]:
    """In the caller's transaction: key and index the staging table, ANALYZE it (unless not
    ``analyze``), and make it
    ``table`` (replace: drop the old one; append: insert into it). Readers see the old table or
    the complete new one. A retry after a committed swap finds the staging table gone and the
    target marked with this job: it changes nothing and reports the table as it is. ``scanned``:
    the staging table's rows and extent when ``build_indexes`` counted them (else counted here)."""
    job_id = comment.get("job_id")
    if not table_exists(conn, schema, staging):
        if table_exists(conn, schema, table) and job_id in _comment(conn, schema, table).get("job_ids", []):
            return {"rows": _count(conn, schema, table), "already_swapped": True}
        raise PermanentTaskError(f"the staging table of {schema}.{table} is missing (its load did not finish)")
    rows, extent = scanned or _count_and_extent(conn, schema, staging, geometry)  # scanned: by build_indexes
    if rows != expected_rows:  # never expected: each load replaces its own fid range
        raise PermanentTaskError(
            f"staging table of {schema}.{table} holds {rows} rows, the loads wrote {expected_rows}"
        )
    exists = table_exists(conn, schema, table)
    if exists and if_exists == "fail":
        raise VectorInputError(f"table {schema}.{table} already exists (if_exists=fail)")
    src, dst = sql.Identifier(schema, staging), sql.Identifier(schema, table)
    if exists and if_exists == "append":
        return {**_append(conn, schema, staging, table, comment, analyze), "extent": extent}
    _raise_index_memory(conn)
    pk = _index_name(staging, "_pk")
    if table_exists(conn, schema, pk):  # built beforehand by build_indexes: becomes the key as it is
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}").format(
                src, sql.Identifier(pk), sql.Identifier(pk)
            )
        )
    else:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY ({})").format(
                src, sql.Identifier(pk), sql.Identifier(FID)
            )
        )
    if geometry:
        conn.execute(_index_statement(schema, staging, "_gix"))
    if analyze:
        conn.execute(sql.SQL("ANALYZE {}").format(src))
    if exists:
        try:
            conn.execute(sql.SQL("DROP TABLE {}").format(dst))
        except psycopg.errors.DependentObjectsStillExist as exc:
            raise VectorInputError(f"table {schema}.{table} cannot be replaced: other objects depend on it") from exc
    conn.execute(sql.SQL("ALTER TABLE {} RENAME TO {}").format(src, sql.Identifier(table)))
    conn.execute(
        sql.SQL("ALTER INDEX {} RENAME TO {}").format(
            sql.Identifier(schema, _index_name(staging, "_pk")), sql.Identifier(_index_name(table, "_pkey"))
        )
    )
    if geometry:
        conn.execute(
            sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                sql.Identifier(schema, _index_name(staging, "_gix")), sql.Identifier(_index_name(table, "_geom_gist"))
            )
        )
    _set_comment(conn, schema, table, {**comment, "job_ids": [job_id]})
    return {"rows": rows, "already_swapped": False, "extent": extent}


def _append(
    conn: psycopg.Connection[Any], schema: str, staging: str, table: str, comment: dict[str, Any], analyze: bool
) -> dict[str, Any]:
    ours, theirs = _columns_of(conn, schema, staging), _columns_of(conn, schema, table)
    if ours != theirs:
        differ = sorted(set(ours) ^ set(theirs))[:5]
        raise VectorInputError(
            f"cannot append to {schema}.{table}: its columns differ from the source's "
            f"({', '.join(map(' '.join, differ))})"
        )
    names = [sql.Identifier(name) for name, _ in ours if name != FID]
    dst = sql.Identifier(schema, table)
    conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(dst))
    offset = _scalar(conn, sql.SQL("SELECT coalesce(max({}) + 1, 0) FROM {}").format(sql.Identifier(FID), dst))
    conn.execute(
        sql.SQL("INSERT INTO {} ({}, {}) SELECT {} + %s, {} FROM {}").format(
            dst,
            sql.Identifier(FID),
            sql.SQL(", ").join(names),
            sql.Identifier(FID),
            sql.SQL(", ").join(names),
            sql.Identifier(schema, staging),
        ),
        (offset,),
    )
    rows = _count(conn, schema, staging)
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(schema, staging)))
    if analyze:
        conn.execute(sql.SQL("ANALYZE {}").format(dst))
    previous = _comment(conn, schema, table)
    _set_comment(
        conn,
        schema,
        table,
        {**previous, **comment, "job_ids": [*previous.get("job_ids", []), comment.get("job_id")][-50:]},
    )
    return {"rows": rows, "already_swapped": False, "fid_offset": int(offset)}


def _count_and_extent(
    conn: psycopg.Connection[Any], schema: str, table: str, geometry: bool
) -> tuple[int, list[float] | None]:
    """Rows and the geometries' extent (None: no geometry), in one scan."""
    if not geometry:
        return _count(conn, schema, table), None
    query = sql.SQL(
        "SELECT n, ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM (SELECT count(*) AS n, ST_Extent({}) AS e "
        "FROM {}) AS scanned"
    ).format(sql.Identifier(GEOM), sql.Identifier(schema, table))
    with conn.cursor(row_factory=tuple_row) as cur:
        row = cur.execute(query).fetchone()
    assert row is not None
    extent = None if row[1] is None else [float(v) for v in row[1:]]
    return int(row[0]), extent


def _raise_index_memory(conn: psycopg.Connection[Any]) -> None:
    """Index builds sort in memory up to maintenance_work_mem: raised (never lowered) for this transaction."""
    conn.execute(
        "SELECT set_config('maintenance_work_mem', greatest(pg_size_bytes(current_setting('maintenance_work_mem')),"
        " pg_size_bytes(%s)) / 1024 || 'kB', true)",
        (INDEX_BUILD_MEMORY,),
    )


def _index_statement(schema: str, staging: str, suffix: str) -> sql.Composed:
    """The staging table's key index (``_pk``: unique on fid) or GIST index (``_gix``), if not built yet."""
    unique, method, column = ("UNIQUE ", "btree", FID) if suffix == "_pk" else ("", "GIST", GEOM)
    return sql.SQL("CREATE {}INDEX IF NOT EXISTS {} ON {} USING {} ({})").format(
        sql.SQL(unique),
        sql.Identifier(_index_name(staging, suffix)),
        sql.Identifier(schema, staging),
        sql.SQL(method),
        sql.Identifier(column),
    )


def build_indexes(
    connect: Callable[[], AbstractContextManager[psycopg.Connection[Any]]],
    schema: str,
    staging: str,
    geometry: bool,
) -> dict[str, Any]:
    """Build the staging table's fid key index and GIST index at the same time, one session each
    (both take SHARE locks, which do not conflict; nobody else reads a staging table), and count its
    rows and extent in the key's session while the GIST index builds, all before the swap's
    transaction, which then only attaches the indexes. Seconds per step, ``rows`` and ``extent``
    (None: the staging table is gone, e.g. already swapped); a retry finds the indexes built."""
    scanned: dict[str, Any] = {"rows": None, "extent": None}

    def build(suffix: str) -> float:
        began = time.monotonic()
        with connect() as conn, conn.transaction():
            _raise_index_memory(conn)
            if table_exists(conn, schema, staging):
                conn.execute(_index_statement(schema, staging, suffix))
                if suffix == "_pk":
                    scanned["rows"], scanned["extent"] = _count_and_extent(conn, schema, staging, geometry)
        return round(time.monotonic() - began, 3)

    suffixes = ["_gix", "_pk"] if geometry else ["_pk"]
    with ThreadPoolExecutor(len(suffixes)) as pool:
        seconds = dict(
            zip(
                ("gist" if s == "_gix" else "key_count_extent" for s in suffixes),
                pool.map(build, suffixes),
                strict=True,
            )
        )
    return {**seconds, **scanned}


def _count(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    return int(_scalar(conn, sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))))


def _set_comment(conn: psycopg.Connection[Any], schema: str, table: str, comment: dict[str, Any]) -> None:
    text = json.dumps(comment, separators=(",", ":"))
    conn.execute(sql.SQL("COMMENT ON TABLE {} IS {}").format(sql.Identifier(schema, table), sql.Literal(text)))


def drop_staging_tables(conn: psycopg.Connection[Any], schema: str, names: Iterable[str]) -> None:
    for name in names:
        if name.startswith(STAGING_PREFIX):
            drop_table(conn, schema, name)
