"""Runs function_app under the local Functions host as a subprocess, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.azurite import free_port
from schemas.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def settings_environment(settings: Settings, log_level: str = "INFO") -> dict[str, str]:
    """App settings as the host's environment (what local.settings.json Values would hold)."""
    env = {
        "AzureWebJobsStorage": settings.storage_connection_string.get_secret_value(),
        "JOB_QUEUE": settings.job_queue,
        "TASK_QUEUE": settings.task_queue,
        "HIGH_PRIORITY_TASK_QUEUE": settings.high_priority_task_queue,
        "JANITOR_SCHEDULE": settings.janitor_schedule,
        "JANITOR_LEASE_GRACE_SECONDS": str(settings.janitor_lease_grace_seconds),
        "JANITOR_OUTBOX_GRACE_SECONDS": str(settings.janitor_outbox_grace_seconds),
        "JANITOR_STALLED_JOB_AFTER_SECONDS": str(settings.janitor_stalled_job_after_seconds),
        "TASK_LEASE_SECONDS": str(settings.task_lease_seconds),
        "CIRCUIT_RESET_SECONDS": str(settings.circuit_reset_seconds),
        "POSTGRES_HOST": settings.postgres_host,
        "POSTGRES_PORT": str(settings.postgres_port),
        "POSTGRES_DB": settings.postgres_db,
        "POSTGRES_USER": settings.postgres_user,
        "POSTGRES_PASSWORD": settings.postgres_password.get_secret_value(),
        "POSTGRES_SCHEMA": settings.postgres_schema,
        "TASK_MAX_ATTEMPTS": str(settings.task_max_attempts),
        "TASK_RETRY_BASE_SECONDS": str(settings.task_retry_base_seconds),
        "TASK_RETRY_MAX_SECONDS": str(settings.task_retry_max_seconds),
        "MAX_REQUEST_BYTES": str(settings.max_request_bytes),
        "LOG_LEVEL": log_level,
    }
    return env


@dataclass
class RunningHost:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def state_file(self) -> Path:
        return self.log_path.with_suffix(".state.json")

    def worker_pids(self) -> list[int]:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return []
        return [int(w["pid"]) for w in state.get("workers", []) if w.get("pid")]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def request(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read() or b"null")

    def wait_for_job(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Poll the status URL; connection errors (every worker restarting at once) are retried."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                code, status = self.request("GET", f"/jobs/{job_id}")
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.25)
                continue
            assert code == 200, status
            if status["status"] in ("completed", "completed_with_errors", "failed", "cancelled"):
                return status
            time.sleep(0.25)
        raise TimeoutError(f"job {job_id} not terminal after {timeout}s; host log: {self.log_path}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_host(
    settings: Settings,
    workers: int,
    log_path: Path,
    extra_env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
) -> RunningHost:
    port = free_port()
    env = {**os.environ, **settings_environment(settings), **(extra_env or {})}
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the child process
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local_host",
            "start",
            "--app-dir",
            str(PROJECT_ROOT),
            "--workers",
            str(workers),
            "--port",
            str(port),
            "--settings",
            str(log_path.with_suffix(".no-settings.json")),
            "--state-file",
            str(log_path.with_suffix(".state.json")),
            "--grace-seconds",
            "10",
            *(extra_args or []),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    host = RunningHost(process, port, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"host exited with {process.returncode}: {log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{host.base_url}/job-types", timeout=2) as resp:
                if resp.status == 200:
                    return host
        except urllib.error.HTTPError as error:
            if error.code == 401:  # up, and requiring a function key (LOCAL_HOST_REQUIRE_FUNCTION_KEY)
                return host
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)
    host.stop()
    raise RuntimeError(f"host not ready after 60s: {log_path.read_text()[-3000:]}")
