"""Chaos run: a hello_world job while host worker processes are SIGKILLed and replaced.

    .venv/bin/python -m bench.chaos [--n 500] [--workers 3] [--kills 20] [--sleep-ms 50]

In one run: start a private stack (Azurite, throwaway Postgres database), start the local
Functions host with --workers N, submit hello_world with n greetings (2n tasks), and SIGKILL a
random worker every few seconds until --kills kills happened (the supervisor replaces each, as
the platform replaces a crashed instance). Then check in Postgres that the job completed, every
task is completed exactly once (stage counters, which only a task's first completion bumps,
equal the task counts), and the result has n distinct replies. Prints the figures and writes
them to bench/out/chaos-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.common import (
    OUT_DIR,
    log,
    running_host,
    running_stack,
    sigterm_as_keyboard_interrupt,
    submit_job,
    unique_token,
    utc_stamp,
    wait_for_job,
    write_report,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=500, help="greetings (the job has 2n tasks)")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--sleep-ms", type=int, default=2000, help="work per task, so kills hit running tasks")
    parser.add_argument("--kill-interval", type=float, nargs=2, default=(0.8, 2.0), metavar=("MIN", "MAX"))
    parser.add_argument("--message-lease-seconds", type=int, default=10, help="host receive visibility")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--seed", type=int, default=None)
    return parser.parse_args()


def worker_pids(state_file: Path) -> list[int]:
    import json

    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [int(w["pid"]) for w in state.get("workers", []) if isinstance(w, dict) and w.get("pid")]


class Killer(threading.Thread):
    """SIGKILLs a random live worker at random intervals until ``kills`` kills or stopped."""

    def __init__(self, state_file: Path, kills: int, interval: tuple[float, float], rng: random.Random) -> None:
        super().__init__(name="chaos-killer", daemon=True)
        self.state_file, self.target, self.interval, self.rng = state_file, kills, interval, rng
        self.killed: list[dict[str, Any]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        while len(self.killed) < self.target and not self.stop.wait(self.rng.uniform(*self.interval)):
            pids = worker_pids(self.state_file)
            if not pids:
                continue
            victim = self.rng.choice(pids)
            try:
                os.kill(victim, signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.killed.append({"pid": victim, "at_s": round(time.monotonic() - started, 2)})
            log(f"chaos: SIGKILL worker {victim} ({len(self.killed)}/{self.target})")


def verify(conninfo: str, schema: str, job_id: str) -> dict[str, Any]:
    with psycopg.connect(conninfo) as conn:
        conn.execute(f"SET search_path TO {schema}")
        by_status: dict[str, int] = dict(
            conn.execute("SELECT status, count(*) FROM tasks WHERE job_id = %s GROUP BY status", (job_id,)).fetchall()
        )
        stages = conn.execute(
            "SELECT stage, task_count, completed_count, failed_count FROM stages WHERE job_id = %s ORDER BY stage",
            (job_id,),
        ).fetchall()
        attempts: dict[int, int] = dict(
            conn.execute(
                "SELECT attempts, count(*) FROM tasks WHERE job_id = %s GROUP BY attempts", (job_id,)
            ).fetchall()
        )
        dead_letters = conn.execute("SELECT count(*) FROM dead_letters WHERE job_id = %s", (job_id,)).fetchone()
    tasks = sum(by_status.values())
    return {
        "tasks": tasks,
        "tasks_by_status": by_status,
        "completed": by_status.get("completed", 0),
        # A task completed twice would bump its stage's completed_count twice.
        "duplicate_completions": sum(completed for _, _, completed, _ in stages) - by_status.get("completed", 0),
        "stage_counters": [{"stage": s, "task_count": t, "completed": c, "failed": f} for s, t, c, f in stages],
        "attempts_histogram": {int(k): v for k, v in sorted(attempts.items())},
        "reruns_after_kills": sum(v * (int(k) - 1) for k, v in attempts.items()),
        "dead_letters": dead_letters[0] if dead_letters else 0,
    }


def main() -> int:
    args = parse_args()
    sigterm_as_keyboard_interrupt()
    rng = random.Random(args.seed)
    stamp = utc_stamp()
    with running_stack(OUT_DIR / f"chaos-{stamp}", azurite_in_memory=False) as stack:
        settings = stack.app_settings(
            TASK_LEASE_SECONDS="20",
            JANITOR_SCHEDULE="*/5 * * * * *",
            JANITOR_OUTBOX_GRACE_SECONDS="10",
            JANITOR_LEASE_GRACE_SECONDS="2",
        )
        log_file = OUT_DIR / f"chaos-{stamp}" / "host.log"
        with running_host(
            stack,
            workers=args.workers,
            log_file=log_file,
            settings=settings,
            extra_args=["--message-lease-seconds", str(args.message_lease_seconds)],
        ) as host:
            params = {"n": args.n, "sleep_ms": args.sleep_ms, "message": f"chaos-{unique_token()}"}
            started = time.monotonic()
            job_id = submit_job(host.base_url, "hello_world", params)["job_id"]
            killer = Killer(host.state_file, args.kills, tuple(args.kill_interval), rng)
            killer.start()
            try:
                status = wait_for_job(host.base_url, job_id, timeout=args.timeout)
            finally:
                killer.stop.set()
                killer.join()
            elapsed = time.monotonic() - started
        figures = verify(stack.conninfo(), stack.schema, job_id)
    replies = (status.get("result") or {}).get("replies", [])
    report = {
        "args": vars(args),
        "job_id": job_id,
        "status": status["status"],
        "kills": len(killer.killed),
        "kill_log": killer.killed,
        "distinct_replies": len(set(replies)),
        "submit_to_terminal_s": round(elapsed, 2),
        **figures,
    }
    path = write_report("chaos", report)
    ok = (
        status["status"] == "completed"
        and figures["completed"] == figures["tasks"] == 2 * args.n
        and figures["duplicate_completions"] == 0
        and len(set(replies)) == args.n
    )
    print(
        f"\nchaos: {'PASS' if ok else 'FAIL'}  kills={len(killer.killed)}  tasks={figures['tasks']}  "
        f"completed={figures['completed']}  duplicate_completions={figures['duplicate_completions']}  "
        f"reruns_after_kills={figures['reruns_after_kills']}  distinct_replies={len(set(replies))}/{args.n}  "
        f"time={elapsed:.1f}s  status={status['status']}\n"
        f"attempts histogram: {figures['attempts_histogram']}  dead letters: {figures['dead_letters']}\n"
        f"report: {path}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
