"""``python -m devstack up|down|status|run|migrate``: the local stack from one command.

``run`` brings the stack up, submits the demo job, follows its progress and prints the final job;
it then stops again whatever it started itself (a stack that was already up stays up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

import psycopg

from devstack import stack
from devstack.azurite import azurite_command
from devstack.stack import StackConfig, StackPaths

TERMINAL_STATUSES = frozenset({"completed", "completed_with_errors", "failed", "cancelled"})
RUN_TIMEOUT_SECONDS = 120.0
POLL_INTERVAL_SECONDS = 0.5
HEARTBEAT_SECONDS = 5.0


def demo_job() -> tuple[str, dict[str, Any]]:
    """The job ``run`` submits: (job_type, parameters). Change the demo here (and only here).

    process_raster on a sample GeoTIFF generated now and uploaded to the stack's storage (bronze);
    the final summary ``run`` prints lists the COG and STAC blob paths (result.outputs).
    """
    from devstack.sample_raster import upload_demo_raster

    config = stack.effective_config(StackPaths(), os.environ)
    print("Demo: generating a sample GeoTIFF and uploading it to bronze")
    return "process_raster", upload_demo_raster(config.storage)


def http_json(
    method: str, url: str, body: object = None, key: str | None = None, timeout: float = 10.0
) -> tuple[int, Any]:
    """One JSON request; returns (status, decoded body or None). HTTP error statuses are returned, not raised."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - local http URLs only
    request.add_header("Accept", "application/json")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if key:
        request.add_header("x-functions-key", key)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            status, raw = int(response.status), response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def task_counts(job: Mapping[str, Any]) -> dict[str, int]:
    """Task counts of the job's current stage (all stages added up when the current one is not listed)."""
    stages = [s for s in (job.get("progress") or {}).get("stages") or [] if isinstance(s, Mapping)]
    current = [s for s in stages if s.get("stage") == job.get("stage")] or stages
    totals = {"queued": 0, "processing": 0, "completed": 0, "failed": 0, "skipped": 0}
    for entry in current:
        for name, count in (entry.get("tasks") or {}).items():
            if name in totals and isinstance(count, int):
                totals[name] += count
    return totals


def format_progress(job: Mapping[str, Any], elapsed: float) -> str:
    """One compact line: status, stage x/y, percent, eta and the current stage's task counts."""
    progress = job.get("progress") or {}
    percent = progress.get("percent")
    eta = progress.get("eta_seconds")
    counts = task_counts(job)
    parts = [
        f"[{elapsed:5.1f}s]",
        f"{job.get('status', '?'):<21}",
        f"stage {job.get('stage') or '-'}/{job.get('total_stages') or '-'}",
        f"{percent:5.1f}%" if isinstance(percent, int | float) else "    -%",
        "tasks " + " ".join(f"{name[0]}={counts[name]}" for name in counts),
    ]
    if isinstance(eta, int | float) and job.get("status") not in TERMINAL_STATUSES:
        parts.append(f"eta {eta:.0f}s")
    return "  ".join(parts)


def final_summary(job: Mapping[str, Any]) -> dict[str, Any]:
    summary = {name: job.get(name) for name in ("job_id", "job_type", "status", "result")}
    if job.get("error"):
        summary["error"] = job["error"]
    return summary


