"""Parse the parts of ``host.json`` the local host honours (queues, http, functionTimeout).

Defaults follow the Azure Functions host (v4, storage extension v5):
https://learn.microsoft.com/azure/azure-functions/functions-host-json
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_FUNCTION_TIMEOUT_SECONDS = 30 * 60.0
MIN_POLLING_INTERVAL_SECONDS = 0.1
MAX_BATCH_SIZE = 32

_TIMESPAN = re.compile(
    r"^(?:(?P<days>\d+)\.)?(?P<hours>\d{1,2}):(?P<minutes>\d{1,2}):(?P<seconds>\d{1,2})(?:\.(?P<fraction>\d{1,7}))?$"
)


class HostConfigError(ValueError):
    """host.json is malformed or holds a value the host cannot use."""


def parse_timespan(value: str) -> float:
    """Parse a .NET TimeSpan string (``hh:mm:ss``, ``hh:mm:ss.fff``, ``d.hh:mm:ss``) into seconds."""
    match = _TIMESPAN.match(value.strip())
    if match is None:
        raise HostConfigError(f"invalid duration {value!r}: expected hh:mm:ss or hh:mm:ss.fff")
    minutes, seconds = int(match["minutes"]), int(match["seconds"])
    if minutes > 59 or seconds > 59:
        raise HostConfigError(f"invalid duration {value!r}: minutes and seconds must be below 60")
    total = int(match["days"] or 0) * 86400 + int(match["hours"]) * 3600 + minutes * 60 + seconds
    fraction = match["fraction"]
    return total + (int(fraction) / 10 ** len(fraction) if fraction else 0.0)


@dataclass(frozen=True)
class QueuesConfig:
    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    message_encoding: str = "base64"

    @property
    def max_in_flight(self) -> int:
        """Most messages one listener holds at once: a full batch fetched while at the threshold."""
        return self.batch_size + self.new_batch_threshold


@dataclass(frozen=True)
class HttpConfig:
    route_prefix: str = "api"


@dataclass(frozen=True)
class HostConfig:
    queues: QueuesConfig = QueuesConfig()
    http: HttpConfig = HttpConfig()
    function_timeout: float | None = DEFAULT_FUNCTION_TIMEOUT_SECONDS


def _int_setting(section: dict[str, Any], key: str, default: int, minimum: int, maximum: int | None = None) -> int:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise HostConfigError(f"extensions.queues.{key} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = f" and {maximum}" if maximum is not None else ""
        raise HostConfigError(f"extensions.queues.{key} must be between {minimum}{upper}, got {value}")
    return value


def _duration_setting(section: dict[str, Any], key: str, default: float) -> float:
    value = section.get(key)
    if value is None:
        return default
    if not isinstance(value, str):
        raise HostConfigError(f"extensions.queues.{key} must be a duration string like '00:00:02', got {value!r}")
    return parse_timespan(value)


def parse_queues(section: dict[str, Any]) -> QueuesConfig:
    batch_size = _int_setting(section, "batchSize", 16, 1, MAX_BATCH_SIZE)
    threshold = _int_setting(section, "newBatchThreshold", batch_size // 2, 0)
    polling = _duration_setting(section, "maxPollingInterval", 60.0)
    if polling < MIN_POLLING_INTERVAL_SECONDS:
        raise HostConfigError("extensions.queues.maxPollingInterval must be at least 00:00:00.100")
    encoding = section.get("messageEncoding", "base64")
    if not isinstance(encoding, str) or encoding.lower() not in ("base64", "none"):
        raise HostConfigError(f"extensions.queues.messageEncoding must be 'base64' or 'none', got {encoding!r}")
    return QueuesConfig(
        batch_size=batch_size,
        new_batch_threshold=threshold,
        max_polling_interval=polling,
        visibility_timeout=_duration_setting(section, "visibilityTimeout", 0.0),
        max_dequeue_count=_int_setting(section, "maxDequeueCount", 5, 1),
        message_encoding=encoding.lower(),
    )


def parse_function_timeout(value: Any) -> float | None:
    """``functionTimeout``: a TimeSpan, or ``-1`` for unbounded (returned as None)."""
    if value is None:
        return DEFAULT_FUNCTION_TIMEOUT_SECONDS
    if value in (-1, "-1"):
        return None
    if not isinstance(value, str):
        raise HostConfigError(f"functionTimeout must be a duration string or -1, got {value!r}")
    seconds = parse_timespan(value)
    if seconds <= 0:
        raise HostConfigError("functionTimeout must be positive")
    return seconds


def parse_host_config(document: dict[str, Any]) -> HostConfig:
    if not isinstance(document, dict):
        raise HostConfigError("host.json must hold a JSON object")
    extensions = document.get("extensions") or {}
    queues = extensions.get("queues") or {}
    http = extensions.get("http") or {}
    if not isinstance(extensions, dict) or not isinstance(queues, dict) or not isinstance(http, dict):
        raise HostConfigError("host.json extensions, extensions.queues and extensions.http must be objects")
    prefix = http.get("routePrefix", "api")
    if not isinstance(prefix, str):
        raise HostConfigError(f"extensions.http.routePrefix must be a string, got {prefix!r}")
    return HostConfig(
        queues=parse_queues(queues),
        http=HttpConfig(route_prefix=prefix.strip("/")),
        function_timeout=parse_function_timeout(document.get("functionTimeout")),
    )


def load_host_config(app_dir: Path) -> HostConfig:
    """Read ``<app_dir>/host.json``; a missing file means all defaults."""
    path = app_dir / "host.json"
    if not path.exists():
        return HostConfig()
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise HostConfigError(f"{path}: invalid JSON: {error}") from error
    try:
        return parse_host_config(document)
    except HostConfigError as error:
        raise HostConfigError(f"{path}: {error}") from error
