"""Find a usable Postgres, or start a project-local one, and manage databases.

"Usable" means it answers and lets us in. A Postgres on the port that asks for a password we do not
have (Debian's own cluster on 5432, say) is not an error: the caller starts the project's own
server instead and says so in one line.

As root, the server runs as the ``postgres`` system user (initdb refuses root). When that user
cannot reach the requested data directory (a checkout under ``/root`` is ``drwx------``), the data
lives under ``/var/tmp/geoetl-postgres/`` and the requested path becomes a link to it.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from devstack.azurite import free_port
from devstack.bootstrap import find_postgres_bindir
from devstack.stack_state import pid_alive

SERVICE_USER = "postgres"
# Root-only; checked to be root-owned and not a link before use (_relocation_root).
RELOCATED_ROOT = Path("/var/tmp/geoetl-postgres")  # noqa: S108


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

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PostgresDatabase:
    """One database on one server: what a test session or a benchmark runs against."""

    server: PostgresServer
    name: str

    @property
    def conninfo(self) -> str:
        return self.server.conninfo(self.name)


def server_from_environment(environ: Mapping[str, str]) -> PostgresServer:
    """The server named by POSTGRES_HOST/PORT/USER/PASSWORD (default: local, trust auth)."""
    return PostgresServer(
        host=environ.get("POSTGRES_HOST", "127.0.0.1"),
        port=int(environ.get("POSTGRES_PORT", "5432")),
        user=environ.get("POSTGRES_USER", "postgres"),
        password=environ.get("POSTGRES_PASSWORD", ""),
    )


class ServerStatus(enum.Enum):
    USABLE = "usable"
    REFUSED = "refused"  # a Postgres answered but will not let us in (password, role, database)
    ABSENT = "absent"  # nothing answered as Postgres


def probe(server: PostgresServer, timeout: float = 2.0) -> tuple[ServerStatus, str]:
    """Whether ``server`` can be used, and the driver's reason when not."""
    try:
        with psycopg.connect(server.conninfo("postgres"), connect_timeout=max(1, int(timeout))):
            return ServerStatus.USABLE, ""
    except psycopg.OperationalError as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        # A server-side refusal carries a SQLSTATE; libpq's "no password supplied" is client-side.
        if error.sqlstate or "password" in reason.lower():
            return ServerStatus.REFUSED, reason
        return ServerStatus.ABSENT, reason


def is_reachable(server: PostgresServer, timeout: float = 2.0) -> bool:
    return probe(server, timeout)[0] is ServerStatus.USABLE


def _as_service_user(args: list[str]) -> list[str]:
    """initdb/postgres refuse to run as root: drop to the 'postgres' system user when we are root."""
    if os.geteuid() == 0:
        return ["runuser", "-u", SERVICE_USER, "--", *args]
    return args


def _service_user_can_write(directory: Path) -> bool:
    probe_cmd = ["runuser", "-u", SERVICE_USER, "--", "test", "-w", str(directory), "-a", "-x", str(directory)]
    return subprocess.run(probe_cmd, capture_output=True, check=False).returncode == 0


def service_path(requested: Path, *, is_dir: bool) -> Path:
    """Where the server really keeps ``requested`` (a data directory or its log file).

    Not root: ``requested`` itself. Root: ``requested`` when the service user can write its parent,
    else a path under /var/tmp/geoetl-postgres/ named after it, with ``requested`` made a link there.
    """
    requested = requested.absolute()
    requested.parent.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return requested
    if requested.is_symlink():
        return requested.resolve()
    if _service_user_can_write(requested.parent):
        return requested
    digest = hashlib.sha256(str(requested).encode()).hexdigest()[:12]
    target = _relocation_root() / f"{requested.name}-{digest}"
    if requested.is_dir() and not (requested / "PG_VERSION").exists():
        shutil.rmtree(requested)  # left by an earlier attempt that could not initdb here
    elif requested.is_file():
        requested.unlink()
    if not requested.exists():
        requested.symlink_to(target, target_is_directory=is_dir)
    return target


