"""The ``geoetl`` command line (typer + rich). It only talks HTTP to a running geoetl app.

Exit codes: 0 success; 1 the job ended failed or cancelled (``--wait`` / ``--watch``), the app is
not ready (``health``) or some requeues were refused; 2 bad usage; 3 an HTTP error (the server's
message is printed) or no answer.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live

from services.cli import render
from services.cli.client import DEFAULT_URL, ApiClient, ApiError

EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_HTTP_ERROR = 3
FAILED_JOB_STATUSES = frozenset({"failed", "cancelled"})
WATCH_UNREACHABLE_LIMIT = 10  # consecutive polls without an answer before a watch gives up

app = typer.Typer(
    name="geoetl",
    help="Operate geoetl over its HTTP API: submit and watch jobs, inspect failures, requeue poison messages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
poison_app = typer.Typer(
    help="Dead letters (messages that could not be processed) and live poison-queue messages.",
    no_args_is_help=True,
)
app.add_typer(poison_app, name="poison")

console = Console(highlight=False)
errors = Console(stderr=True, highlight=False)


@dataclass
class Options:
    url: str
    key: str | None
    json: bool

    def client(self) -> ApiClient:
        return ApiClient(self.url, self.key)


JsonFlag = Annotated[bool, typer.Option("--json", help="Machine output: the API's JSON.")]


def options(ctx: typer.Context, json_flag: bool = False) -> Options:
    found: Options = ctx.find_object(Options) or Options(DEFAULT_URL, None, False)
    return Options(found.url, found.key, found.json or json_flag)


def fail(message: str, code: int = EXIT_HTTP_ERROR) -> NoReturn:
    errors.print(f"[bold red]error:[/] {message}", soft_wrap=True)
    raise typer.Exit(code)


def emit(opts: Options, payload: Any, human: Any = None) -> None:
    """JSON for --json (plain print: no wrapping or markup), else the rich rendering."""
    if opts.json:
        print(render.as_json(payload))
    else:
        console.print(human if human is not None else payload)


def call(action: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one API call; an HTTP error ends the command with the server's message."""
    try:
        return action(*args, **kwargs)
    except ApiError as err:
        fail(str(err))


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="GEOETL_URL", help="The app's base URL.")] = DEFAULT_URL,
    key: Annotated[
        str | None,
        typer.Option(envvar="GEOETL_KEY", help="Function key (sent as x-functions-key).", show_default=False),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Machine output (JSON) for every command.")] = False,
) -> None:
    ctx.obj = Options(url=url, key=key, json=json_output)


# --- jobs ---------------------------------------------------------------------------------------


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value``; the value is JSON when it parses (numbers, true/false, null, lists, objects),
    else the text as it is."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise typer.BadParameter(f"{text!r} is not key=value")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def load_parameters(assignments: list[str], json_file: Path | None) -> dict[str, Any]:
    parameters: dict[str, Any] = {}
    if json_file is not None:
        try:
            text = sys.stdin.read() if str(json_file) == "-" else json_file.read_text(encoding="utf-8")
            loaded = json.loads(text)
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"cannot read JSON parameters from {json_file}: {exc}") from exc
        if not isinstance(loaded, dict):
            raise typer.BadParameter(f"{json_file} must hold a JSON object")
        parameters.update(loaded)
    for assignment in assignments:
        key, value = parse_assignment(assignment)
        parameters[key] = value
    return parameters


def watch_job(client: ApiClient, job_id: str, *, interval: float, quiet: bool) -> dict[str, Any]:
    """Poll the job until it is terminal, showing a progress bar per stage (live on a terminal, one
    line per change otherwise). Brief outages (no answer, 503) are waited out."""
    unreachable = 0
    last_line: str | None = None
    bars = render.StageBars(console) if console.is_terminal and not quiet else None
    live = Live(bars.progress, console=console, refresh_per_second=4) if bars else None
    if live:
        live.start()
    try:
        while True:
            try:
                status = client.job(job_id)
                unreachable = 0
            except ApiError as err:
                if err.status not in (0, 503) or unreachable >= WATCH_UNREACHABLE_LIMIT:
                    raise
                unreachable += 1
                time.sleep(interval)
                continue
            if bars:
                bars.update(status)
            elif not quiet:
                line = render_key(status)
                if line != last_line:
                    console.print(render.progress_line(status))
                    last_line = line
            if status.get("status") in render.TERMINAL_STATUSES:
                return status
            time.sleep(interval)
    finally:
        if live:
            live.stop()


def render_key(status: dict[str, Any]) -> str:
    """What a progress line shows, to print one only when it changes."""
    stages = [render.stage_counts(s) for s in (status.get("progress") or {}).get("stages", [])]
    return json.dumps([status.get("status"), stages])


