"""``start``: run N worker processes as N scaled-out instances, replace crashed ones, stop them gracefully."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from local_host.host_config import HostConfigError, load_host_config
from local_host.json_logging import configure_logging
from local_host.options import HostOptions

logger = logging.getLogger("local_host.supervisor")

STARTUP_TIMEOUT_SECONDS = 120.0
RESTART_DELAY_SECONDS = 1.0
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


@dataclass
class WorkerSlot:
    index: int
    process: subprocess.Popen[bytes] | None = None
    started_at: datetime | None = None
    ready_read_fd: int | None = None
    restart_at: float | None = None
    restarts: int = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def state(self) -> dict[str, Any]:
        running = self.process is not None and self.restart_at is None
        return {
            "index": self.index,
            "pid": self.process.pid if running and self.process else None,
            "started_at": self.started_at.isoformat() if running and self.started_at else None,
            "restarts": self.restarts,
        }


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w", encoding="utf-8") as stream:
        json.dump(document, stream, indent=2)
    os.replace(temporary, path)


def _connect_host(host: str) -> str:
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104 - mapping, not binding
    return wildcard.get(host, host)


def port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((_connect_host(host), port), timeout=0.5):
            return True
    except OSError:
        return False


class Supervisor:
    def __init__(self, options: HostOptions) -> None:
        self.options = options
        self.slots = [WorkerSlot(index) for index in range(options.workers)]
        self.stop_requested = threading.Event()
        self._environment = dict(os.environ)
        path = self._environment.get("PYTHONPATH")
        self._environment["PYTHONPATH"] = f"{path}{os.pathsep}{PACKAGE_PARENT}" if path else PACKAGE_PARENT

    # -- processes -------------------------------------------------------------------------------

    def _spawn(self, slot: WorkerSlot, *, with_ready_pipe: bool) -> None:
        arguments = [sys.executable, "-m", "local_host", "worker", "--index", str(slot.index)]
        arguments += [*self.options.worker_arguments(), "--parent-pid", str(os.getpid())]
        pass_fds: tuple[int, ...] = ()
        write_fd = None
        if with_ready_pipe:
            read_fd, write_fd = os.pipe()
            slot.ready_read_fd = read_fd
            arguments += ["--ready-fd", str(write_fd)]
            pass_fds = (write_fd,)
        slot.process = subprocess.Popen(
            arguments, env=self._environment, pass_fds=pass_fds, start_new_session=True, stdin=subprocess.DEVNULL
        )
        if write_fd is not None:
            os.close(write_fd)
        slot.started_at = datetime.now(UTC)
        slot.restart_at = None
        logger.info("Worker %d started (pid %d)", slot.index, slot.process.pid, extra={"worker_index": slot.index})

    def write_state(self) -> None:
        if self.options.state_file is None:
            return
        document = {
            "supervisor_pid": os.getpid(),
            "host": self.options.host,
            "port": self.options.port,
            "workers": [slot.state() for slot in self.slots],
        }
        try:
            write_json_atomically(self.options.state_file, document)
        except OSError:
            logger.warning("Could not write state file %s", self.options.state_file, exc_info=True)

    def _remove_state(self) -> None:
        if self.options.state_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.options.state_file.unlink()

    def _stop_workers(self) -> None:
        """SIGTERM every worker, wait up to the grace period, SIGKILL the rest."""
        for slot in self.slots:
            if slot.alive and slot.process is not None:
                slot.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.options.grace_seconds
        while any(slot.alive for slot in self.slots) and time.monotonic() < deadline:
            time.sleep(0.05)
        for slot in self.slots:
            if slot.alive and slot.process is not None:
                logger.warning("Worker %d did not stop within %ss; killing it", slot.index, self.options.grace_seconds)
                slot.process.kill()
        for slot in self.slots:
            if slot.process is not None:
                slot.process.wait()

    # -- phases ----------------------------------------------------------------------------------

    def _wait_until_ready(self) -> bool:
        pending = {slot.ready_read_fd: slot for slot in self.slots if slot.ready_read_fd is not None}
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while pending:
            if self.stop_requested.is_set():
                return False
            for slot in pending.values():
                if not slot.alive:
                    code = slot.process.returncode if slot.process else None
                    logger.error("Worker %d exited with code %s during start-up", slot.index, code)
                    return False
            if time.monotonic() > deadline:
                logger.error("Workers did not become ready within %ss", STARTUP_TIMEOUT_SECONDS)
                return False
            readable, _, _ = select.select(list(pending), [], [], 0.2)
            for fd in readable:
                data = os.read(fd, 64)
                if not data:  # closed without a word: the worker is exiting
                    continue
                os.close(fd)
                pending.pop(fd).ready_read_fd = None
        while not port_accepts(self.options.host, self.options.port):
            if time.monotonic() > deadline or self.stop_requested.is_set():
                logger.error("Port %d does not accept connections", self.options.port)
                return False
            time.sleep(0.1)
        return True

    def _close_ready_pipes(self) -> None:
        for slot in self.slots:
            if slot.ready_read_fd is not None:
                os.close(slot.ready_read_fd)
                slot.ready_read_fd = None

    def _watch(self) -> None:
        while not self.stop_requested.wait(0.1):
            changed = False
            for slot in self.slots:
                if slot.restart_at is not None:
                    if time.monotonic() >= slot.restart_at:
                        slot.restarts += 1
                        self._spawn(slot, with_ready_pipe=False)
                        pid = slot.process.pid if slot.process else -1
                        logger.warning("Worker %d restarted (pid %d)", slot.index, pid)
                        changed = True
                elif slot.process is not None and slot.process.poll() is not None:
                    logger.warning(
                        "Worker %d (pid %d) exited unexpectedly with code %s; restarting it in %.0fs",
                        slot.index,
                        slot.process.pid,
                        slot.process.returncode,
                        RESTART_DELAY_SECONDS,
                        extra={"worker_index": slot.index, "exit_code": slot.process.returncode},
                    )
                    slot.restart_at = time.monotonic() + RESTART_DELAY_SECONDS
                    changed = True
            if changed:
                self.write_state()

    def run(self) -> int:
        try:
            config = load_host_config(self.options.app_dir)
        except HostConfigError as error:
            logger.error("%s", error)
            return 1
        if port_accepts(self.options.host, self.options.port):
            # SO_REUSEPORT would let us bind anyway and silently share traffic with whatever is there.
            logger.error("Port %d is already in use (another host still running?)", self.options.port)
            return 1
        for slot in self.slots:
            self._spawn(slot, with_ready_pipe=True)
        self.write_state()
        ready = self._wait_until_ready()
        self._close_ready_pipes()
        if not ready:
            self._stop_workers()
            self._remove_state()
            return 0 if self.stop_requested.is_set() else 1
        prefix = config.http.route_prefix
        url = f"http://{self.options.host}:{self.options.port}" + (f"/{prefix}" if prefix else "")
        count = len(self.slots)
        print(f"Host started: {count} worker{'s' if count != 1 else ''}, {url}", flush=True)
        self._watch()
        logger.info("Stopping %d workers", count)
        self._stop_workers()
        self._remove_state()
        logger.info("Host stopped")
        return 0


def run_supervisor(options: HostOptions) -> int:
    configure_logging(None)
    supervisor = Supervisor(options)

    def request_stop(signum: int, frame: FrameType | None) -> None:
        supervisor.stop_requested.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, request_stop)
    return supervisor.run()
