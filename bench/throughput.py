"""Throughput benchmark: raw Azurite queue round trips vs. geoetl tasks/s on hello_world.

Run: ``.venv/bin/python -m bench.throughput [--n 1000] [--workers 2] [--raw-messages 2000] [--repeat 3]``

1. private in-memory Azurite + throwaway Postgres database (migrated);
2. raw queue rate: send + receive (batches of 16) + delete of small base64 JSON messages, in
   ``--workers`` processes shaped like the host's task-queue listener, and single-threaded;
3. the local Functions host (``--workers`` processes) runs hello_world n=``--n``, ``--repeat``
   times; figures come from the jobs/stages/tasks timestamps in Postgres;
4. a table on stdout and JSON in bench/out/throughput-<timestamp>.json; everything is stopped
   and the database dropped at the end, also on errors and Ctrl-C.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import statistics
import sys
import textwrap
import time
from typing import Any

import psycopg
from psycopg import sql

from bench.common import (
    OUT_DIR,
    HostProcess,
    Stack,
    local_host_available,
    log,
    restart_azurite,
    running_host,
    running_stack,
    sigterm_as_keyboard_interrupt,
    unique_token,
    utc_stamp,
    worker_pids,
)
from bench.measure import (
    CpuAccount,
    StallMonitor,
    background_cpu,
    machine_busy_seconds,
    process_cpu_seconds,
    submit_job,
    summary,
    wait_for_job,
    write_report,
)
from bench.raw_queue import RawShape, raw_body, raw_concurrent, raw_single

TARGET_RATIO = 0.65
NOISE_SHARE = 0.2  # other processes' share of busy CPU above which a result is flagged


# -- geoetl: hello_world on the local host --------------------------------------------------------

JOB_SQL = "SELECT status, created_at, started_at, completed_at FROM jobs WHERE job_id = %s"
STAGES_SQL = """
SELECT s.stage, s.created_at, s.task_count, count(t.task_id) AS tasks, min(t.started_at) AS first_start,
       max(t.completed_at) AS last_complete, count(*) FILTER (WHERE t.status = 'completed') AS completed,
       coalesce(sum(t.attempts), 0) AS attempts
  FROM stages s LEFT JOIN tasks t USING (job_id, stage)
 WHERE s.job_id = %s GROUP BY s.stage, s.created_at, s.task_count ORDER BY s.stage
