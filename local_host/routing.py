"""HTTP route templates (the ASP.NET Core subset Azure Functions accepts) and route-table matching.

Supported: literal segments (case-insensitive), ``{name}``, ``{name?}``, ``{name=default}``,
``{name:constraint}`` (int, long, alpha, guid, bool, decimal, double, float, datetime,
minlength(n), maxlength(n), length(n), min(n), max(n), range(a,b)), ``{*rest}`` / ``{**rest}``
catch-all, and segments mixing text and parameters such as ``{name}.{ext}``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Generic, TypeVar
from urllib.parse import unquote

T = TypeVar("T")

# Lower rank = more specific; routes compare segment by segment, like ASP.NET route precedence.
RANK_LITERAL, RANK_COMPLEX, RANK_CONSTRAINED, RANK_PARAMETER, RANK_OPTIONAL, RANK_CATCH_ALL = range(1, 7)

_PARAMETER = re.compile(r"\{([^{}]*)\}")
_GUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$|^\{.*\}$")


class RouteTemplateError(ValueError):
    """A route template the host cannot parse."""


def _is_number(value: str) -> bool:
    try:
        Decimal(value)
    except InvalidOperation:
        return False
    return value.strip() == value and value.lower() not in ("nan", "inf", "-inf", "infinity")


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _int_in_range(bits: int) -> Callable[[str], bool]:
    limit = 2 ** (bits - 1)
    return lambda value: re.fullmatch(r"-?\d+", value) is not None and -limit <= int(value) < limit


_SIMPLE_CONSTRAINTS: dict[str, Callable[[str], bool]] = {
    "int": _int_in_range(32),
    "long": _int_in_range(64),
    "alpha": lambda value: re.fullmatch(r"[A-Za-z]+", value) is not None,
    "guid": lambda value: _GUID.match(value) is not None,
    "bool": lambda value: value.lower() in ("true", "false"),
    "decimal": _is_number,
    "double": _is_number,
    "float": _is_number,
    "datetime": _is_datetime,
}


def _bounded_check(kind: str, first: int, second: int | None) -> Callable[[str], bool]:
    upper = second if second is not None else first
    is_long = _SIMPLE_CONSTRAINTS["long"]
    checks: dict[str, Callable[[str], bool]] = {
        "minlength": lambda value: len(value) >= first,
        "maxlength": lambda value: len(value) <= first,
        "length": lambda value: first <= len(value) <= upper,
        "min": lambda value: is_long(value) and int(value) >= first,
        "max": lambda value: is_long(value) and int(value) <= first,
        "range": lambda value: is_long(value) and first <= int(value) <= upper,
    }
    return checks[kind]


def _constraint_check(text: str) -> Callable[[str], bool]:
    simple = _SIMPLE_CONSTRAINTS.get(text.lower())
    if simple is not None:
        return simple
    match = re.fullmatch(r"(minlength|maxlength|length|min|max|range)\(\s*(-?\d+)\s*(?:,\s*(-?\d+)\s*)?\)", text, re.I)
    if match is None:
        raise RouteTemplateError(f"unsupported route constraint {text!r}")
    kind, second = match.group(1).lower(), match.group(3)
    if kind == "range" and second is None:
        raise RouteTemplateError(f"range constraint needs two bounds: {text!r}")
    return _bounded_check(kind, int(match.group(2)), int(second) if second is not None else None)


@dataclass(frozen=True)
class Parameter:
    name: str
    optional: bool = False
    default: str | None = None
    catch_all: bool = False
    checks: tuple[Callable[[str], bool], ...] = ()

    def accepts(self, value: str) -> bool:
        return all(check(value) for check in self.checks)


def _parse_parameter(body: str) -> Parameter:
    catch_all = body.startswith("*")
    body = body.lstrip("*")
    default: str | None = None
    if "=" in body:
        body, default = body.split("=", 1)
    optional = body.endswith("?")
    body = body.rstrip("?")
    name, *constraints = body.split(":")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise RouteTemplateError(f"invalid route parameter name {name!r}")
    checks = tuple(_constraint_check(constraint) for constraint in constraints)
    return Parameter(name, optional or default is not None or catch_all, default, catch_all, checks)


@dataclass(frozen=True)
class Segment:
    """One ``/``-separated part of a template: a literal, a lone parameter, or a text/parameter mix."""

    text: str
    literal: str | None = None
    parameter: Parameter | None = None
    pattern: re.Pattern[str] | None = None
    parts: tuple[Parameter, ...] = ()

    @property
    def rank(self) -> int:
        if self.literal is not None:
            return RANK_LITERAL
        if self.pattern is not None:
            return RANK_COMPLEX
        assert self.parameter is not None
        if self.parameter.catch_all:
            return RANK_CATCH_ALL
        if self.parameter.optional:
            return RANK_OPTIONAL
        return RANK_CONSTRAINED if self.parameter.checks else RANK_PARAMETER

    def match(self, value: str, out: dict[str, str]) -> bool:
        if self.literal is not None:
            return value.lower() == self.literal.lower()
        if self.parameter is not None:
            if not self.parameter.accepts(value):
                return False
            out[self.parameter.name] = value
            return True
        assert self.pattern is not None
        found = self.pattern.fullmatch(value)
        if found is None:
            return False
        captured = dict(zip((part.name for part in self.parts), found.groups(), strict=True))
        if not all(part.accepts(captured[part.name]) for part in self.parts):
            return False
        out.update(captured)
        return True


def _parse_segment(text: str) -> Segment:
    if "{" not in text and "}" not in text:
        return Segment(text, literal=text)
    whole = _PARAMETER.fullmatch(text)
    if whole is not None:
        return Segment(text, parameter=_parse_parameter(whole.group(1)))
    pieces: list[str] = []
    parts: list[Parameter] = []
    position = 0
    for found in _PARAMETER.finditer(text):
        pieces.append(re.escape(text[position : found.start()]))
        parameter = _parse_parameter(found.group(1))
        if parameter.catch_all or parameter.optional:
            raise RouteTemplateError(f"optional or catch-all parameters cannot share a segment: {text!r}")
        parts.append(parameter)
        pieces.append("(.+?)")
        position = found.end()
    tail = text[position:]
    if "{" in tail or "}" in tail or any("{" in piece or "}" in piece for piece in pieces):
        raise RouteTemplateError(f"unbalanced braces in route segment {text!r}")
    pieces.append(re.escape(tail))
    return Segment(text, pattern=re.compile("".join(pieces), re.IGNORECASE), parts=tuple(parts))


@dataclass(frozen=True)
class RouteTemplate:
    template: str
    segments: tuple[Segment, ...]

    @classmethod
    def parse(cls, template: str) -> RouteTemplate:
        stripped = template.strip().strip("/")
        raw = stripped.split("/") if stripped else []
        if any(not piece for piece in raw):
            raise RouteTemplateError(f"empty segment in route {template!r}")
        segments = tuple(_parse_segment(piece) for piece in raw)
        names = [p.name for s in segments for p in ((s.parameter,) if s.parameter else s.parts)]
        if len(names) != len({name.lower() for name in names}):
            raise RouteTemplateError(f"duplicate parameter name in route {template!r}")
        for index, segment in enumerate(segments):
            parameter = segment.parameter
            is_last = index == len(segments) - 1
            if parameter is not None and parameter.catch_all and not is_last:
                raise RouteTemplateError(f"catch-all parameter must be last in route {template!r}")
            if parameter is not None and parameter.optional and not is_last:
                later = segments[index + 1 :]
                if not all(s.parameter is not None and s.parameter.optional for s in later):
                    raise RouteTemplateError(f"optional parameter must be at the end of route {template!r}")
        return cls(template, segments)

    @property
    def precedence(self) -> tuple[int, ...]:
        return tuple(segment.rank for segment in self.segments)

    def match(self, path_segments: list[str]) -> dict[str, str] | None:
        """Route values if the (already percent-decoded) path segments fit this template."""
        values: dict[str, str] = {}
        for index, segment in enumerate(self.segments):
            parameter = segment.parameter
            if parameter is not None and parameter.catch_all:
                rest = "/".join(path_segments[index:])
                if rest:
                    values[parameter.name] = rest
                elif parameter.default is not None:
                    values[parameter.name] = parameter.default
                return values
            if index >= len(path_segments):
                if parameter is None or not parameter.optional:
                    return None
                if parameter.default is not None:
                    values[parameter.name] = parameter.default
                continue
            if not segment.match(path_segments[index], values):
                return None
        return values if len(path_segments) <= len(self.segments) else None


def split_path(path: str) -> list[str] | None:
    """Percent-decoded segments of a URL path (trailing slash ignored); None if it has an empty segment."""
    stripped = path.strip("/")
    if not stripped:
        return []
    raw = stripped.split("/")
    if any(not piece for piece in raw):
        return None
    return [unquote(piece) for piece in raw]


@dataclass(frozen=True)
class Route(Generic[T]):
    template: RouteTemplate
    methods: frozenset[str] | None  # None: every method
    target: T

    def allows(self, method: str) -> bool:
        return self.methods is None or method.upper() in self.methods


@dataclass(frozen=True)
class RouteMatch(Generic[T]):
    route: Route[T]
    values: dict[str, str]


@dataclass
class RouteResult(Generic[T]):
    """``match`` when found; otherwise ``allowed`` lists methods of routes the path fits (non-empty: 405)."""

    match: RouteMatch[T] | None = None
    allowed: set[str] = field(default_factory=set)


class RouteTable(Generic[T]):
    """Routes tried most specific first; the first that fits the path and allows the method wins."""

    def __init__(self, routes: Iterable[Route[T]] = ()) -> None:
        self._routes: list[Route[T]] = []
        for route in routes:
            self.add(route)

    def add(self, route: Route[T]) -> None:
        self._routes.append(route)
        self._routes.sort(key=lambda item: item.template.precedence)

    @property
    def routes(self) -> list[Route[T]]:
        return list(self._routes)

    def resolve(self, method: str, path_segments: list[str]) -> RouteResult[T]:
        result: RouteResult[T] = RouteResult()
        for route in self._routes:
            values = route.template.match(path_segments)
            if values is None:
                continue
            if route.allows(method):
                result.match = RouteMatch(route, values)
                return result
            result.allowed.update(route.methods or ())
        return result
