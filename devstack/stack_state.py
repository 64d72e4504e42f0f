"""The state of the local stack in .stack/stack.json, and the process helpers around it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("postgres", "azurite", "host")  # start order; stopped in reverse


class StackError(RuntimeError):
    """Something the user has to fix (a port taken, a host that would not start, ...)."""


class StackPaths:
    """Where the stack keeps its files, for one checkout (tests use a temporary root)."""

    def __init__(self, root: Path = PROJECT_ROOT) -> None:
        self.root = root
        self.stack_dir = root / ".stack"
        self.state_file = self.stack_dir / "stack.json"
        self.lock_file = self.stack_dir / "stack.lock"
        self.settings_file = root / "local.settings.json"
        self.example_settings_file = root / "local.settings.example.json"
        self.pgdata = self.stack_dir / "pgdata"
        self.postgres_log = self.stack_dir / "postgres.log"
        self.azurite_dir = self.stack_dir / "azurite"
        self.azurite_log = self.stack_dir / "azurite.log"
        self.host_log = self.stack_dir / "host.log"
        self.host_state_file = self.stack_dir / "host.json"

    def show(self, path: Path) -> str:
        """``path`` relative to the repo root when it is inside it (for messages)."""
        return str(path.relative_to(self.root)) if path.is_relative_to(self.root) else str(path)


@dataclass
class ComponentState:
    started_by_us: bool
    pid: int | None = None
    port: int | None = None


@dataclass
class StackState:
    components: dict[str, ComponentState] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"version": 1, "components": {k: asdict(v) for k, v in self.components.items()}}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> StackState:
        raw = json.loads(text)["components"]
        components = {
            name: ComponentState(bool(entry["started_by_us"]), entry.get("pid"), entry.get("port"))
            for name, entry in raw.items()
            if name in COMPONENTS
        }
        for entry in components.values():
            if not all(isinstance(v, int | None) for v in (entry.pid, entry.port)):
                raise ValueError(f"pid and port must be integers: {entry}")
        return cls(components)


def load_state(path: Path) -> StackState:
    if not path.exists():
        return StackState()
    try:
        return StackState.from_json(path.read_text(encoding="utf-8"))
    except (ValueError, TypeError, AttributeError, KeyError) as error:
        print(f"warning: ignoring unreadable {path}: {error}", file=sys.stderr)
        return StackState()


def save_state(path: Path, state: StackState) -> None:
    """Write atomically; a state with nothing started by devstack removes the file."""
    if not any(entry.started_by_us for entry in state.components.values()):
        path.unlink(missing_ok=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(state.to_json() + "\n", encoding="utf-8")
    os.replace(temporary, path)


@contextlib.contextmanager
def stack_lock(paths: StackPaths) -> Iterator[None]:
    """Serialise up/down/run of the same checkout."""
    paths.stack_dir.mkdir(parents=True, exist_ok=True)
    with open(paths.lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pid_alive(pid: int | None, expect: str | None = None) -> bool:
    """True when ``pid`` runs (and, when /proc tells, its command line contains ``expect``)."""
    if not pid or pid <= 0:
        return False
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our own exited child: reap it
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if expect and cmdline.exists():
        with contextlib.suppress(OSError):
            return expect in cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
    return True


def group_alive(pgid: int) -> bool:
    """True while any process of the group led by ``pgid`` exists (reaping the leader when it is our child)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pgid, os.WNOHANG)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate_group(pgid: int, grace: float) -> None:
    """SIGTERM the process group led by ``pgid``, wait up to ``grace`` seconds, then SIGKILL what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        time.sleep(0.2)
        group_alive(pgid)


def postmaster(datadir: Path) -> tuple[int, int] | None:
    """(pid, port) of a live Postgres serving ``datadir``, from its postmaster.pid."""
    try:
        lines = (datadir / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    return (pid, port) if pid_alive(pid) else None
