"""Measurement helpers shared by benchmarks: output paths and logging, the jobs HTTP API, an Azurite
stall monitor, CPU accounting, percentiles and JSON reports. No dependency on bench.common."""

from __future__ import annotations

import http.client
import json
import os
import secrets
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from azure.storage.queue import QueueClient

PROJECT_ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = PROJECT_ROOT / "bench" / "out"
TERMINAL_JOB_STATUSES = frozenset({"completed", "completed_with_errors", "failed", "cancelled"})


def log(message: str) -> None:
    """Progress lines go to stderr so stdout carries only the results."""
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def utc_stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


def unique_token() -> str:
    return secrets.token_hex(4)


# -- jobs HTTP API -------------------------------------------------------------------------------


def http_json(method: str, url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode("utf-8", "replace")


def submit_job(base_url: str, job_type: str, parameters: Mapping[str, Any]) -> dict[str, Any]:
    status, payload = http_json("POST", f"{base_url}/api/jobs/{job_type}", dict(parameters))
    if status not in (200, 202) or not isinstance(payload, dict):
        raise RuntimeError(f"submit {job_type} failed: HTTP {status} {payload}")
    return payload


def wait_for_job(base_url: str, job_id: str, *, timeout: float, poll_interval: float = 0.25) -> dict[str, Any]:
    """Poll GET /api/jobs/{job_id} until a terminal status; raises TimeoutError with the last state."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            status, payload = http_json("GET", f"{base_url}/api/jobs/{job_id}")
        except (OSError, http.client.HTTPException) as exc:
            # A read is safe to repeat: the worker serving it may have died (bench.chaos kills them).
            last = f"poll failed: {exc!r}"
            time.sleep(poll_interval)
            continue
        last = payload
        if status == 200 and isinstance(payload, dict) and payload.get("status") in TERMINAL_JOB_STATUSES:
            return payload
        time.sleep(poll_interval)
    raise TimeoutError(f"job {job_id} not finished within {timeout}s; last state: {str(last)[:500]}")


# -- Azurite stall monitor -----------------------------------------------------------------------


class StallMonitor:
    """Background probe of Azurite (Get Queue Properties every ``interval`` s): records calls slower
    than ``threshold`` s, so a result disturbed by an Azurite pause (e.g. its queue GC) is visible."""

    def __init__(self, connection_string: str, *, interval: float = 0.25, threshold: float = 1.0) -> None:
        self._client = QueueClient.from_connection_string(
            connection_string, f"bench-probe-{unique_token()}", read_timeout=600
        )
        self._interval, self._threshold = interval, threshold
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="azurite-stall-monitor", daemon=True)
        self.stalls: list[tuple[float, float]] = []  # (start epoch s, duration s)
        self.probes = 0
        self._probe_started: float | None = None

    def __enter__(self) -> StallMonitor:
        self._client.create_queue()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with suppress(Exception):
            self._client.delete_queue()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            started = self._probe_started = time.time()
            with suppress(Exception):  # an error alone is not a pause; a slow one is counted below
                self._client.get_queue_properties()
            took = time.time() - started
            self._probe_started = None
            self.probes += 1
            if took >= self._threshold:
                self.stalls.append((started, took))
                log(f"azurite stalled for {took:.1f}s")

    def stalls_between(self, start: float, end: float | None = None) -> list[tuple[float, float]]:
        """Stalls overlapping [start, end] (end: now), counting a probe still waiting past the threshold."""
        now = time.time()
        end = now if end is None else end
        found = [(t, d) for t, d in self.stalls if t < end and t + d > start]
        pending = self._probe_started
        if pending is not None and now - pending >= self._threshold and pending < end:
            found.append((pending, now - pending))
        return found


def background_cpu(seconds: float = 1.0) -> dict[str, float]:
    """Share of all CPUs busy over ``seconds`` (from /proc/stat) and the 1-min load average: what
    other processes take from a benchmark when it is measured before or after it."""

    def busy_total() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields) - idle, sum(fields)

    try:
        b0, t0 = busy_total()
        time.sleep(seconds)
        b1, t1 = busy_total()
    except (OSError, ValueError, IndexError):
        return {"load_1m": os.getloadavg()[0]}
    return {"busy_share": round((b1 - b0) / max(1, t1 - t0), 3), "load_1m": round(os.getloadavg()[0], 2)}


def wait_until_quiet(*, busy_below: float = 0.08, window: float = 0.4, timeout: float = 20.0) -> float:
    """Wait until the machine's busy share over ``window`` is below ``busy_below`` (e.g. Azurite still
    persisting the previous measurement's blob), so every timed run starts from the same idle state.
    Returns the seconds waited (``timeout`` at most)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if background_cpu(window).get("busy_share", 0.0) < busy_below:
            break
    return time.monotonic() - started


# -- statistics and reports ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), ``q`` in 0..100; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: Sequence[float]) -> dict[str, float | int | None]:
    return {
        "count": len(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "min": min(values) if values else None,
        "max": max(values) if values else None,
    }


def write_report(name: str, data: Mapping[str, Any], out_dir: Path = OUT_DIR) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}-{utc_stamp()}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


# -- CPU accounting ------------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU seconds of this process plus its waited-for children (e.g. finished worker processes)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all CPUs)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)) / CLOCK_TICKS


class CpuAccount:
    """CPU seconds spent by named groups of processes between ``start`` and ``stop``, plus the rest
    of the machine ("other": everything outside the groups, e.g. other people's work on a shared box).

    Each group is a function listing its pids, called at start and at stop: a pid first seen at stop
    (e.g. a new pooled Postgres backend) started during the interval, so all its CPU counts."""

    def __init__(self, groups: Mapping[str, Callable[[], Sequence[int]]]) -> None:
        self.groups = dict(groups)
        self._start: dict[int, float] = {}
        self._pids: dict[str, set[int]] = {}
        self._machine = 0.0

    def start(self) -> None:
        self._pids = {name: set(list_pids()) for name, list_pids in self.groups.items()}
        self._start = {pid: process_cpu_seconds(pid) for pids in self._pids.values() for pid in pids}
        self._machine = machine_busy_seconds()

    def stop(self) -> dict[str, float]:
        used: dict[str, float] = {}
        for name, list_pids in self.groups.items():
            pids = self._pids.get(name, set()) | set(list_pids())
            spent = sum(max(0.0, process_cpu_seconds(pid) - self._start.get(pid, 0.0)) for pid in pids)
            used[name] = round(spent, 2)
        machine = machine_busy_seconds() - self._machine
        used["other"] = round(max(0.0, machine - sum(used.values())), 2)
        used["machine"] = round(machine, 2)
        return used
