"""Find a reachable Postgres, or install and start a project-local one, and manage databases."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    password: str

    def conninfo(self, dbname: str) -> str:
        return psycopg.conninfo.make_conninfo(
            host=self.host, port=self.port, user=self.user, password=self.password or None, dbname=dbname
        )


def server_from_environment(environ: Mapping[str, str]) -> PostgresServer:
    """The server named by POSTGRES_HOST/PORT/USER/PASSWORD (default: local, trust auth)."""
    return PostgresServer(
        host=environ.get("POSTGRES_HOST", "127.0.0.1"),
        port=int(environ.get("POSTGRES_PORT", "5432")),
        user=environ.get("POSTGRES_USER", "postgres"),
        password=environ.get("POSTGRES_PASSWORD", ""),
    )


def is_reachable(server: PostgresServer, timeout: float = 2.0) -> bool:
    try:
        with psycopg.connect(server.conninfo("postgres"), connect_timeout=max(1, int(timeout))):
            return True
    except psycopg.OperationalError:
        return False


def _pg_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False).stdout.strip()
        if out and (Path(out) / "initdb").exists():
            return Path(out)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True)
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    return None


def _install_postgres() -> Path:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise RuntimeError(
            "No Postgres server is reachable and none is installed. Install PostgreSQL (e.g. "
            "`sudo apt-get install postgresql`) or point POSTGRES_HOST/POSTGRES_PORT at one."
        )
    subprocess.run(["apt-get", "update", "-q"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "postgresql"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    bindir = _pg_bindir()
    if bindir is None:
        raise RuntimeError("postgresql was installed but initdb was not found")
    return bindir


def _as_service_user(args: list[str]) -> list[str]:
    """initdb/postgres refuse to run as root: drop to the 'postgres' system user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


def start_local_server(server: PostgresServer, datadir: Path, log_file: Path) -> None:
    """initdb (trust auth) into ``datadir`` if needed and start a server listening on server.port."""
    bindir = _pg_bindir() or _install_postgres()
    datadir.mkdir(parents=True, exist_ok=True)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    log_file.touch()
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
        shutil.chown(log_file, "postgres", "postgres")
        datadir.chmod(0o700)
    if not (datadir / "PG_VERSION").exists():
        subprocess.run(
            _as_service_user(
                [str(bindir / "initdb"), "-D", str(datadir), "-A", "trust", "-U", server.user, "-E", "UTF8"]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    options = f"-p {server.port} -k {datadir} -c listen_addresses={server.host}"
    subprocess.run(
        _as_service_user(
            [str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(log_file), "-o", options, "-w", "start"]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not is_reachable(server):
        if time.monotonic() > deadline:
            raise RuntimeError(f"local Postgres did not become reachable; see {log_file}")
        time.sleep(0.2)


def stop_local_server(datadir: Path) -> None:
    bindir = _pg_bindir()
    if bindir is None or not (datadir / "postmaster.pid").exists():
        return
    subprocess.run(
        _as_service_user([str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "fast", "-w", "stop"]),
        check=False,
        stdout=subprocess.DEVNULL,
    )


def ensure_database(server: PostgresServer, dbname: str) -> None:
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


def drop_database(server: PostgresServer, dbname: str) -> None:
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
