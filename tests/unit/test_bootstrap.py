"""devstack/bootstrap.py: what `make` runs with the system python3 before .venv exists."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from devstack import bootstrap


def test_a_missing_venv_is_reported_as_missing(tmp_path: Path) -> None:
    assert bootstrap.venv_problem(tmp_path / "nothing") == "missing"


def test_the_running_venv_is_healthy() -> None:
    assert bootstrap.venv_problem(Path(sys.prefix)) is None


def test_a_venv_without_pip_is_half_made_and_is_made_again(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    problem = bootstrap.venv_problem(venv)
    assert problem is not None and "half-made" in problem and "pip" in problem
    assert bootstrap.ensure_venv(venv) == 0
    assert bootstrap.venv_problem(venv) is None


def test_a_venv_whose_interpreter_link_dangles_does_not_run(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(tmp_path / "python-that-was-removed")
    assert "does not run" in (bootstrap.venv_problem(venv) or "")


def test_a_venv_of_another_python_is_reported(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    fake = venv / "bin" / "python"
    fake.write_text("#!/bin/sh\necho 2.7\n")
    fake.chmod(0o755)
    assert "made with Python 2.7" in (bootstrap.venv_problem(venv) or "")


def test_without_root_or_apt_it_stops_with_one_line_naming_the_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = bootstrap.Requirement("widget", ("widget-bin",), "widgets are needed", lambda: False)
    monkeypatch.setitem(bootstrap.REQUIREMENTS, "widget", missing)
    monkeypatch.setattr(bootstrap, "can_use_apt", lambda: False)
    assert bootstrap.install_system(["python-venv", "widget"]) == 1
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    assert "apt-get install widget-bin" in out[0] and "widgets are needed" in out[0] and "python3-venv" not in out[0]


def test_nothing_is_installed_when_nothing_is_missing(capsys: pytest.CaptureFixture[str]) -> None:
    assert bootstrap.install_system(["python-venv"]) == 0  # this interpreter has venv + ensurepip
    assert capsys.readouterr().out == ""


def test_an_unknown_requirement_is_an_error() -> None:
    assert bootstrap.install_system(["no-such-thing"]) == 2


def test_azurite_runs_on_the_pinned_node_runtime() -> None:
    node = bootstrap.node_executable()
    assert node.parent.parent.parent == bootstrap.NODE_RUNTIME_DIR / "node_modules"
    assert node.parent.parent.name.startswith("node-linux-")
    assert (bootstrap.node_major(node) or 0) >= bootstrap.MIN_NODE_MAJOR


def test_the_postgres_server_binaries_are_found() -> None:
    bindir = bootstrap.find_postgres_bindir()
    assert bindir is not None and (bindir / "initdb").exists() and (bindir / "pg_ctl").exists()


def test_chromium_for_the_browser_test_is_found_on_this_machine() -> None:
    chromium = bootstrap.find_chromium()
    assert chromium is not None and chromium.exists(), "make system-deps installs Debian's chromium"
    assert bootstrap.REQUIREMENTS["chromium"].present()


def test_a_missing_chromium_is_installed_with_apt_and_announced_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    installed: list[str] = []
    commands: list[list[str]] = []

    def fake_run(command: list[str], **_: object) -> subprocess.CompletedProcess[bytes]:
        commands.append(command)
        if "install" in command:
            installed.append("chromium")
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(bootstrap, "find_chromium", lambda: Path("/usr/bin/chromium") if installed else None)
    monkeypatch.setattr(bootstrap, "can_use_apt", lambda: True)
    monkeypatch.setattr(bootstrap.subprocess, "run", fake_run)
    assert bootstrap.install_system(["chromium"]) == 0
    [line] = capsys.readouterr().out.strip().splitlines()
    assert (
        line.startswith("geoetl: installing chromium fonts-liberation libatomic1 with apt-get:")
        and "browser test" in line
    )
    assert commands[0][-1] == "update"
    assert commands[1][-4:] == ["--no-install-recommends", "chromium", "fonts-liberation", "libatomic1"]


def test_without_root_a_missing_chromium_is_named_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bootstrap, "find_chromium", lambda: None)
    monkeypatch.setattr(bootstrap, "can_use_apt", lambda: False)
    assert bootstrap.install_system(["chromium"]) == 1
    [line] = capsys.readouterr().out.strip().splitlines()
    assert "apt-get install chromium fonts-liberation libatomic1" in line
