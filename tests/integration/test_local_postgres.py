"""The project's own Postgres: started anywhere (a checkout under /root included), chosen over a server
that refuses us, stopped and deleted after use, and cleaned up after a run that was killed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from devstack import postgres
from devstack.azurite import free_port
from devstack.postgres import PostgresServer, ServerStatus, probe, temporary_server, usable_server
from devstack.stack_state import postmaster

pytestmark = pytest.mark.integration


def require_password(server: PostgresServer) -> None:
    """Turn a trust-auth server into one that wants a password over TCP (like Debian's own cluster)."""
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        conn.execute("ALTER ROLE postgres PASSWORD 'secret-for-test'")
        hba = conn.execute("SHOW hba_file").fetchone()
        assert hba is not None
        Path(hba[0]).write_text("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        conn.execute("SELECT pg_reload_conf()")


def test_a_server_that_wants_a_password_is_refused_and_the_project_uses_its_own(tmp_path: Path) -> None:
    with temporary_server(tmp_path, "pg-locked") as locked:
        require_password(locked)
        status, reason = probe(locked)
        assert status is ServerStatus.REFUSED and "password" in reason
        said: list[str] = []
        environ = {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": str(locked.port)}
        with usable_server(environ, tmp_path, "pg-own", say=said.append) as own:
            assert own.port != locked.port and probe(own)[0] is ServerStatus.USABLE
        assert len(said) == 1 and f"127.0.0.1:{locked.port} refused us" in said[0], said
        assert not (tmp_path / f"pg-own-{os.getpid()}").exists()


def test_an_absent_server_is_told_apart_from_a_refusing_one() -> None:
    status, _ = probe(PostgresServer("127.0.0.1", free_port(), "postgres", ""))
    assert status is ServerStatus.ABSENT


def test_a_data_directory_the_service_user_cannot_reach_is_relocated(tmp_path: Path) -> None:
    hidden = tmp_path / "home"
    hidden.mkdir(mode=0o700)  # like /root: drwx------
    datadir = hidden / f"pg-hidden-{os.getpid()}"
    with temporary_server(hidden, "pg-hidden") as server:
        assert probe(server)[0] is ServerStatus.USABLE
        if os.geteuid() == 0:
            assert datadir.is_symlink() and datadir.resolve().parent == postgres.RELOCATED_ROOT
        else:
            assert datadir.is_dir() and not datadir.is_symlink()
        assert postmaster(datadir) is not None
        real = datadir.resolve()
    assert not datadir.exists() and not datadir.is_symlink() and not real.exists()


def test_a_server_left_by_a_killed_run_is_stopped_and_removed(tmp_path: Path) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    stale_dir = tmp_path / f"pg-run-{int(dead.stdout)}"
    stale = PostgresServer("127.0.0.1", free_port(), "postgres", "")
    postgres.start_local_server(stale, stale_dir, stale_dir.with_suffix(".log"))
    assert postmaster(stale_dir) is not None
    with temporary_server(tmp_path, "pg-run"):
        assert not stale_dir.exists() and not stale_dir.is_symlink()
        assert probe(stale)[0] is ServerStatus.ABSENT