"""
WAITS_SQL = "SELECT extract(epoch FROM started_at - created_at)::float8 FROM tasks WHERE job_id = %s"


def secs(a: Any, b: Any) -> float:
    return float((b - a).total_seconds())


def job_metrics(stack: Stack, job_id: str) -> dict[str, Any]:
    with psycopg.connect(stack.conninfo()) as conn:
        conn.execute(sql.SQL("SET search_path TO {}, public").format(sql.Identifier(stack.schema)))
        job = conn.execute(JOB_SQL, (job_id,)).fetchone()
        stages = conn.execute(STAGES_SQL, (job_id,)).fetchall()
        waits = [row[0] for row in conn.execute(WAITS_SQL, (job_id,)).fetchall() if row[0] is not None]
    if job is None or not stages:
        raise RuntimeError(f"job {job_id} not found in Postgres")
    status, created, _started, completed = job
    tasks = sum(s[3] for s in stages)
    first_start = min(s[4] for s in stages)
    last_complete = max(s[5] for s in stages)
    boundaries = [
        {"from_stage": a[0], "to_stage": b[0], "handoff_s": secs(a[5], b[4]),
         "to_stage_created_s": secs(a[5], b[1]), "stage_created_to_first_start_s": secs(b[1], b[4])}
        for a, b in itertools.pairwise(stages)
    ]  # fmt: skip
    return {
        "job_id": job_id, "status": status, "tasks": tasks,
        "completed_tasks": sum(s[6] for s in stages), "attempts": sum(s[7] for s in stages),
        "submit_to_completed_s": secs(created, completed),
        "active_s": secs(first_start, completed),
        "tasks_per_s_active": tasks / secs(first_start, completed),
        "tasks_per_s_full": tasks / secs(created, completed),
        "submit_to_first_task_s": secs(created, stages[0][4]),
        "last_task_to_completed_s": secs(last_complete, completed),
        "boundaries": boundaries,
        "stages": [{"stage": s[0], "tasks": s[3], "run_s": secs(s[4], s[5]), "tasks_per_s": s[3] / secs(s[4], s[5])}
                   for s in stages],
        "queue_waits_s": waits,
    }  # fmt: skip


def run_job(host: HostProcess, stack: Stack, params: dict[str, Any], timeout: float) -> dict[str, Any]:
    t_submit = time.time()
    submitted = submit_job(host.base_url, "hello_world", params)
    final = wait_for_job(host.base_url, submitted["job_id"], timeout=timeout)
    if final["status"] != "completed":
        raise RuntimeError(f"hello_world {params} ended {final['status']}: {str(final)[:500]}")
    metrics = job_metrics(stack, submitted["job_id"])
    metrics["client_wall_s"] = time.time() - t_submit
    metrics["t_submit"] = t_submit
    return metrics


def cpu_account(stack: Stack, host: HostProcess) -> CpuAccount:
    """CPU of Azurite, the host (supervisor + workers), our database's Postgres backends, this script."""

    def backends() -> list[int]:
        with psycopg.connect(stack.postgres_conninfo_admin()) as conn:
            rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s", (stack.database,)).fetchall()
        return [int(row[0]) for row in rows]

    azurite_pid = stack.azurite.process.pid if stack.azurite else -1
    return CpuAccount(
        {
            "azurite": lambda: [azurite_pid],
            "host": lambda: [host.process.pid, *worker_pids(host)],
            "postgres": backends,
            "bench": lambda: [os.getpid()],
        }
    )


def run_jobs(stack: Stack, args: argparse.Namespace, token: str) -> list[dict[str, Any]]:
    """Each run: fresh Azurite, fresh host, a small warm-up job, then the measured hello_world job.

    A fresh Azurite per run keeps every run inside Azurite's first 60 s queue-GC window.
    """
    runs = []
    for index in range(1, args.repeat + 1):
        restart_azurite(stack)
        log_file = OUT_DIR / f"host-{utc_stamp()}-run{index}.log"
        with (
            StallMonitor(stack.storage_connection_string) as monitor,
            running_host(stack, workers=args.workers, log_file=log_file) as host,
        ):
            run_job(host, stack, {"n": 2 * args.workers, "message": f"warm-up {token} {index}"}, args.job_timeout)
            cpu = cpu_account(stack, host)
            cpu.start()
            metrics = run_job(host, stack, {"n": args.n, "message": f"bench {token} run {index}"}, args.job_timeout)
            metrics["cpu_s"] = cpu.stop()
            metrics["azurite_stalls_s"] = [round(d, 2) for _, d in monitor.stalls_between(metrics["t_submit"])]
        if metrics["tasks"] != 2 * args.n:
            raise RuntimeError(f"run {index}: expected {2 * args.n} tasks, found {metrics['tasks']}")
        log(f"run {index}: {metrics['tasks']} tasks, {metrics['tasks_per_s_active']:.0f} tasks/s active, "
            f"submit->completed {metrics['submit_to_completed_s']:.2f}s")  # fmt: skip
        runs.append(metrics)
    return runs


