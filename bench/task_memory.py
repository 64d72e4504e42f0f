"""Per-task memory of a job's tasks: each task's own peak RSS and this process's samples of its worker.

Used by bench/cog_benchmark.py for the big-raster run.
"""

from __future__ import annotations

import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import common
from services.raster.tiling import MIB


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


class ProcessRssSampler:
    """Samples VmRSS of the host's worker processes every ``interval`` seconds, with timestamps."""

    def __init__(self, host: common.HostProcess, interval: float = 0.05) -> None:
        self._host = host
        self._interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (unix time, pid, rss bytes)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    @staticmethod
    def status_field(pid: int, field: str) -> int | None:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            return None
        return None

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            now = time.time()
            for pid in common._worker_pids(self._host):
                rss = self.status_field(pid, "VmRSS")
                if rss is not None:
                    self.samples.append((now, pid, rss))

    def __enter__(self) -> ProcessRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_between(self, pid: int, start: float, end: float) -> int | None:
        values = [rss for t, p, rss in self.samples if p == pid and start <= t <= end]
        return max(values) if values else None


def per_task_memory(job: dict[str, Any], sampler: ProcessRssSampler | None) -> list[dict[str, Any]]:
    rows = []
    for task in sorted(job["tasks"], key=lambda t: (t["stage"], t["task_key"])):
        result = task["result"] or {}
        pid = result.get("process_id")
        row = {
            "stage": task["stage"],
            "task": task["task_key"],
            "seconds": round(parse_time(task["completed_at"]) - parse_time(task["started_at"]), 2),
            "peak_rss_reported_mib": round(result["peak_rss_bytes"] / MIB) if result.get("peak_rss_bytes") else None,
            "process_id": pid,
            "steps_s": result.get("seconds"),
            "staged_because": result.get("staged_because"),  # None: read from the source directly
        }
        if sampler is not None and pid:
            sampled = sampler.peak_between(pid, parse_time(task["started_at"]), parse_time(task["completed_at"]))
            row["peak_rss_sampled_mib"] = round(sampled / MIB) if sampled else None
        rows.append(row)
    return rows