def _relocation_root() -> Path:
    """RELOCATED_ROOT, made if missing; refused when another user could have planted it (/var/tmp is shared)."""
    RELOCATED_ROOT.mkdir(mode=0o755, exist_ok=True)
    info = os.lstat(RELOCATED_ROOT)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise RuntimeError(f"{RELOCATED_ROOT} must be a directory owned by root and writable only by it")
    return RELOCATED_ROOT


def _prepare(path: Path, *, is_dir: bool) -> None:
    if is_dir:
        path.mkdir(parents=True, exist_ok=True)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    if os.geteuid() == 0:
        shutil.chown(path, SERVICE_USER, SERVICE_USER)
    if is_dir:
        path.chmod(0o700)


def start_local_server(server: PostgresServer, datadir: Path, log_file: Path) -> None:
    """initdb (trust auth) into ``datadir`` if needed and start a server listening on server.port."""
    bindir = find_postgres_bindir()
    if bindir is None:
        raise RuntimeError(
            "no Postgres is usable and the PostgreSQL server binaries (initdb, pg_ctl) are not installed: "
            "run `make deps` as root, or install PostgreSQL, or point POSTGRES_HOST/POSTGRES_PORT at a server"
        )
    data, log = service_path(datadir, is_dir=True), service_path(log_file, is_dir=False)
    _prepare(data, is_dir=True)
    _prepare(log, is_dir=False)
    if not (data / "PG_VERSION").exists():
        subprocess.run(
            _as_service_user([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", server.user, "-E", "UTF8"]),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    options = f"-p {server.port} -k {data} -c listen_addresses={server.host}"
    subprocess.run(
        _as_service_user([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not is_reachable(server):
        if time.monotonic() > deadline:
            raise RuntimeError(f"local Postgres did not become reachable; see {log_file}")
        time.sleep(0.2)


def stop_local_server(datadir: Path) -> None:
    bindir = find_postgres_bindir()
    data = datadir.resolve()
    if bindir is None or not (data / "postmaster.pid").exists():
        return
    subprocess.run(
        _as_service_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
        check=False,
        stdout=subprocess.DEVNULL,
    )


def remove_local_server(datadir: Path) -> None:
    """Stop a server on ``datadir`` and delete its data (and the relocated copy a link points to)."""
    stop_local_server(datadir)
    for requested in (datadir, datadir.with_suffix(".log")):
        path = requested.resolve()
        if requested.is_symlink():
            requested.unlink()
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            path.unlink()


@contextlib.contextmanager
def temporary_server(parent: Path, prefix: str) -> Iterator[PostgresServer]:
    """A project-local server on a free port in ``parent/<prefix>-<pid>``, stopped and deleted on exit.

    Servers of earlier runs whose process is gone (killed before they could clean up) are removed first,
    so nothing accumulates; servers of runs still going are left alone.
    """
    for stale in parent.glob(f"{prefix}-*"):
        owner = stale.name.rsplit("-", 1)[-1]
        if stale.suffix != ".log" and owner.isdigit() and not pid_alive(int(owner)):
            remove_local_server(stale)
    datadir = parent / f"{prefix}-{os.getpid()}"
    server = PostgresServer(host="127.0.0.1", port=free_port(), user="postgres", password="")
    try:
        start_local_server(server, datadir, datadir.with_suffix(".log"))
        yield server
    finally:
        remove_local_server(datadir)


@contextlib.contextmanager
def usable_server(
    environ: Mapping[str, str], parent: Path, prefix: str, say: Callable[[str], None] = print
) -> Iterator[PostgresServer]:
    """The server the environment names (default 127.0.0.1:5432) when it lets us in, else a temporary
    project-local one (``temporary_server``), announced in one line."""
    named = server_from_environment(environ)
    status, reason = probe(named)
    if status is ServerStatus.USABLE:
        yield named
        return
    why = "is not running" if status is ServerStatus.ABSENT else f"refused us ({reason})"
    say(f"Postgres at {named.address} {why}; using the project's own server in {parent}/{prefix}-{os.getpid()}")
    with temporary_server(parent, prefix) as server:
        yield server


def ensure_database(server: PostgresServer, dbname: str) -> None:
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))


def drop_database(server: PostgresServer, dbname: str) -> None:
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
