"""How the CLI shows things: rich tables and progress bars for people, JSON for machines."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

TERMINAL_STATUSES = frozenset({"completed", "completed_with_errors", "failed", "cancelled"})
STATUS_STYLES = {
    "queued": "cyan",
    "held": "cyan",
    "processing": "yellow",
    "completed": "green",
    "completed_with_errors": "dark_orange",
    "failed": "bold red",
    "cancelled": "magenta",
    "skipped": "dim",
    "open": "bold red",
    "requeued": "green",
    "ok": "green",
    "down": "bold red",
    "ready": "green",
    "not ready": "bold red",
}
FINISHED_TASK_STATUSES = ("completed", "failed", "skipped")
BAR_WIDTH = 30


def as_json(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, default=str)


def styled(status: str | None) -> Text:
    text = status or "-"
    return Text(text, style=STATUS_STYLES.get(text, ""))


def short_time(value: str | None) -> str:
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return value


def clip(value: Any, width: int = 80) -> str:
    text = "" if value is None else str(value).replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


# --- jobs ---------------------------------------------------------------------------------------


def stage_counts(stage: dict[str, Any]) -> tuple[int, int, int | None]:
    """(finished, failed, total) of one stage of a status document; total None until it is planned."""
    tasks = stage.get("tasks") or {}
    finished = sum(int(tasks.get(s, 0)) for s in FINISHED_TASK_STATUSES)
    return finished, int(tasks.get("failed", 0)), stage.get("task_count")


def job_header(status: dict[str, Any]) -> RenderableType:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    progress = status.get("progress") or {}
    grid.add_row("job", status.get("job_id", "-"))
    grid.add_row("type", status.get("job_type", "-"))
    grid.add_row("status", styled(status.get("status")))
    grid.add_row("stage", f"{status.get('stage', '-')} of {status.get('total_stages', '-')}")
    if progress:
        eta = progress.get("eta_seconds")
        grid.add_row("progress", f"{progress.get('percent', 0)}%" + (f"  (eta {eta:.0f} s)" if eta else ""))
    grid.add_row("created", short_time(status.get("created_at")))
    if status.get("completed_at"):
        grid.add_row("finished", short_time(status.get("completed_at")))
    if status.get("error"):
        grid.add_row("error", Text(str(status["error"]), style="red"))
    return grid


def stage_table(status: dict[str, Any]) -> Table:
    table = Table(title="stages", title_justify="left")
    for column in ("#", "name", "state", "progress", "done", "failed", "avg s"):
        table.add_column(column)
    for stage in (status.get("progress") or {}).get("stages", []):
        finished, failed, total = stage_counts(stage)
        bar = ProgressBar(total=float(total or 1), completed=float(finished if total else 0), width=BAR_WIDTH)
        table.add_row(
            str(stage.get("stage")),
            str(stage.get("name")),
            styled(stage.get("state")),
            bar,
            f"{finished}/{total if total is not None else '?'}",
            Text(str(failed), style="red" if failed else ""),
            "-" if stage.get("avg_task_seconds") is None else f"{stage['avg_task_seconds']:.3f}",
        )
    return table


def job_view(status: dict[str, Any]) -> RenderableType:
    return Group(job_header(status), stage_table(status))


def progress_line(status: dict[str, Any]) -> RenderableType:
    """One line of a watch without a terminal (logs, captured output): time, status, a bar per stage."""
    grid = Table.grid(padding=(0, 1))
    cells: list[RenderableType] = [
        Text(datetime.now().strftime("%H:%M:%S"), style="dim"),
        styled(status.get("status")),
        Text(f"{(status.get('progress') or {}).get('percent', 0):>5}%"),
    ]
    for stage in (status.get("progress") or {}).get("stages", []):
        finished, failed, total = stage_counts(stage)
        cells.append(Text(f"| {stage.get('name')}"))
        cells.append(ProgressBar(total=float(total or 1), completed=float(finished if total else 0), width=12))
        cells.append(
            Text(f"{finished}/{total if total is not None else '?'}" + (f" ({failed} failed)" if failed else ""))
        )
    for _ in cells:
        grid.add_column(no_wrap=True)
    grid.add_row(*cells)
    return grid


class StageBars:
    """Live progress bars, one per stage, for ``status --watch`` on a terminal."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(bar_width=BAR_WIDTH),
            MofNCompleteColumn(),
            TextColumn("{task.fields[state]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self._bars: dict[int, TaskID] = {}

    def update(self, status: dict[str, Any]) -> None:
        for stage in (status.get("progress") or {}).get("stages", []):
            number = int(stage.get("stage", 0))
            finished, failed, total = stage_counts(stage)
            state = str(stage.get("state")) + (f", {failed} failed" if failed else "")
            description = f"stage {number} {stage.get('name')}"
            if number not in self._bars:
                self._bars[number] = self.progress.add_task(description, total=total, state=state)
            self.progress.update(self._bars[number], total=total, completed=finished, state=state)


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(jobs)} jobs", title_justify="left")
    for column in ("job id", "type", "status", "stage", "created", "error"):
        table.add_column(column, overflow="fold" if column == "job id" else "ellipsis")
    for job in jobs:
        table.add_row(
            job["job_id"],
            job.get("job_type", "-"),
            styled(job.get("status")),
            f"{job.get('stage')}/{job.get('total_stages')}",
            short_time(job.get("created_at")),
            clip(job.get("error"), 60),
        )
    return table


def tasks_table(job_id: str, tasks: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(tasks)} tasks of {job_id}", title_justify="left")
    for column in ("stage", "key", "status", "attempts", "category", "finished", "error"):
        table.add_column(column)
    for task in tasks:
        table.add_row(
            str(task.get("stage")),
            str(task.get("task_key")),
            styled(task.get("status")),
            str(task.get("attempts")),
            task.get("error_category") or "-",
            short_time(task.get("completed_at")),
            clip(task.get("error"), 60),
        )
    return table


# --- operations ---------------------------------------------------------------------------------


def dead_letters_table(letters: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(letters)} dead letters", title_justify="left")
    for column in ("id", "status", "queue", "received", "job id", "reason"):
        table.add_column(column)
    for letter in letters:
        table.add_row(
            str(letter.get("id")),
            styled(letter.get("status")),
            str(letter.get("queue")),
            short_time(letter.get("created_at")),
            clip(letter.get("job_id") or "-", 16),
            clip(letter.get("reason"), 70),
        )
    return table


def poison_table(queue: str, messages: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{queue}: {len(messages)} live messages", title_justify="left")
    for column in ("message id", "inserted", "dequeues", "body"):
        table.add_column(column)
    for message in messages:
        table.add_row(
            str(message.get("message_id")),
            short_time(message.get("inserted_on")),
            str(message.get("dequeue_count")),
            clip(message.get("body"), 70),
        )
    return table


def health_table(ready: bool, report: dict[str, Any]) -> RenderableType:
    table = Table(title_justify="left", title=Text.assemble("health: ", styled(report.get("status", "?"))))
    for column in ("dependency", "status", "latency ms", "detail"):
        table.add_column(column)
    for name, entry in (report.get("dependencies") or {}).items():
        detail = {k: v for k, v in entry.items() if k not in ("status", "latency_ms")}
        table.add_row(
            name,
            styled(entry.get("status")),
            str(entry.get("latency_ms", "-")),
            clip(json.dumps(detail, sort_keys=True) if detail else "", 70),
        )
    return table