def follow_job(config: StackConfig, job_type: str, parameters: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Submit a job and poll it until it ends or ``timeout`` passes; returns the last job document seen."""
    status, body = http_json("POST", f"{config.api_url}/jobs/{job_type}", parameters, config.function_key)
    if status not in (200, 202) or not isinstance(body, dict) or "job_id" not in body:
        raise stack.StackError(f"submitting {job_type} failed: HTTP {status}: {body}")
    job_id = str(body["job_id"])
    print(f"Submitted {job_type} job {job_id} (HTTP {status}); polling every {POLL_INTERVAL_SECONDS}s")
    started = time.monotonic()
    job: dict[str, Any] = dict(body)
    last_line, last_print = "", 0.0
    while True:
        elapsed = time.monotonic() - started
        status, document = http_json("GET", f"{config.api_url}/jobs/{job_id}", key=config.function_key)
        if status == 200 and isinstance(document, dict):
            job = document
            line = format_progress(job, elapsed)
            changed = line.split("]", 1)[1] != last_line.split("]", 1)[-1]
            if changed or elapsed - last_print >= HEARTBEAT_SECONDS:
                print(line, flush=True)
                last_line, last_print = line, elapsed
        else:
            print(f"[{elapsed:5.1f}s] GET job: HTTP {status}: {document}", flush=True)
        if job.get("status") in TERMINAL_STATUSES or elapsed >= timeout:
            return job
        time.sleep(POLL_INTERVAL_SECONDS)


def print_up_summary(paths: StackPaths, environ: Mapping[str, str], started: list[str]) -> None:
    state = stack.load_state(paths.state_file)
    config = stack.effective_config(paths, environ, state)

    def origin(name: str) -> str:
        entry = state.components.get(name)
        if name in started:
            return "started now"
        return "started by devstack earlier" if entry and entry.started_by_us else "already running, not ours"

    pg = config.postgres
    print("geoetl local stack is up")
    print(f"  API       {config.api_url}  (try: curl {config.api_url}/job-types)  [{origin('host')}]")
    print(f"  Host log  {paths.show(paths.host_log)}")
    database = f"postgresql://{pg.user}@{pg.host}:{pg.port}/{config.database}"
    print(f"  Postgres  {database} schema {config.schema}  [{origin('postgres')}]")
    if "azurite" in state.components:
        ports = "blob :{} queue :{} table :{}".format(*stack.AZURITE_PORTS)
        where = f"data {paths.show(paths.azurite_dir)}, log {paths.show(paths.azurite_log)}"
        print(f"  Azurite   {ports}, {where}  [{origin('azurite')}]")
    print("  Status    make status  (or .venv/bin/python -m devstack status)")
    print("  Stop      make down    (or .venv/bin/python -m devstack down)")


def status_lines(paths: StackPaths, environ: Mapping[str, str]) -> list[str]:
    """One line per component: probed live, with who started it."""
    state = stack.load_state(paths.state_file)
    config = stack.effective_config(paths, environ, state)

    def owner(name: str) -> str:
        entry = state.components.get(name)
        if entry is None:
            return "not started by devstack"
        return f"started by devstack, pid {entry.pid}" if entry.started_by_us else "already running, not ours"

    pg, ours = config.postgres, stack.postmaster(paths.pgdata)
    pg_owner = f"started by devstack in {paths.show(paths.pgdata)}, pid {ours[0]}" if ours else owner("postgres")
    rows = [
        ("postgres", stack.is_reachable(pg, 1.0), f"{pg.host}:{pg.port}/{config.database}", pg_owner),
        (
            "azurite",
            all(stack.port_open(port) for port in stack.AZURITE_PORTS),
            f"127.0.0.1:{stack.AZURITE_PORTS[0]}-{stack.AZURITE_PORTS[-1]}",
            owner("azurite"),
        ),
        ("host", stack.api_ready(config), config.api_url, owner("host")),
    ]
    return [f"{name:<9} {'up' if running else 'down':<5} {where:<32} {who}" for name, running, where, who in rows]


def output_paths(job: dict[str, Any]) -> list[str]:
    """One line per COG and STAC document of a finished job, as container/blob paths."""
    outputs = (job.get("result") or {}).get("outputs") or {}
    lines = [f"COG:              {c['container']}/{c['blob']} ({c['bytes']} bytes)" for c in outputs.get("cogs", [])]
    if outputs.get("stac_collection"):
        ref = outputs["stac_collection"]
        lines.append(f"STAC collection:  {ref['container']}/{ref['blob']}")
    lines += [f"STAC item:        {i['container']}/{i['blob']}" for i in outputs.get("stac_items", [])]
    return lines


def command_run(paths: StackPaths, environ: Mapping[str, str], timeout: float) -> int:
    started: list[str] = []
    try:
        stack.up(paths, environ, started)
        print_up_summary(paths, environ, started)
        config = stack.effective_config(paths, environ)
        job_type, parameters = demo_job()
        job = follow_job(config, job_type, parameters, timeout)
        print(json.dumps(final_summary(job), indent=2, default=str))
        for line in output_paths(job):
            print(line)
        if job.get("status") != "completed":
            ended = job.get("status") in TERMINAL_STATUSES
            print(
                f"error: job {job.get('job_id')} ended as {job.get('status')!r}"
                if ended
                else f"error: job {job.get('job_id')} did not complete within {timeout:.0f}s",
                file=sys.stderr,
            )
            return 1
        return 0
    finally:
        if started:
            print(f"Stopping what run started: {', '.join(started)}")
            stack.down(paths, only=started)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start Postgres, Azurite and the local host (detached); apply migrations")
    commands.add_parser("down", help="stop what `up` started")
    commands.add_parser("status", help="show what is running")
    run = commands.add_parser("run", help="up, run the demo job, print it, and stop what this started")
    run.add_argument("--timeout", type=float, default=RUN_TIMEOUT_SECONDS, help="seconds to wait for the job")
    commands.add_parser("migrate", help="apply database migrations")
    commands.add_parser("azurite", help="run Azurite alone in the foreground on 10000-10002 (for `func start`)")
    commands.add_parser("clean", help="down, then stop and delete every project-local Postgres in .stack/")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths, environ = StackPaths(), dict(os.environ)
    try:
        if args.command == "up":
            print_up_summary(paths, environ, stack.up(paths, environ))
        elif args.command == "down":
            stack.down(paths)
        elif args.command == "status":
            print("\n".join(status_lines(paths, environ)))
        elif args.command == "run":
            return command_run(paths, environ, args.timeout)
        elif args.command == "azurite":
            location = paths.azurite_dir
            location.mkdir(parents=True, exist_ok=True)
            command = [*azurite_command(), "--disableTelemetry", "--skipApiVersionCheck", "--location", str(location)]
            return subprocess.run(command, check=False).returncode
        elif args.command == "clean":
            removed = ", ".join(paths.show(p) for p in stack.clean(paths))
            print(f"Removed Postgres data: {removed}" if removed else "No Postgres data to remove")
        elif args.command == "migrate":
            applied = stack.migrate(paths, environ)
            print(f"migrations applied: {len(applied)} {applied if applied else '(schema up to date)'}")
    except (RuntimeError, psycopg.Error) as error:  # StackError, Azurite/Postgres start-up failures, SQL errors
        print(f"error: {error}", file=sys.stderr)
        if args.command == "up":
            print("(anything already started keeps running: `make status`, `make down`)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
