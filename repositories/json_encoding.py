"""JSON as the repositories write it into jsonb columns: strict JSON only.

Python's ``json.dumps`` writes NaN and Infinity, which Postgres jsonb rejects (22P02). A handler's
result, a raster's metadata (a NaN band scale, an infinite nodata) or anything else with non-finite
floats is stored with those values as the strings "NaN", "Infinity" and "-Infinity" (the spelling
STAC uses for raster nodata), never lost to a database error. ``register`` makes this psycopg's
dumper for every Json/Jsonb value, once, at the repository boundary.
"""

from __future__ import annotations

import json
import math
from typing import Any

from psycopg.types.json import set_json_dumps


def finite(value: Any) -> Any:
    """``value`` with every non-finite float replaced by its string spelling."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    return value


def dumps(value: Any) -> str:
    """Strict JSON; the walk that replaces non-finite floats runs only when there is one."""
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(finite(value), allow_nan=False)


def register() -> None:
    set_json_dumps(dumps)
