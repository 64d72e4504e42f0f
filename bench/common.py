"""Reusable pieces for hand-run benchmarks: a private stack (Azurite + throwaway Postgres database)
and the local Functions host as a subprocess. Measurement helpers are in bench/measure.py.

Everything that is started can be stopped with the matching ``stop_*`` function (idempotent) or
used through the ``running_*`` context managers, which clean up on errors and Ctrl-C as well.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.measure import (  # re-exported: benchmarks import these from bench.common too
    OUT_DIR,
    PROJECT_ROOT,
    http_json,
    log,
    percentile,
    submit_job,
    summary,
    unique_token,
    utc_stamp,
    wait_for_job,
    write_report,
)
from devstack.azurite import AzuriteProcess, free_port, start_azurite
from devstack.postgres import PostgresServer, drop_database, ensure_database, usable_server
from devstack.stack_state import pid_alive
from repositories.migrator import apply_migrations

__all__ = [
    "OUT_DIR",
    "PROJECT_ROOT",
    "HostProcess",
    "Stack",
    "http_json",
    "local_host_available",
    "log",
    "percentile",
    "restart_azurite",
    "running_host",
    "running_stack",
    "sigterm_as_keyboard_interrupt",
    "start_host",
    "start_stack",
    "stop_host",
    "stop_stack",
    "submit_job",
    "summary",
    "unique_token",
    "utc_stamp",
    "wait_for_job",
    "worker_pids",
    "write_report",
]

READY_MARKER = "Host started:"


def sigterm_as_keyboard_interrupt() -> None:
    """Make SIGTERM unwind like Ctrl-C so ``finally`` blocks stop the stack."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    # A shell starting us in the background sets SIGINT to "ignore"; Ctrl-C must still unwind.
    signal.signal(signal.SIGINT, signal.default_int_handler)


# -- stack: Azurite + Postgres database ----------------------------------------------------------


@dataclass
class Stack:
    work_dir: Path
    schema: str
    postgres: PostgresServer | None = None
    database: str | None = None
    azurite: AzuriteProcess | None = None
    postgres_scope: ExitStack = field(default_factory=ExitStack)  # stops our own Postgres server, if any
    azurite_in_memory: bool = True
    azurite_starts: int = 0
    job_queue: str = "geospatial-jobs"
    task_queue: str = "geospatial-tasks"

    @property
    def storage_connection_string(self) -> str:
        assert self.azurite is not None, "stack has no Azurite"
        return self.azurite.connection_string

    def postgres_conninfo_admin(self) -> str:
        """The server's ``postgres`` database (for pg_stat_activity, CREATE/DROP DATABASE)."""
        assert self.postgres is not None, "stack has no Postgres"
        return self.postgres.conninfo("postgres")

    def conninfo(self) -> str:
        assert self.postgres is not None and self.database is not None, "stack has no database"
        return self.postgres.conninfo(self.database)

    def app_settings(self, **overrides: str) -> dict[str, str]:
        """App settings (env vars) for the Function App against this stack: the defaults of
        local.settings.example.json, with storage, queues, Postgres and logging pointed here."""
        assert self.postgres is not None and self.database is not None
        settings = example_settings()
        settings.update(
            {
                "AzureWebJobsStorage": self.storage_connection_string,
                "JOB_QUEUE": self.job_queue,
                "TASK_QUEUE": self.task_queue,
                "POSTGRES_HOST": self.postgres.host,
                "POSTGRES_PORT": str(self.postgres.port),
                "POSTGRES_DB": self.database,
                "POSTGRES_USER": self.postgres.user,
                "POSTGRES_PASSWORD": self.postgres.password,
                "POSTGRES_SCHEMA": self.schema,
                "LOG_LEVEL": "WARNING",
                "LOCAL_HOST_REQUIRE_FUNCTION_KEY": "false",
                "SUBMIT_RATE_PER_MINUTE": "0",  # benchmarks measure the engine, not the submission limit
            }
        )
        settings.update(overrides)
        return settings


