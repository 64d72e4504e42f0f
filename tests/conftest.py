"""Shared fixtures: a real Azurite and a real Postgres database for integration tests."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.azurite import AzuriteProcess, free_port, start_azurite
from devstack.postgres import (
    PostgresServer,
    drop_database,
    ensure_database,
    is_reachable,
    server_from_environment,
    start_local_server,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
STACK_DIR = PROJECT_ROOT / ".stack"


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteProcess]:
    """A private Azurite on free ports for the whole test session, persisting to a temp folder:
    in-memory Azurite pauses for seconds in its periodic queue GC after thousands of messages
    (see bench/README.md), which would make timing-sensitive tests flaky."""
    location = tmp_path_factory.mktemp("azurite")
    handle = start_azurite(location=location / "data", in_memory=False, log_file=location / "azurite.log")
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture(scope="session")
def azurite_connection_string(azurite: AzuriteProcess) -> str:
    return azurite.connection_string


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """The machine's Postgres (POSTGRES_HOST/PORT, default 127.0.0.1:5432) or a project-local one."""
    server = server_from_environment(os.environ)
    if is_reachable(server):
        return server
    local = PostgresServer(host="127.0.0.1", port=free_port(), user="postgres", password="")
    start_local_server(local, STACK_DIR / "pg-test", STACK_DIR / "pg-test.log")
    return local


@pytest.fixture(scope="session")
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh, empty database for this test session; dropped afterwards. Yields its name."""
    name = f"geoetl_test_{os.getpid()}_{secrets.token_hex(3)}"
    ensure_database(postgres_server, name)
    try:
        yield name
    finally:
        drop_database(postgres_server, name)
