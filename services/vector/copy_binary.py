"""Rows of Arrow arrays → Postgres binary COPY data, vectorised (no Python object per value).

Each field is encoded as Postgres's binary send format (network byte order: int2/int4/int8,
float4/float8, bool, date as days since 2000-01-01, timestamp / timestamptz as microseconds since
2000-01-01 UTC, time as microseconds since midnight, text as UTF-8, bytea and geometry EWKB as they
are), prefixed with its 4-byte length (-1 for NULL); Arrow's ``binary_join_element_wise`` joins the
fields of each row, and the result's data buffer is the rows back to back. Column types outside
``VECTORISED_COPY_TYPES`` (numeric, jsonb) go through psycopg's ``write_row`` instead
(``services/vector/loader.py`` chooses per load).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
TRAILER = b"\xff\xff"
_FIXED = {"int2": ">i2", "int4": ">i4", "int8": ">i8", "float4": ">f4", "float8": ">f8"}
VECTORISED_COPY_TYPES = frozenset({*_FIXED, "bool", "date", "timestamp", "timestamptz", "time", "text", "bytea"})
_EPOCH_2000_DAYS = 10_957  # 1970-01-01 → 2000-01-01
_EPOCH_2000_US = _EPOCH_2000_DAYS * 86_400 * 1_000_000


def _fixed_width(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    """Length-prefixed big-endian values (``values`` already in their wire dtype), NULL where invalid."""
    width = values.dtype.itemsize
    prefix = np.where(valid, width, -1).astype(">i4")
    joined = np.empty(len(values), dtype=[("length", ">i4"), ("value", values.dtype)])
    joined["length"], joined["value"] = prefix, values
    encoded = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4 + width), len(values), [None, pa.py_buffer(joined)])
    field = encoded.cast(pa.binary())
    if valid.all():
        return field
    return pc.if_else(pa.array(valid), field, pa.scalar(b"\xff\xff\xff\xff", pa.binary()))


def _variable(array: pa.Array) -> pa.Array:
    """Length-prefixed bytes of a binary or string array; NULL as length -1."""
    data = array.cast(pa.binary()) if not pa.types.is_binary(array.type) else array
    lengths = pc.binary_length(data).to_numpy(zero_copy_only=False)
    valid = ~np.asarray(data.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    prefix_values = np.where(valid, np.nan_to_num(lengths, nan=0).astype(np.int64), -1).astype(">i4")
    prefix = pa.FixedSizeBinaryArray.from_buffers(pa.binary(4), len(data), [None, pa.py_buffer(prefix_values)])
    return pc.binary_join_element_wise(prefix.cast(pa.binary()), pc.fill_null(data, b""), b"")


def _valid(array: pa.Array) -> np.ndarray:
    return ~np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)


def _integers(array: pa.Array, dtype: str) -> np.ndarray:
    return np.asarray(array.fill_null(0).to_numpy(zero_copy_only=False)).astype(dtype)


def _date(array: pa.Array) -> np.ndarray:
    return (_integers(array.cast(pa.date32()).cast(pa.int32()), "i8") - _EPOCH_2000_DAYS).astype(">i4")


def _timestamp(array: pa.Array) -> np.ndarray:
    micros = array.cast(pa.timestamp("us", tz=array.type.tz)).cast(pa.int64())
    return (_integers(micros, "i8") - _EPOCH_2000_US).astype(">i8")


def _time(array: pa.Array) -> np.ndarray:
    return _integers(array.cast(pa.time64("us")).cast(pa.int64()), ">i8")


def _bool(array: pa.Array) -> np.ndarray:
    return np.asarray(array.fill_null(False).to_numpy(zero_copy_only=False), dtype=bool).astype("u1")


_CONVERTED = {"date": _date, "timestamp": _timestamp, "timestamptz": _timestamp, "time": _time, "bool": _bool}


def _text(array: pa.Array) -> pa.Array:
    text = array if pa.types.is_string(array.type) or pa.types.is_large_string(array.type) else array.cast(pa.string())
    return _variable(pc.replace_substring(text, "\x00", ""))  # text cannot hold NUL


def encode_field(array: pa.Array | pa.ChunkedArray, copy_type: str) -> pa.Array:
    """One column of a batch as length-prefixed binary COPY fields."""
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    valid = _valid(array)
    if copy_type in _FIXED:
        if pa.types.is_null(array.type):
            return _fixed_width(np.zeros(len(array), dtype=_FIXED[copy_type]), valid)
        return _fixed_width(_integers(array, _FIXED[copy_type]), valid)
    if copy_type in _CONVERTED:
        return _fixed_width(_CONVERTED[copy_type](array), valid)
    if copy_type == "text":
        return _text(array)
    if copy_type == "bytea":
        return _variable(array)
    raise ValueError(f"no vectorised COPY encoding for {copy_type}")


def encode_rows(columns: Sequence[pa.Array], copy_types: Sequence[str]) -> bytes:
    """The binary COPY rows (no signature, no trailer) of equally long columns."""
    if not columns:
        return b""
    fields = [encode_field(column, copy_type) for column, copy_type in zip(columns, copy_types, strict=True)]
    count = np.full(len(columns[0]), len(columns), dtype=">i2")
    head = pa.FixedSizeBinaryArray.from_buffers(pa.binary(2), len(count), [None, pa.py_buffer(count)])
    rows = pc.binary_join_element_wise(head.cast(pa.binary()), *fields, b"")
    if rows.null_count:
        raise ValueError("a COPY row came out NULL")  # never: every field is non-null after encoding
    offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32, count=len(rows) + 1, offset=rows.offset * 4)
    data = rows.buffers()[2]
    return bytes(memoryview(data)[offsets[0] : offsets[-1]]) if data is not None else b""
