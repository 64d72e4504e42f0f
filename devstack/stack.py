"""The local stack: Postgres + Azurite + the local Functions host, started detached and tracked in .stack/.

Edge tooling: configuration comes from ``local.settings.json`` (copied from the example when missing)
overlaid by the environment, like the host itself does. ``.stack/stack.json`` records what is running
and whether devstack started it, so ``down`` stops only what it started and ``up`` never starts twice.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack.azurite import free_port, port_open, start_azurite
from devstack.postgres import (
    PostgresServer,
    ServerStatus,
    ensure_database,
    is_reachable,
    probe,
    remove_local_server,
    start_local_server,
    stop_local_server,
)
from devstack.stack_state import (
    COMPONENTS,
    ComponentState,
    StackError,
    StackPaths,
    StackState,
    load_state,
    pid_alive,
    postmaster,
    save_state,
    stack_lock,
    terminate_group,
)
from repositories.migrator import apply_migrations
from repositories.pgstac_migrator import apply_pgstac_migrations

AZURITE_PORTS = (10000, 10001, 10002)
HOST_READY_TIMEOUT = 60.0
HOST_STOP_GRACE = 30.0
FALLBACK_POSTGRES_PORT = 55432  # for our local server when POSTGRES_PORT is taken by something else
LOCAL_ADDRESSES = frozenset({"127.0.0.1", "localhost", "::1"})
PROCESS_MARKERS = {"azurite": "azurite", "host": "local_host"}  # expected in /proc/<pid>/cmdline


def ensure_settings_file(paths: StackPaths) -> bool:
    """Copy local.settings.example.json to local.settings.json when missing. True when it copied."""
    if paths.settings_file.exists():
        return False
    if not paths.example_settings_file.exists():
        raise StackError(f"neither {paths.settings_file} nor {paths.example_settings_file} exists")
    shutil.copyfile(paths.example_settings_file, paths.settings_file)
    return True


def read_settings_file(path: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """(Values, Host) of a local.settings.json; both empty when the file does not exist."""
    if not path.exists():
        return {}, {}
    try:
        document = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as error:
        raise StackError(f"{path}: invalid JSON: {error}") from error
    if not isinstance(document, dict):
        raise StackError(f"{path}: must hold a JSON object")
    values = document.get("Values") or {}
    host = document.get("Host") or {}
    if not isinstance(values, dict) or not isinstance(host, dict):
        raise StackError(f"{path}: Values and Host must be objects")
    as_text = {str(k): (("true" if v else "false") if isinstance(v, bool) else str(v)) for k, v in values.items()}
    return as_text, host


def settings_missing_from_local_file(paths: StackPaths) -> dict[str, str]:
    """Example Values that local.settings.json lacks (settings added to the example after it was copied)."""
    example, _ = read_settings_file(paths.example_settings_file)
    local, _ = read_settings_file(paths.settings_file)
    return {name: value for name, value in example.items() if name not in local}


@dataclass(frozen=True)
class StackConfig:
    postgres: PostgresServer
    database: str
    schema: str
    storage: str
    workers: int
    api_port: int
    function_key: str | None
    pgstac: bool = False  # PGSTAC_ENABLED: migrate pgstac beside the app's schema

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/api"

    @property
    def uses_local_storage(self) -> bool:
        text = self.storage.lower().replace(" ", "")
        return "usedevelopmentstorage=true" in text or "127.0.0.1:10000" in text or "localhost:10000" in text


def resolve_config(values: Mapping[str, str], host: Mapping[str, Any], environ: Mapping[str, str]) -> StackConfig:
    """Settings file Values overlaid by the environment (the environment wins, as in the host)."""
    merged = {**values, **environ}

    def integer(name: str, raw: object) -> int:
        try:
            return int(str(raw))
        except ValueError as error:
            raise StackError(f"{name} must be an integer, got {raw!r}") from error

    key_required = merged.get("LOCAL_HOST_REQUIRE_FUNCTION_KEY", "").strip().lower() in {"1", "true", "yes", "on"}
    return StackConfig(
        postgres=PostgresServer(
            host=merged.get("POSTGRES_HOST") or "127.0.0.1",
            port=integer("POSTGRES_PORT", merged.get("POSTGRES_PORT") or 5432),
            user=merged.get("POSTGRES_USER") or "postgres",
            password=merged.get("POSTGRES_PASSWORD", ""),
        ),
        database=merged.get("POSTGRES_DB") or "geoetl",
        schema=merged.get("POSTGRES_SCHEMA") or "geoetl",
        storage=merged.get("AzureWebJobsStorage") or "UseDevelopmentStorage=true",
        workers=integer("WORKERS", environ.get("WORKERS") or 2),
        api_port=integer("Host.LocalHttpPort", host.get("LocalHttpPort") or 7071),
        function_key=(merged.get("LOCAL_HOST_FUNCTION_KEY") or None) if key_required else None,
        pgstac=merged.get("PGSTAC_ENABLED", "").strip().lower() in {"1", "true", "yes", "on"},
    )


def api_ready(config: StackConfig) -> bool:
    """True when the host answers 200 on GET /api/job-types."""
    request = urllib.request.Request(f"{config.api_url}/job-types")  # noqa: S310 - a local http URL
    if config.function_key:
        request.add_header("x-functions-key", config.function_key)
    try:
        with urllib.request.urlopen(request, timeout=2.0) as response:  # noqa: S310
            return bool(response.status == 200)
    except OSError:  # refused, reset, timed out, or an HTTP error status
        return False


def tail(path: Path, since: int = 0, lines: int = 20) -> str:
    """The last ``lines`` lines written to ``path`` after byte offset ``since``."""
    try:
        with open(path, "rb") as handle:
            handle.seek(since)
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(nothing logged)"


def effective_config(paths: StackPaths, environ: Mapping[str, str], state: StackState | None = None) -> StackConfig:
    """The configuration, with the Postgres port moved to the one our local server really listens on."""
    example, example_host = read_settings_file(paths.example_settings_file)
    local, local_host = read_settings_file(paths.settings_file)
    config = resolve_config({**example, **local}, {**example_host, **local_host}, environ)
    ours = postmaster(paths.pgdata)
    recorded = (state or load_state(paths.state_file)).components.get("postgres")
    port = ours[1] if ours else (recorded.port if recorded and recorded.started_by_us else None)
    if port and port != config.postgres.port and config.postgres.host in LOCAL_ADDRESSES:
        server = PostgresServer(config.postgres.host, port, config.postgres.user, config.postgres.password)
        config = dataclasses.replace(config, postgres=server)
    return config


def ensure_postgres(paths: StackPaths, config: StackConfig, state: StackState) -> bool:
    """Make ``config.postgres`` reachable and the database exist. True when we started a server now."""
    server = config.postgres
    started = False
    ours = postmaster(paths.pgdata)
    status, reason = probe(server)
    if ours and status is ServerStatus.USABLE:
        state.components["postgres"] = ComponentState(True, ours[0], ours[1])
    elif status is ServerStatus.USABLE:
        state.components["postgres"] = ComponentState(False, None, server.port)
    elif server.host not in LOCAL_ADDRESSES:
        problem = reason or "not reachable"
        raise StackError(f"Postgres at {server.address} is not usable ({problem}); POSTGRES_HOST is not local")
    else:
        where = f"{paths.show(paths.pgdata)} (log {paths.show(paths.postgres_log)})"
        if status is ServerStatus.REFUSED or port_open(server.port, server.host):
            taken_by = f"a Postgres that refused us ({reason})" if status is ServerStatus.REFUSED else "not Postgres"
            port = FALLBACK_POSTGRES_PORT if not port_open(FALLBACK_POSTGRES_PORT, server.host) else free_port()
            print(f"Postgres: {server.address} is {taken_by}; starting the project's own on port {port} in {where}")
            server = dataclasses.replace(server, port=port)
        else:
            print(f"Postgres: none reachable at {server.address}; starting the project's own in {where}")
        start_local_server(server, paths.pgdata, paths.postgres_log)
        running = postmaster(paths.pgdata)
        state.components["postgres"] = ComponentState(True, running[0] if running else None, server.port)
        started = True
    ensure_database(server, config.database)
    return started


def ensure_azurite(paths: StackPaths, config: StackConfig, state: StackState) -> bool:
    """Azurite on the standard ports, persistent in .stack/azurite. True when we started it now."""
    if not config.uses_local_storage:
        print("Azurite: AzureWebJobsStorage is not the local emulator; not starting Azurite")
        state.components.pop("azurite", None)
        return False
    recorded = state.components.get("azurite")
    answering = [port_open(port) for port in AZURITE_PORTS]
    if all(answering):
        pid = recorded.pid if recorded and recorded.started_by_us else None
        ours = pid_alive(pid, PROCESS_MARKERS["azurite"])
        state.components["azurite"] = ComponentState(ours, pid if ours else None, AZURITE_PORTS[0])
        return False
    if any(answering):
        taken = [port for port, used in zip(AZURITE_PORTS, answering, strict=True) if used]
        raise StackError(f"Azurite ports partly in use ({taken}); free {AZURITE_PORTS} and run again")
    blob, queue, table = AZURITE_PORTS
    handle = start_azurite(
        location=paths.azurite_dir, blob_port=blob, queue_port=queue, table_port=table, log_file=paths.azurite_log
    )
    state.components["azurite"] = ComponentState(True, handle.process.pid, blob)
    return True


def start_host(paths: StackPaths, config: StackConfig, environ: Mapping[str, str]) -> subprocess.Popen[bytes]:
    defaults = settings_missing_from_local_file(paths)  # the host reads local.settings.json only
    env = {
        **defaults,
        **environ,
        "POSTGRES_HOST": config.postgres.host,
        "POSTGRES_PORT": str(config.postgres.port),
        "POSTGRES_DB": config.database,
        "PYTHONUNBUFFERED": "1",
    }
    args = [
        *(sys.executable, "-m", "local_host", "start", "--app-dir", str(paths.root)),
        *("--workers", str(config.workers), "--port", str(config.api_port)),
        *("--state-file", str(paths.host_state_file)),
    ]
    paths.host_log.parent.mkdir(parents=True, exist_ok=True)
    with open(paths.host_log, "ab") as log:
        return subprocess.Popen(
            args,
            cwd=paths.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def ensure_host(paths: StackPaths, config: StackConfig, state: StackState, environ: Mapping[str, str]) -> bool:
    """The local Functions host answering on the API port. True when we started it now."""
    recorded = state.components.get("host")
    pid = recorded.pid if recorded and recorded.started_by_us else None
    ours = pid_alive(pid, PROCESS_MARKERS["host"])
    if api_ready(config):
        state.components["host"] = ComponentState(ours, pid if ours else None, config.api_port)
        return False
    started, log_offset = False, paths.host_log.stat().st_size if paths.host_log.exists() else 0
    if not ours or pid is None:  # (else: ours, still starting up or hung; give it the same deadline)
        if port_open(config.api_port):
            raise StackError(f"port {config.api_port} is taken by something that does not answer {config.api_url}")
        print(f"Host: starting {config.workers} worker(s) on {config.api_url} (log {paths.show(paths.host_log)})")
        pid, started = start_host(paths, config, environ).pid, True
        state.components["host"] = ComponentState(True, pid, config.api_port)
        save_state(paths.state_file, state)
    deadline = time.monotonic() + HOST_READY_TIMEOUT
    while time.monotonic() < deadline:
        if api_ready(config):
            return started
        if not pid_alive(pid):
            state.components.pop("host", None)
            log = tail(paths.host_log, log_offset)
            raise StackError(f"the local host exited during startup; last lines of {paths.host_log}:\n{log}")
        time.sleep(0.25)
    terminate_group(pid, HOST_STOP_GRACE)
    state.components.pop("host", None)
    raise StackError(
        f"{config.api_url}/job-types did not answer 200 within {HOST_READY_TIMEOUT:.0f}s; "
        f"last lines of {paths.host_log}:\n{tail(paths.host_log, log_offset)}"
    )


def apply_schema_migrations(config: StackConfig) -> list[str]:
    applied = apply_migrations(config.postgres.conninfo(config.database), config.schema)
    if config.pgstac:  # pgstac's own migrations (pypgstac), into schema pgstac of the same database
        applied.append(f"pgstac {apply_pgstac_migrations(config.postgres.conninfo(config.database))}")
    return applied


def up(paths: StackPaths, environ: Mapping[str, str], started: list[str] | None = None) -> list[str]:
    """Bring the whole stack up; returns the components started by this call (in start order).

    ``started`` (when given) is filled in as components start, so a caller still knows what to stop
    when a later step fails.
    """
    started = [] if started is None else started
    with stack_lock(paths):
        if ensure_settings_file(paths):
            print(f"Created {paths.show(paths.settings_file)} from {paths.show(paths.example_settings_file)}")
        missing = sorted(settings_missing_from_local_file(paths))
        if missing:
            names = ", ".join(missing)
            print(f"Note: {paths.show(paths.settings_file)} lacks {len(missing)} setting(s) of the example ({names});")
            print("      the host gets the example's values for them (copy them over to change them)")
        state = load_state(paths.state_file)
        config = effective_config(paths, environ, state)
        try:
            if ensure_postgres(paths, config, state):
                started.append("postgres")
            save_state(paths.state_file, state)
            config = effective_config(paths, environ, state)  # our server may listen on a fallback port
            if ensure_azurite(paths, config, state):
                started.append("azurite")
            save_state(paths.state_file, state)
            applied = apply_schema_migrations(config)
            print(f"Migrations: {len(applied)} applied" + (f" ({', '.join(applied)})" if applied else " (up to date)"))
            if ensure_host(paths, config, state, environ):
                started.append("host")
        finally:
            save_state(paths.state_file, state)
    return started


def down(paths: StackPaths, only: list[str] | None = None) -> list[str]:
    """Stop what devstack started (all of it, or just ``only``); returns what it stopped."""
    stopped: list[str] = []
    with stack_lock(paths):
        state = load_state(paths.state_file)
        for name in reversed(COMPONENTS):
            if only is not None and name not in only:
                continue
            entry = state.components.pop(name, None)
            if name == "postgres":
                if postmaster(paths.pgdata):  # a server on our own data directory is always ours
                    stop_local_server(paths.pgdata)
                    stopped.append(name)
            elif entry and entry.started_by_us and entry.pid and pid_alive(entry.pid, PROCESS_MARKERS[name]):
                terminate_group(entry.pid, HOST_STOP_GRACE if name == "host" else 10.0)
                stopped.append(name)
        save_state(paths.state_file, state)
    print(f"Stopped: {', '.join(stopped)}" if stopped else "Nothing started by devstack was running")
    return stopped


def clean(paths: StackPaths) -> list[Path]:
    """Stop the stack, then stop and delete every project-local Postgres under .stack/ (the stack's and any
    test server), relocated copies included. Returns the data directories removed."""
    down(paths)
    removed = []
    for candidate in sorted(paths.stack_dir.glob("*")) if paths.stack_dir.is_dir() else []:
        if candidate.suffix != ".log" and (candidate / "PG_VERSION").exists():
            remove_local_server(candidate)
            removed.append(candidate)
    return removed


def migrate(paths: StackPaths, environ: Mapping[str, str]) -> list[str]:
    ensure_settings_file(paths)
    config = effective_config(paths, environ)
    if not is_reachable(config.postgres):
        raise StackError(f"Postgres at {config.postgres.host}:{config.postgres.port} is not reachable (make up?)")
    ensure_database(config.postgres, config.database)
    return apply_schema_migrations(config)
