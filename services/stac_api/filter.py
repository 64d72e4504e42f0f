"""The STAC API filter extension's parameters (``filter``, ``filter-lang``, ``filter-crs``), checked and
turned into the CQL2 JSON that pgstac's ``search()`` takes in its ``filter`` field.

CQL2 text is parsed into CQL2 JSON by ``cql2`` (developmentseed's cql2-rs) and CQL2 JSON is parsed by
the same library, so a malformed filter is a 400 naming ``filter`` before any SQL runs. What parses
but pgstac refuses at SQL level (an operator it does not implement, a value of the wrong type, a
wrong number of arguments) is classified by ``filter_refusal`` at the search boundary: a 400 too.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import cql2
import psycopg

from services.stac_api.params import bad, parse_json

CQL2_TEXT = "cql2-text"
CQL2_JSON = "cql2-json"
FILTER_LANGS = (CQL2_TEXT, CQL2_JSON)
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
ACCEPTED_CRS = (CRS84, "https://www.opengis.net/def/crs/OGC/1.3/CRS84")  # a tuple: a JSON list compares, never hashes
MESSAGE_CHARS = 300
# SQLSTATEs of pgstac refusing a filter: data exceptions (class 22), its own RAISE EXCEPTION (P0001),
# and the SQL it generated from the filter not being valid (syntax, unknown function or column,
# type mismatch, ambiguous or impossible cast), or a filter nested too deep for it (54001).
REFUSED_FILTER_SQLSTATES = frozenset({"P0001", "42601", "42883", "42703", "42804", "42725", "42846", "54001"})


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= MESSAGE_CHARS else f"{text[:MESSAGE_CHARS]}…"


def _flat_between(node: Any) -> Any:
    """The pre-1.0 CQL2 JSON ``between`` (``[property, [low, high]]``, still sent by clients such as
    stac-api-validator) rewritten as CQL2 1.0's three arguments ``[property, low, high]``."""
    if isinstance(node, list):
        return [_flat_between(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {key: _flat_between(value) for key, value in node.items()}
    args = out.get("args")
    if out.get("op") == "between" and isinstance(args, list) and len(args) == 2:
        bounds = args[1]
        if isinstance(bounds, list) and len(bounds) == 2:
            out["args"] = [args[0], *bounds]
    return out


def _expression(value: Any, lang: str) -> cql2.Expr:
    if lang == CQL2_TEXT:
        if not isinstance(value, str):
            raise bad("filter", "a CQL2 text expression (a string) for filter-lang cql2-text")
        try:
            return cql2.parse_text(value)
        except (cql2.ParseError, ValueError) as exc:
            raise bad("filter", f"not valid CQL2 text: {_one_line(exc)}") from exc
    cql = parse_json("filter", value)
    if not isinstance(cql, dict):
        raise bad("filter", "a CQL2 JSON expression (an object) for filter-lang cql2-json")
    try:
        return cql2.Expr(_flat_between(cql))
    except Exception as exc:  # cql2.Expr(dict) raises a bare Exception for a dict that is no expression
        raise bad("filter", f"not a CQL2 JSON expression: {_one_line(exc)}") from exc


def parse_filter(raw: Mapping[str, Any], *, default_lang: str) -> dict[str, Any] | None:
    """The CQL2 JSON of a request's ``filter`` (None without one). ``default_lang``: ``cql2-text``
    for a GET query, ``cql2-json`` for a POST body, as the filter extension specifies."""
    crs = raw.get("filter-crs")
    if crs not in (None, "") and crs not in ACCEPTED_CRS:
        raise bad("filter-crs", f"only {CRS84} (the default) is supported")
    lang = raw.get("filter-lang")
    if lang not in (None, "") and lang not in FILTER_LANGS:
        raise bad("filter-lang", "cql2-text or cql2-json")
    value = raw.get("filter")
    if value in (None, ""):
        return None
    # No expression.validate(): cql2's JSON-schema check of an invalid nested expression takes
    # seconds (7 s for a 3-level one of 300 bytes), a denial of service; what parses but is no
    # valid CQL2 is refused by pgstac instead, and that refusal is a 400 too (filter_refusal).
    as_json: dict[str, Any] = _expression(value, str(lang or default_lang)).to_json()
    return as_json


def filter_refusal(exc: BaseException) -> str | None:
    """pgstac's one-line reason when the database error ``exc`` (or the driver error it was
    translated from) is pgstac refusing a search's filter; None for any other failure."""
    for error in (exc, exc.__cause__):
        if isinstance(error, psycopg.Error) and error.sqlstate is not None:
            sqlstate = error.sqlstate
            if sqlstate.startswith("22") or sqlstate in REFUSED_FILTER_SQLSTATES:
                primary = error.diag.message_primary or type(error).__name__
                return _one_line(Exception(primary))
    return None
