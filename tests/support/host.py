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

from pydantic import SecretStr

from devstack.azurite import free_port
from schemas.settings import Settings, setting_env_names

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def settings_environment(settings: Settings, log_level: str = "INFO") -> dict[str, str]:
    """App settings as the host's environment (what local.settings.json Values would hold): every
    field of ``settings`` under the name the app reads it from."""
    env: dict[str, str] = {}
    for field, name in setting_env_names().items():
        value = getattr(settings, field)
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if value is None or value == "" or value == ():
            continue
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, tuple):
            value = ",".join(str(v) for v in value)
        env[name] = str(value)
    env["LOG_LEVEL"] = log_level
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