def example_settings() -> dict[str, str]:
    """Values of local.settings.example.json (every app setting with its local default)."""
    path = PROJECT_ROOT / "local.settings.example.json"
    try:
        values = json.loads(path.read_text(encoding="utf-8")).get("Values", {})
    except (OSError, ValueError):
        values = {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def _start_azurite(stack: Stack) -> None:
    stack.azurite_starts += 1
    location = stack.work_dir / f"azurite-{stack.azurite_starts}"
    stack.azurite = start_azurite(
        location=location, in_memory=stack.azurite_in_memory, log_file=stack.work_dir / "azurite.log"
    )


def _stop_azurite(stack: Stack) -> None:
    if stack.azurite is not None:
        try:
            stack.azurite.stop()
        except Exception as exc:
            log(f"could not stop azurite: {exc}")
        stack.azurite = None
    for location in stack.work_dir.glob("azurite-*"):
        shutil.rmtree(location, ignore_errors=True)


def restart_azurite(stack: Stack) -> None:
    """Replace the stack's Azurite with a fresh, empty one (new ports): nothing queued, no GC backlog.

    Azurite's queue GC runs 60 s after start and every 60 s after that; in-memory it stores one
    extent per message and sweeping thousands of them blocks its event loop for seconds to
    minutes (see bench/README.md). Start each measured phase on a fresh instance.
    """
    _stop_azurite(stack)
    _start_azurite(stack)
    assert stack.azurite is not None
    log(f"fresh azurite: queue port {stack.azurite.queue_port}")


def start_stack(
    work_dir: Path, *, db_prefix: str = "geoetl_bench", schema: str = "geoetl", azurite_in_memory: bool = True
) -> Stack:
    """Private Azurite on free ports (in-memory by default) + a fresh database with migrations applied.

    On failure everything already started is stopped again before the error propagates.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    stack = Stack(work_dir=work_dir, schema=schema, azurite_in_memory=azurite_in_memory)
    try:
        _start_azurite(stack)
        stack.postgres = stack.postgres_scope.enter_context(usable_server(os.environ, work_dir, "pg", say=log))
        stack.database = f"{db_prefix}_{os.getpid()}"
        drop_database(stack.postgres, stack.database)  # a leftover of a killed run with the same pid
        ensure_database(stack.postgres, stack.database)
        apply_migrations(stack.conninfo(), schema)
    except BaseException:
        stop_stack(stack)
        raise
    assert stack.azurite is not None
    log(
        f"stack up: azurite ({'in-memory' if azurite_in_memory else 'on disk'}) queue port "
        f"{stack.azurite.queue_port}, postgres {stack.postgres.host}:{stack.postgres.port}/{stack.database}"
    )
    return stack


def stop_stack(stack: Stack) -> None:
    """Drop the database and stop Azurite (and our own Postgres server); safe to call twice."""
    if stack.postgres is not None and stack.database is not None:
        try:
            drop_database(stack.postgres, stack.database)
        except Exception as exc:
            log(f"could not drop database {stack.database}: {exc}")
        stack.database = None
    _stop_azurite(stack)
    stack.postgres_scope.close()


@contextmanager
def running_stack(
    work_dir: Path, *, db_prefix: str = "geoetl_bench", schema: str = "geoetl", azurite_in_memory: bool = True
) -> Iterator[Stack]:
    stack = start_stack(work_dir, db_prefix=db_prefix, schema=schema, azurite_in_memory=azurite_in_memory)
    try:
        yield stack
    finally:
        stop_stack(stack)


# -- the local Functions host --------------------------------------------------------------------


@dataclass
class HostProcess:
    process: subprocess.Popen[bytes]
    port: int
    log_file: Path
    settings_file: Path
    state_file: Path
    workers: int
    started_at: float = field(default_factory=time.monotonic)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def local_host_available() -> bool:
    return (PROJECT_ROOT / "local_host" / "__main__.py").exists()


def start_host(
    stack: Stack,
    *,
    workers: int,
    log_file: Path,
    port: int | None = None,
    settings: Mapping[str, str] | None = None,
    startup_timeout: float = 120.0,
    extra_args: Sequence[str] = (),
) -> HostProcess:
    """Start ``python -m local_host start`` against ``stack`` and wait for its ready line.

    Every app setting goes through the environment (which wins over the settings file); the
    settings file written next to the log holds the same values, so nothing else leaks in.
    """
    port = port or free_port()
    values = dict(settings) if settings is not None else stack.app_settings()
    log_file.parent.mkdir(parents=True, exist_ok=True)
    settings_file = log_file.with_suffix(".settings.json")
    settings_file.write_text(json.dumps({"IsEncrypted": False, "Values": values}, indent=2), encoding="utf-8")
    state_file = log_file.with_suffix(".state.json")
    env = {**os.environ, **values, "PYTHONUNBUFFERED": "1"}
    args = [
        sys.executable, "-m", "local_host", "start",
        "--app-dir", str(PROJECT_ROOT),
        "--workers", str(workers),
        "--port", str(port),
        "--settings", str(settings_file),
        "--state-file", str(state_file),
        *extra_args,
    ]  # fmt: skip
    with open(log_file, "ab") as out:
        process = subprocess.Popen(
            args, cwd=PROJECT_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    host = HostProcess(process, port, log_file, settings_file, state_file, workers)
    deadline = time.monotonic() + startup_timeout
    try:
        while True:
            if READY_MARKER in log_file.read_text(encoding="utf-8", errors="replace"):
                break
            if process.poll() is not None:
                raise RuntimeError(f"local host exited with {process.returncode}; log tail:\n{host.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"local host not ready within {startup_timeout}s; log tail:\n{host.log_tail()}")
            time.sleep(0.1)
    except BaseException:
        stop_host(host)
        raise
    log(f"host up on port {port} with {workers} workers after {time.monotonic() - host.started_at:.1f}s")
    return host


def worker_pids(host: HostProcess) -> list[int]:
    """Worker pids from the host's state file (workers run in their own sessions)."""
    try:
        state = json.loads(host.state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [int(w["pid"]) for w in state.get("workers", []) if isinstance(w, dict) and w.get("pid")]


def _alive(pid: int) -> bool:
    return pid_alive(pid)


def stop_host(host: HostProcess, timeout: float = 45.0) -> int | None:
    """SIGTERM the supervisor (it drains its workers and exits 0); SIGKILL whatever is left after ``timeout``."""
    process = host.process
    workers = worker_pids(host)
    if process.poll() is None:
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"host did not stop within {timeout}s; killing it")
            with suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    deadline = time.monotonic() + 5.0
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in workers:
        if _alive(pid):
            log(f"host worker {pid} outlived the supervisor; killing it")
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return process.returncode


@contextmanager
def running_host(stack: Stack, *, workers: int, log_file: Path, **kwargs: Any) -> Iterator[HostProcess]:
    host = start_host(stack, workers=workers, log_file=log_file, **kwargs)
    try:
        yield host
    finally:
        code = stop_host(host)
        if code not in (0, None):
            log(f"host exited with code {code} (log: {log_file})")


_worker_pids = worker_pids  # older name, still used by bench/cog_benchmark.py
