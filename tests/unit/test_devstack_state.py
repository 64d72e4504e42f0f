"""devstack: the .stack/stack.json state file and the process helpers around it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devstack.stack import down, effective_config
from devstack.stack_state import (
    ComponentState,
    StackPaths,
    StackState,
    load_state,
    pid_alive,
    postmaster,
    save_state,
    terminate_group,
)


def test_state_round_trips_through_the_file(tmp_path: Path) -> None:
    path = tmp_path / ".stack" / "stack.json"
    state = StackState(
        {
            "postgres": ComponentState(False, None, 5432),
            "azurite": ComponentState(True, 123, 10000),
            "host": ComponentState(True, 456, 7071),
        }
    )
    save_state(path, state)
    assert load_state(path) == state
    assert json.loads(path.read_text(encoding="utf-8"))["version"] == 1
    assert not path.with_name("stack.json.tmp").exists()


def test_state_with_nothing_started_by_us_removes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "stack.json"
    save_state(path, StackState({"host": ComponentState(True, 1, 7071)}))
    assert path.exists()
    save_state(path, StackState({"postgres": ComponentState(False, None, 5432)}))
    assert not path.exists()
    save_state(path, StackState())  # idempotent
    assert not path.exists()


def test_missing_state_file_is_an_empty_state(tmp_path: Path) -> None:
    assert load_state(tmp_path / "stack.json") == StackState()


@pytest.mark.parametrize(
    "text",
    [
        "{broken",
        "[]",
        '{"components": {"host": {"pid": 1}}}',
        '{"components": {"host": {"started_by_us": true, "pid": "12"}}}',
    ],
)
def test_unreadable_state_file_is_ignored_with_a_warning(
    tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "stack.json"
    path.write_text(text, encoding="utf-8")
    assert load_state(path) == StackState()
    assert "ignoring unreadable" in capsys.readouterr().err


def test_unknown_components_are_dropped() -> None:
    text = '{"components": {"redis": {"started_by_us": true, "pid": 5}, "host": {"started_by_us": true, "pid": 6}}}'
    assert StackState.from_json(text) == StackState({"host": ComponentState(True, 6, None)})


def test_pid_alive_checks_the_command_line_marker() -> None:
    assert pid_alive(os.getpid())
    assert pid_alive(os.getpid(), "python")
    assert not pid_alive(os.getpid(), "definitely-not-in-my-command-line")
    assert not pid_alive(None)
    assert not pid_alive(0)


def test_pid_alive_is_false_for_an_exited_child() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not pid_alive(child.pid)


def test_terminate_group_stops_a_detached_process_group() -> None:
    grandchild = "[sys.executable, '-c', 'import time; time.sleep(60)']"
    script = f"import subprocess, sys, time\nsubprocess.Popen({grandchild})\ntime.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", script], start_new_session=True)
    time.sleep(0.3)  # let it start the grandchild
    assert pid_alive(child.pid)
    terminate_group(child.pid, grace=5.0)
    assert child.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(child.pid, 0)  # the grandchild went with it


def write_postmaster_pid(datadir: Path, pid: int, port: int) -> None:
    datadir.mkdir(parents=True)
    lines = [str(pid), str(datadir), "1700000000", str(port), "/tmp", "127.0.0.1", "  1234  5678", "ready"]
    (datadir / "postmaster.pid").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_postmaster_reads_pid_and_port_of_a_live_server(tmp_path: Path) -> None:
    write_postmaster_pid(tmp_path / "pgdata", os.getpid(), 55432)
    assert postmaster(tmp_path / "pgdata") == (os.getpid(), 55432)


def test_postmaster_ignores_a_stale_or_missing_pid_file(tmp_path: Path) -> None:
    assert postmaster(tmp_path / "nothing") is None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    write_postmaster_pid(tmp_path / "pgdata", child.pid, 55432)
    assert postmaster(tmp_path / "pgdata") is None
    (tmp_path / "pgdata" / "postmaster.pid").write_text("garbage", encoding="utf-8")
    assert postmaster(tmp_path / "pgdata") is None


def test_effective_config_uses_the_port_of_our_own_postgres(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path)
    environ = {"POSTGRES_PORT": "5432"}
    assert effective_config(paths, environ).postgres.port == 5432
    ours = StackState({"postgres": ComponentState(True, None, 55432)})
    assert effective_config(paths, environ, ours).postgres.port == 55432
    theirs = StackState({"postgres": ComponentState(False, None, 6543)})
    assert effective_config(paths, environ, theirs).postgres.port == 5432
    write_postmaster_pid(paths.pgdata, os.getpid(), 55433)  # a live server on our data directory wins
    assert effective_config(paths, environ, ours).postgres.port == 55433


def test_down_with_nothing_running_is_a_no_op(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    paths = StackPaths(tmp_path)
    assert down(paths) == []
    assert down(paths) == []
    assert "Nothing started by devstack was running" in capsys.readouterr().out
    assert not paths.state_file.exists()


def test_down_forgets_dead_processes_and_never_stops_what_is_not_ours(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    save_state(
        paths.state_file,
        StackState({"host": ComponentState(True, dead.pid, 7071), "azurite": ComponentState(False, os.getpid(), 1)}),
    )
    assert down(paths) == []
    assert not paths.state_file.exists()
    assert pid_alive(os.getpid())