def finish_watch(opts: Options, status: dict[str, Any]) -> None:
    emit(opts, status, render.job_view(status))
    if status.get("status") in FAILED_JOB_STATUSES:
        if not opts.json:
            errors.print(f"[bold red]job {status.get('job_id')} {status.get('status')}[/]: {status.get('error')}")
        raise typer.Exit(EXIT_JOB_FAILED)


@app.command()
def submit(
    ctx: typer.Context,
    job_type: Annotated[str, typer.Argument(help="Job type (see GET /api/job-types), e.g. hello_world.")],
    assignments: Annotated[
        list[str] | None, typer.Argument(help="Parameters as key=value (values parsed as JSON when valid).")
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", "-f", help="Parameters from a JSON file ('-' for stdin).")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Watch the job until it ends; exit 1 if it fails.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls while waiting.", min=0.1)] = 1.0,
) -> None:
    """Submit a job. Use `geoetl --json submit …` for JSON output (here --json names a parameter file)."""
    opts = options(ctx)
    client = opts.client()
    parameters = load_parameters(assignments or [], json_file)
    submitted = call(client.submit, job_type, parameters)
    if not wait:
        note = "created" if submitted.get("created") else "restarted" if submitted.get("restarted") else "exists"
        emit(opts, submitted, f"job [bold]{submitted['job_id']}[/] {render.styled(submitted['status'])} ({note})")
        return
    if not opts.json:
        console.print(f"job [bold]{submitted['job_id']}[/] submitted; waiting…")
    status = call(watch_job, client, submitted["job_id"], interval=interval, quiet=opts.json)
    finish_watch(opts, status)


@app.command()
def status(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Follow progress until the job ends.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between polls with --watch.", min=0.1)] = 1.0,
    json_flag: JsonFlag = False,
) -> None:
    """A job's status and per-stage progress; --watch follows it (exit 1 if it ends failed or cancelled)."""
    opts = options(ctx, json_flag)
    client = opts.client()
    if watch:
        finish_watch(opts, call(watch_job, client, job_id, interval=interval, quiet=opts.json))
        return
    job = call(client.job, job_id)
    emit(opts, job, render.job_view(job))


@app.command()
def jobs(
    ctx: typer.Context,
    status_filter: Annotated[str | None, typer.Option("--status", help="Only jobs with this status.")] = None,
    job_type: Annotated[str | None, typer.Option("--type", help="Only jobs of this type.")] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many (newest first).", min=1)] = None,
    json_flag: JsonFlag = False,
) -> None:
    """List jobs, newest first."""
    opts = options(ctx, json_flag)
    page = call(opts.client().jobs, status=status_filter, job_type=job_type, limit=limit)
    emit(opts, page, render.jobs_table(page["jobs"]))


@app.command()
def tasks(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(help="Job id.")],
    stage: Annotated[int | None, typer.Option(help="Only this stage.", min=1)] = None,
    status_filter: Annotated[str | None, typer.Option("--status", help="Only tasks with this status.")] = None,
    limit: Annotated[int | None, typer.Option(help="Tasks per page.", min=1)] = None,
    json_flag: JsonFlag = False,
) -> None:
    """List a job's tasks (every page)."""
    opts = options(ctx, json_flag)
    client = opts.client()
    collected: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        page = call(client.tasks, job_id, stage=stage, status=status_filter, limit=limit, cursor=cursor)
        collected.extend(page["tasks"])
        cursor = page.get("next_cursor")
        if not cursor:
            break
    emit(opts, {"job_id": job_id, "tasks": collected}, render.tasks_table(job_id, collected))


@app.command()
def cancel(
    ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="Job id.")], json_flag: JsonFlag = False
) -> None:
    """Cancel a queued or processing job (queued tasks are skipped, running ones finish)."""
    opts = options(ctx, json_flag)
    result = call(opts.client().cancel, job_id)
    emit(opts, result, f"job [bold]{result['job_id']}[/] {render.styled(result['status'])}")


@app.command()
def retry(
    ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="Job id.")], json_flag: JsonFlag = False
) -> None:
    """Retry a failed, completed_with_errors or cancelled job (its unsuccessful tasks run again)."""
    opts = options(ctx, json_flag)
    result = call(opts.client().retry, job_id)
    emit(
        opts,
        result,
        f"job [bold]{result['job_id']}[/] {render.styled(result['status'])} again from stage {result.get('stage')}",
    )


@app.command()
def health(ctx: typer.Context, json_flag: JsonFlag = False) -> None:
    """Readiness of the app and its dependencies (exit 1 when not ready)."""
    opts = options(ctx, json_flag)
    ready, report = call(opts.client().health)
    emit(opts, report, render.health_table(ready, report))
    if not ready:
        raise typer.Exit(EXIT_JOB_FAILED)


