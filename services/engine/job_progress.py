"""Progress of a job: per-stage task counts, overall percent and an ETA from observed durations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from schemas.jobs import JobRecord, StageRecord, TaskStatus

FINISHED = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.SKIPPED)


def compute_progress(
    job: JobRecord,
    stage_names: Sequence[str],
    stages: Sequence[StageRecord],
    task_counts: Sequence[dict[str, Any]],
    first_started_at: datetime | None,
    now: datetime,
    counters: Mapping[int, Mapping[str, int]] | None = None,
) -> dict[str, Any]:
    """Pure function of what the database reports; see GET /api/jobs/{id}. ``counters``: the job
    type's progress counters summed per stage over completed tasks (None: it declares none)."""
    counts: dict[int, dict[str, int]] = {}
    durations: dict[int, float] = {}
    for row in task_counts:
        counts.setdefault(row["stage"], {})[row["status"]] = int(row["n"])
        if row["status"] == TaskStatus.COMPLETED and row["avg_seconds"] is not None:
            durations[row["stage"]] = float(row["avg_seconds"])
    created = {s.stage: s for s in stages}

    per_stage = []
    done_fraction = 0.0
    remaining_tasks = 0
    finished_tasks = 0
    for number, name in enumerate(stage_names, start=1):
        by_status = {str(status): counts.get(number, {}).get(str(status), 0) for status in TaskStatus}
        record = created.get(number)
        total = record.task_count if record else None
        finished = sum(by_status[str(s)] for s in FINISHED)
        finished_tasks += finished
        if record is None:
            state = "pending"
        elif record.status == "completed":
            state = "completed"
            done_fraction += 1.0
        else:
            state = "processing"
            done_fraction += finished / total if total else 0.0
            remaining_tasks += (total or 0) - finished
        per_stage.append(
            {
                "stage": number,
                "name": name,
                "state": state,
                "task_count": total,
                "tasks": by_status,
                "avg_task_seconds": round(durations[number], 4) if number in durations else None,
                **({"counters": dict(counters.get(number, {}))} if counters is not None else {}),
            }
        )

    percent = 100.0 if job.status.is_terminal else round(100.0 * done_fraction / len(stage_names), 1)
    return {
        "stages": per_stage,
        "percent": percent,
        "eta_seconds": _eta_seconds(job, remaining_tasks, finished_tasks, first_started_at, now),
    }


def _eta_seconds(
    job: JobRecord, remaining_tasks: int, finished_tasks: int, first_started_at: datetime | None, now: datetime
) -> float | None:
    """Remaining tasks of created stages at the observed throughput (tasks finished per second of
    wall time since the first task started). None until there is something to extrapolate from."""
    if job.status.is_terminal:
        return 0.0
    if first_started_at is None or finished_tasks == 0:
        return None
    elapsed = (now - first_started_at).total_seconds()
    if elapsed <= 0:
        return None
    return round(remaining_tasks / (finished_tasks / elapsed), 1)