def measure_raw(stack: Stack, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both raw loops, each on a fresh, warmed-up Azurite watched by a stall monitor."""
    results = []
    for label, loop in (
        (f"{args.workers} processes", lambda c, cb: raw_concurrent(c, args.raw_messages, args.workers, RawShape(), cb)),
        ("1 thread", lambda c, cb: raw_single(c, args.raw_messages, on_start=cb)),
    ):
        restart_azurite(stack)
        conn = stack.storage_connection_string
        raw_single(conn, 100)  # warm-up on its own queue
        log(f"raw loop: {args.raw_messages} messages, {label}")
        azurite_pid = stack.azurite.process.pid if stack.azurite else -1
        before: list[float] = []

        def started(pid: int = azurite_pid, into: list[float] = before) -> None:
            into[:] = [process_cpu_seconds(pid), machine_busy_seconds()]

        with StallMonitor(conn) as monitor:
            result = loop(conn, started)
        client, azurite = result["client_cpu_s"], process_cpu_seconds(azurite_pid) - before[0]
        machine = machine_busy_seconds() - before[1]
        result["cpu_s"] = {
            "client": round(client, 2),
            "azurite": round(azurite, 2),
            "other": round(max(0.0, machine - client - azurite), 2),
            "machine": round(machine, 2),
        }
        result["azurite_stalls_s"] = [round(d, 2) for _, d in monitor.stalls_between(0)]
        results.append(result)
    return results[0], results[1]


# -- report --------------------------------------------------------------------------------------


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def p50_p95(stats: dict[str, Any]) -> str:
    return f"{ms(stats['p50'])} / {ms(stats['p95'])}"


def cpu_per_1000(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median over runs of each process group's CPU seconds per 1000 tasks (measured job only)."""
    groups = runs[0]["cpu_s"].keys()
    return {g: round(statistics.median(1000 * r["cpu_s"][g] / r["tasks"] for r in runs), 2) for g in groups}


def build_report(
    args: argparse.Namespace, raw: dict[str, Any], raw1: dict[str, Any], runs: list[dict[str, Any]]
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "timestamp": utc_stamp(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "args": vars(args),
        "raw_concurrent": raw,
        "raw_single_thread": raw1,
        "runs": runs,
    }
    if not runs:
        return report
    # A run overlapped by an Azurite pause measures Azurite, not geoetl: leave it out if others remain.
    clean = [r for r in runs if not r["azurite_stalls_s"]] or runs
    report["runs_used"] = [runs.index(r) + 1 for r in clean]
    active = [r["tasks_per_s_active"] for r in clean]
    boundaries = [b for r in clean for b in r["boundaries"]]
    report["geoetl"] = {
        "tasks_per_s_active_median": statistics.median(active),
        "tasks_per_s_full_median": statistics.median(r["tasks_per_s_full"] for r in clean),
        "submit_to_completed_s": summary([r["submit_to_completed_s"] for r in clean]),
        "handoff_s": summary([b["handoff_s"] for b in boundaries]),
        "handoff_to_stage_created_s": summary([b["to_stage_created_s"] for b in boundaries]),
        "handoff_stage_created_to_first_start_s": summary([b["stage_created_to_first_start_s"] for b in boundaries]),
        "submit_to_first_task_s": summary([r["submit_to_first_task_s"] for r in clean]),
        "last_task_to_completed_s": summary([r["last_task_to_completed_s"] for r in clean]),
        "queue_wait_s": summary([w for r in clean for w in r["queue_waits_s"]]),
        "cpu_s_per_1000_tasks": cpu_per_1000(clean),
    }
    report["ratio_geoetl_over_raw"] = statistics.median(active) / raw["rate"]
    for r in runs:
        r["queue_waits_s"] = summary(r.pop("queue_waits_s"))  # keep the JSON small
    return report


def stall_note(stalls: list[float]) -> str:
    return f"  [Azurite stalled {sum(stalls):.0f} s]" if stalls else ""


def machine_row(report: dict[str, Any]) -> tuple[str, str]:
    def one(cpu: dict[str, float] | None) -> str:
        if not cpu:
            return "-"
        busy = f"{cpu['busy_share']:.0%} busy, " if "busy_share" in cpu else ""
        return f"{busy}load {cpu['load_1m']:.1f}"

    before, after = report.get("background_cpu_before"), report.get("background_cpu_after")
    return ("other load on the machine: before / after", f"{one(before)} / {one(after)}")


def result_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    raw, raw1 = report["raw_concurrent"], report["raw_single_thread"]
    rows = [
        (
            f"raw Azurite round trip, {raw['workers']} processes",
            f"{raw['rate']:.0f} msg/s{stall_note(raw['azurite_stalls_s'])}",
        ),
        ("raw Azurite round trip, 1 thread", f"{raw1['rate']:.0f} msg/s{stall_note(raw1['azurite_stalls_s'])}"),
    ]
    per_k = {k: 1000 * v / raw["messages"] for k, v in raw["cpu_s"].items()}
    rows.append(
        (
            "raw CPU s per 1000 msgs (2 processes)",
            f"client {per_k['client']:.1f}, azurite {per_k['azurite']:.1f}, other {per_k['other']:.1f}; "
            f"all {per_k['machine']:.1f}",
        )
    )
    geo = report.get("geoetl")
    if not geo:
        return [
            *rows,
            ("geoetl", "not measured (local host unavailable or --raw-only)"),
            machine_row(report),
            *noise_rows(report),
        ]
    runs = report["runs"]
    mark = [f"*stall {sum(r['azurite_stalls_s']):.0f}s" if r["azurite_stalls_s"] else "" for r in runs]
    per_run_active = ", ".join(f"{r['tasks_per_s_active']:.0f}{m}" for r, m in zip(runs, mark, strict=True))
    per_run_full = ", ".join(f"{r['tasks_per_s_full']:.0f}{m}" for r, m in zip(runs, mark, strict=True))
    ratio = report["ratio_geoetl_over_raw"]
    verdict = "OK" if ratio >= TARGET_RATIO else "BELOW TARGET"
    wall = geo["submit_to_completed_s"]
    used = report["runs_used"]
    rows += [
        (
            "geoetl tasks/s, first task start -> completed",
            f"{geo['tasks_per_s_active_median']:.0f}  (runs: {per_run_active})",
        ),
        ("geoetl tasks/s, submit -> completed", f"{geo['tasks_per_s_full_median']:.0f}  (runs: {per_run_full})"),
        (f"ratio geoetl/raw (target >= {TARGET_RATIO})", f"{ratio:.3f}  {verdict}"),
        ("submit -> completed p50 / max", f"{wall['p50']:.2f} s / {wall['max']:.2f} s"),
        (f"stage hand-off p50 / p95 (n={geo['handoff_s']['count']})", p50_p95(geo["handoff_s"])),
        ("  last task -> next stage row created", p50_p95(geo["handoff_to_stage_created_s"])),
        ("  stage row created -> its first task start", p50_p95(geo["handoff_stage_created_to_first_start_s"])),
        ("submit -> first task start p50 / p95", p50_p95(geo["submit_to_first_task_s"])),
        ("last task -> job completed p50 / p95", p50_p95(geo["last_task_to_completed_s"])),
        (f"task queue wait p50 / p95 (n={geo['queue_wait_s']['count']})", p50_p95(geo["queue_wait_s"])),
    ]
    cpu = geo["cpu_s_per_1000_tasks"]
    rows.append(
        (
            "CPU s per 1000 tasks (measured jobs)",
            ", ".join(f"{k} {v:.1f}" for k, v in cpu.items() if k != "machine") + f"; all {cpu['machine']:.1f}",
        )
    )
    if len(used) < len(runs):
        rows.append(("runs used for the geoetl figures", f"{used} (the others overlapped an Azurite stall)"))
    return [*rows, machine_row(report), *noise_rows(report)]


def other_share(cpu: dict[str, float]) -> float:
    return cpu["other"] / cpu["machine"] if cpu.get("machine") else 0.0


def noise_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """A warning when other processes took a real share of the CPU while we measured."""
    shares = {"raw loop": other_share(report["raw_concurrent"]["cpu_s"])}
    for index, run in enumerate(report["runs"], 1):
        shares[f"run {index}"] = other_share(run["cpu_s"])
    noisy = {k: v for k, v in shares.items() if v >= NOISE_SHARE}
    if not noisy:
        return []
    where = ", ".join(f"{k} {v:.0%}" for k, v in noisy.items())
    return [("WARNING: CPU taken by other processes", f"{where} of busy CPU: figures and ratio unreliable")]


def print_report(report: dict[str, Any]) -> None:
    rows = result_rows(report)
    width = max(len(k) for k, _ in rows)
    rule = "-" * (width + 36)
    print(
        f"\ngeoetl throughput benchmark {report['timestamp']} ({report['cpu_count']} CPUs, Python {report['python']})"
    )
    print(rule)
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    print(rule)
    raw, raw1 = report["raw_concurrent"], report["raw_single_thread"]
    notes = [
        f"raw: {raw['messages']} base64 JSON messages ({len(raw_body(0))} chars, shaped like a TaskMessage) on a fresh "
        f"queue; {raw['loop']}. Rate = messages / (last delete - common start); the send phase took "
        f"{raw['send_phase_seconds']:.2f} s of {raw['seconds']:.2f} s. Reference: {raw1['messages']} messages, "
        f"{raw1['loop']}.",
    ]
    if report.get("geoetl"):
        args = report["args"]
        notes.append(
            f"geoetl: per run a local host with {args['workers']} workers runs a warm-up hello_world "
            f"(n={2 * args['workers']}), then the measured hello_world n={args['n']} ({2 * args['n']} tasks in 2 "
            f"stages), submitted over HTTP and polled until completed; {args['repeat']} runs, each a new job. "
            "From Postgres timestamps: tasks/s = 2n / (jobs.completed_at - first tasks.started_at), median of runs "
            "(the ratio uses it); hand-off = first started_at of stage k+1 - last completed_at of stage k, split at "
            "stages.created_at of stage k+1; queue wait = tasks.started_at - created_at (mostly fan-out backlog). "
            "CPU: /proc user+system seconds of Azurite, the host (supervisor + workers), this database's Postgres "
            "backends and this script; other = the rest of the machine's busy time."
        )
    notes.append(
        "Each raw loop and each geoetl run gets a fresh in-memory Azurite (its queue GC, every 60 s, can pause it "
        "for seconds to minutes after thousands of messages); a probe flags any pause >= 1 s and such runs are "
        "left out of the figures when others remain."
        if report["args"]["azurite"] == "memory"
        else "Azurite ran with on-disk persistence (--azurite disk), a fresh instance per raw loop and per run."
    )
    print("What was measured:")
    for note in notes:
        print(textwrap.fill(note, width=100, initial_indent="- ", subsequent_indent="  "))


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="hello_world n (tasks per stage; max 1000)")
    parser.add_argument("--workers", type=int, default=2, help="host worker processes (and raw-loop processes)")
    parser.add_argument("--raw-messages", type=int, default=2000, help="messages for each raw measurement")
    parser.add_argument("--repeat", type=int, default=3, help="hello_world jobs to run (one hand-off each)")
    parser.add_argument("--job-timeout", type=float, default=900.0, help="seconds to wait for one job")
    parser.add_argument("--raw-only", action="store_true", help="measure only the raw queue loop")
    parser.add_argument(
        "--azurite", choices=("memory", "disk"), default="memory", help="Azurite persistence (default: memory)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sigterm_as_keyboard_interrupt()
    token = unique_token()
    runs: list[dict[str, Any]] = []
    background = background_cpu()
    try:
        work_dir = OUT_DIR / f"stack-{os.getpid()}"  # Azurite log; kept only if the run fails
        with running_stack(work_dir, azurite_in_memory=args.azurite == "memory") as stack:
            raw, raw1 = measure_raw(stack, args)
            if not args.raw_only and not local_host_available():
                log("local_host/__main__.py does not exist yet: skipping the geoetl part")
            elif not args.raw_only:
                runs = run_jobs(stack, args, token)
    except KeyboardInterrupt:
        log("interrupted; stack stopped and database dropped")
        return 130
    shutil.rmtree(work_dir, ignore_errors=True)
    report = build_report(args, raw, raw1, runs)
    report["background_cpu_before"] = background
    report["background_cpu_after"] = background_cpu()
    print_report(report)
    path = write_report("throughput", report)
    print(f"JSON: {path.relative_to(OUT_DIR.parent.parent)}")
    return 0 if runs or args.raw_only else 1


if __name__ == "__main__":
    sys.exit(main())