# --- poison -------------------------------------------------------------------------------------


def poison_queue_names(client: ApiClient) -> list[str]:
    return [q["name"] for q in call(client.queues) if q.get("poison")]


@poison_app.command("list")
def poison_list(
    ctx: typer.Context,
    status_filter: Annotated[
        str, typer.Option("--status", help="Dead letters to show: open, requeued or all.")
    ] = "open",
    limit: Annotated[int, typer.Option(help="At most this many dead letters (newest first).", min=1)] = 50,
    json_flag: JsonFlag = False,
) -> None:
    """Dead letters, and the messages still live in each poison queue."""
    opts = options(ctx, json_flag)
    client = opts.client()
    wanted = None if status_filter == "all" else status_filter
    letters = call(client.dead_letters, status=wanted, limit=limit)
    live = {name: call(client.poison_messages, name) for name in poison_queue_names(client)}
    payload = {"dead_letters": letters, "poison_queues": [{"queue": q, "messages": m} for q, m in live.items()]}
    if opts.json:
        emit(opts, payload)
        return
    console.print(render.dead_letters_table(letters))
    for queue, messages in live.items():
        console.print(render.poison_table(queue, messages))


@poison_app.command("requeue")
def poison_requeue(
    ctx: typer.Context,
    ids: Annotated[list[int] | None, typer.Argument(help="Dead-letter ids to requeue.", show_default=False)] = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Every open dead letter, and every live poison message back to its queue.")
    ] = False,
    json_flag: JsonFlag = False,
) -> None:
    """Put work back: a dead letter's job is retried (or its message re-sent once it parses)."""
    opts = options(ctx, json_flag)
    client = opts.client()
    if not ids and not all_:
        fail("name dead-letter ids, or --all", EXIT_USAGE)
    if ids and all_:
        fail("name dead-letter ids or --all, not both", EXIT_USAGE)
    targets = ids or [d["id"] for d in call(client.dead_letters, status="open", limit=500)]
    requeued: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []
    for dead_letter_id in targets:
        try:
            requeued.append(client.requeue_dead_letter(dead_letter_id))
        except ApiError as err:
            if err.status in (0, 503) or (ids and err.status not in (404, 409)):
                fail(str(err))
            refused.append({"id": dead_letter_id, "status": err.status, "error": err.message})
    moved = [call(client.requeue_poison, name) for name in poison_queue_names(client)] if all_ else []
    payload = {"requeued": requeued, "refused": refused, "poison_queues": moved}
    if opts.json:
        emit(opts, payload)
    else:
        for item in requeued:
            what = "job retried" if item.get("action") == "job_retried" else f"message re-sent to {item.get('queue')}"
            console.print(f"dead letter {item['id']}: [green]requeued[/] ({what}, job {item.get('job_id')})")
        for item in refused:
            console.print(f"dead letter {item['id']}: [red]not requeued[/] (HTTP {item['status']}: {item['error']})")
        for report in moved:
            console.print(
                f"{report['queue']}: {report['requeued']} messages moved back to {report['source_queue']}"
                + (f", {report['failed']} failed" if report["failed"] else "")
            )
        if not requeued and not refused and not moved:
            console.print("nothing to requeue")
    if refused and ids:
        raise typer.Exit(EXIT_JOB_FAILED)


@poison_app.command("purge")
def poison_purge(
    ctx: typer.Context,
    ids: Annotated[
        list[int] | None, typer.Argument(help="Dead-letter ids to delete (default: none).", show_default=False)
    ] = None,
    live: Annotated[bool, typer.Option("--live/--no-live", help="Purge the live poison queues.")] = True,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    json_flag: JsonFlag = False,
) -> None:
    """Delete the live poison-queue messages (and the named dead-letter records)."""
    opts = options(ctx, json_flag)
    client = opts.client()
    if not yes and not typer.confirm(
        ("Purge every live poison-queue message" if live else "Delete")
        + (f" and dead letters {ids}" if ids else "")
        + "?"
    ):
        raise typer.Exit(EXIT_USAGE)
    deleted: list[int] = []
    for dead_letter_id in ids or []:
        call(client.delete_dead_letter, dead_letter_id)
        deleted.append(dead_letter_id)
    purged = [call(client.purge_poison, name) for name in poison_queue_names(client)] if live else []
    payload = {"dead_letters_deleted": deleted, "poison_queues": purged}
    if opts.json:
        emit(opts, payload)
        return
    for dead_letter_id in deleted:
        console.print(f"dead letter {dead_letter_id}: deleted")
    for report in purged:
        console.print(f"{report['queue']}: {report['deleted']} messages purged")
