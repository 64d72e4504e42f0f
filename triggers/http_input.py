"""Decoding of HTTP input: JSON bodies, query and route parameters, checked before anything uses them.

Whatever reaches a service is text Postgres and the storage SDK accept: no NUL character (jsonb and
text reject it), no lone surrogate (not encodable as UTF-8), JSON nested at most MAX_JSON_DEPTH
levels, numbers within range. Anything else is an ``InvalidRequestError`` (400) naming the field.
"""

from __future__ import annotations

import json
import math
from typing import Any

import azure.functions as func

from schemas.errors import InvalidRequestError, PayloadTooLargeError

# Deepest JSON a request body may have (job parameters are flat objects with small lists).
MAX_JSON_DEPTH = 32
# Longest query or route parameter accepted (blob names are at most 1024 characters).
MAX_PARAM_CHARS = 4096
# Integer query parameters are bound into SQL as int4.
INT4_MAX = 2**31 - 1


def _invalid(field: str, message: str, summary: str = "invalid request") -> InvalidRequestError:
    return InvalidRequestError(summary, details=[{"field": field, "message": message}])


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored or sent as text, or None when it can."""
    if "\x00" in value:
        return "contains a NUL character (\\u0000)"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (not valid Unicode text)"
    return None


def check_text(value: str, field: str, *, max_chars: int = MAX_PARAM_CHARS) -> str:
    problem = text_problem(value)
    if problem is None and len(value) > max_chars:
        problem = f"at most {max_chars} characters"
    if problem is not None:
        raise _invalid(field, problem)
    return value


def _path(parent: str, key: str | int) -> str:
    return f"{parent}.{key}" if parent else str(key)


def check_json(value: Any, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Walk a decoded JSON value (iteratively): depth, and every key and string is storable text."""
    stack: list[tuple[str, Any, int]] = [("", value, 1)]
    while stack:
        path, item, depth = stack.pop()
        field = path or "body"
        if isinstance(item, dict | list) and depth > max_depth:
            raise _invalid(field, f"nested deeper than {max_depth} levels")
        if isinstance(item, str):
            if (problem := text_problem(item)) is not None:
                raise _invalid(field, problem, "invalid parameters")
        elif isinstance(item, dict):
            for key, child in item.items():
                if (problem := text_problem(key)) is not None:
                    raise _invalid(field, f"a key {problem}", "invalid parameters")
                stack.append((_path(path, key), child, depth + 1))
        elif isinstance(item, list):
            stack.extend((_path(path, i), child, depth + 1) for i, child in enumerate(item))


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"number {text[:40]} is out of range")
    return number


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_json_body(req: func.HttpRequest, max_bytes: int) -> Any:
    declared = req.headers.get("content-length")
    body = req.get_body() or b""
    if len(body) > max_bytes or (declared and declared.isdigit() and int(declared) > max_bytes):
        raise PayloadTooLargeError(f"request body over the {max_bytes}-byte limit")
    if not body.strip():
        return {}
    try:
        value = json.loads(body, parse_float=_finite_float, parse_constant=_no_constant)
    except RecursionError as exc:
        raise _invalid("body", f"nested deeper than {MAX_JSON_DEPTH} levels", "request body is not valid JSON") from exc
    except (UnicodeDecodeError, ValueError) as exc:  # JSONDecodeError, int digit limit, inf, NaN
        message = str(exc)[:200]
        raise _invalid("body", message, "request body is not valid JSON") from exc
    check_json(value)
    return value


def query_text(req: func.HttpRequest, name: str) -> str | None:
    """A text query parameter (None when absent or empty), checked."""
    raw = req.params.get(name)
    if raw is None or raw == "":
        return None
    return check_text(raw, name)


def route_text(req: func.HttpRequest, name: str) -> str:
    return check_text(req.route_params.get(name) or "", name)


def optional_int(
    req: func.HttpRequest, name: str, *, minimum: int = -INT4_MAX - 1, maximum: int = INT4_MAX
) -> int | None:
    raw = req.params.get(name)
    if raw is None or raw == "":
        return None
    try:
        if len(raw) > 20:
            raise ValueError("too long")
        value = int(raw)
    except ValueError as exc:
        raise InvalidRequestError(
            f"query parameter {name!r} must be an integer", details=[{"field": name, "message": "not an integer"}]
        ) from exc
    if not minimum <= value <= maximum:
        raise _invalid(name, f"must be between {minimum} and {maximum}", "invalid query parameters")
    return value
