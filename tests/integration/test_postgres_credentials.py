"""The password each new Postgres connection uses, against a real server that checks passwords.

The session's test server may use trust auth (any password gets in), so these tests start their own
server whose TCP logins, except the superuser's, need a SCRAM password, and log in as roles made
per test. The password comes from the local HTTPS Key Vault (tests/support/key_vault_server.py) or,
for Entra, from a fake credential whose token is made the role's password: Postgres cannot check an
Entra token, but this proves the token is what is sent, for every new connection.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from devstack.bootstrap import find_postgres_bindir
from devstack.postgres import PostgresServer, temporary_server
from repositories.database import Database
from repositories.key_vault import SecretConfigurationError, SecretStore, secret_store_from_settings
from repositories.postgres_credentials import (
    PSYCOPG_PREPARE_THRESHOLD,
    KeyVaultPassword,
    postgres_connect_options,
    static_password,
)
from schemas.errors import DatabaseUnavailableError
from schemas.settings import POSTGRES_ENTRA_SCOPE, Settings
from tests.support.key_vault_fixtures import clock_fixture, store_fixture, vault_fixture  # noqa: F401
from tests.support.key_vault_server import FakeClock, FakeTokenCredential, KeyVaultServer

pytestmark = pytest.mark.integration

UNRESOLVED = "@Microsoft.KeyVault(SecretUri=https://geoetl-kv.vault.azure.net/secrets/pg-password/)"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresServer]:
    """A server of our own: the superuser gets in over TCP without a password, every other role
    needs its SCRAM password."""
    if find_postgres_bindir() is None:
        pytest.skip("the PostgreSQL server binaries are not installed")
    with temporary_server(tmp_path_factory.mktemp("pg-credentials"), "pg-kv") as started:
        with psycopg.connect(started.conninfo("postgres"), autocommit=True) as conn:
            row = conn.execute("SHOW hba_file").fetchone()
            assert row is not None
            Path(row[0]).write_text(
                "local all all trust\n"
                f"host all {started.user} 127.0.0.1/32 trust\n"
                "host all all 127.0.0.1/32 scram-sha-256\n"
            )
            conn.execute("SELECT pg_reload_conf()")
            conn.execute("CREATE ROLE geoetl_probe LOGIN PASSWORD 'probe-password'")
        _wait_for_password_checks(started)
        yield started


def _wait_for_password_checks(server: PostgresServer) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            psycopg.connect(_conninfo(server, "geoetl_probe"), password="wrong").close()
        except psycopg.OperationalError as error:
            if "password authentication failed" in str(error):
                return
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not start checking passwords")
        time.sleep(0.1)


@pytest.fixture
def databases() -> Iterator[list[Database]]:
    """Databases a test opens, closed after it."""
    opened: list[Database] = []
    yield opened
    for database in opened:
        database.close()


def _conninfo(server: PostgresServer, user: str, password: str | None = None) -> str:
    return psycopg.conninfo.make_conninfo(
        host=server.host, port=server.port, user=user, dbname="postgres", password=password, connect_timeout=5
    )


def _admin(server: PostgresServer, statement: sql.Composed) -> None:
    with psycopg.connect(server.conninfo("postgres"), autocommit=True) as conn:
        conn.execute(statement)


def _set_password(server: PostgresServer, role: str, password: str) -> None:
    _admin(server, sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))


def _new_role(server: PostgresServer, password: str) -> str:
    role = f"geoetl_kv_{secrets.token_hex(4)}"
    _admin(server, sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    return role


def _database(databases: list[Database], conninfo: str, **options: Any) -> Database:
    settings: dict[str, Any] = {"min_size": 0, "max_size": 3, "timeout_seconds": 10, "reconnect_timeout_seconds": 5}
    database = Database(conninfo, schema="public", **{**settings, **options})
    databases.append(database)
    return database


def _current_user(database: Database) -> str:
    with database.pool.connection() as conn:
        row: Any = conn.execute("SELECT current_user AS name").fetchone()
    return str(row["name"])


def _settings(server: PostgresServer, user: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "postgres_host": server.host,
        "postgres_port": server.port,
        "postgres_user": user,
        "postgres_password": "",
        "postgres_db": "postgres",
        "postgres_auth": "password",
        "postgres_pgbouncer": False,
        "postgres_password_secret_name": None,
        "key_vault_url": None,
        **overrides,
    }
    return Settings.model_validate(values)


def test_the_key_vault_password_is_what_connects(
    server: PostgresServer, vault: KeyVaultServer, databases: list[Database]
) -> None:
    password, name = secrets.token_urlsafe(18), f"pg-{secrets.token_hex(4)}"
    role = _new_role(server, password)
    vault.set_secret(name, password)
    settings = _settings(
        server,
        role,
        postgres_password="not-the-password",  # the secret's value wins over POSTGRES_PASSWORD
        key_vault_url=vault.vault_url,
        postgres_password_secret_name=name,
        key_vault_cache_seconds=60,
    )
    store = secret_store_from_settings(settings, vault.credential, **vault.client_options)
    assert store is not None
    options = postgres_connect_options(settings, secret_store=store)
    database = _database(
        databases,
        settings.postgres_conninfo(),
        password_provider=options.password_provider,
        on_password_rejected=options.on_password_rejected,
        prepare_threshold=options.prepare_threshold,
    )
    reads = vault.secret_reads
    assert _current_user(database) == role
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(settings.postgres_conninfo()).close()  # POSTGRES_PASSWORD alone does not get in
    assert vault.secret_reads - reads == 1
    store.close()


def test_a_wrong_password_fails_with_the_servers_reason(
    server: PostgresServer, vault: KeyVaultServer, store: SecretStore, databases: list[Database]
) -> None:
    role, name = _new_role(server, secrets.token_urlsafe(18)), f"pg-{secrets.token_hex(4)}"
    vault.set_secret(name, "wrong-password")
    database = _database(
        databases,
        _conninfo(server, role),
        password_provider=KeyVaultPassword(store, name),
        timeout_seconds=2.5,
        reconnect_timeout_seconds=1,
    )
    with pytest.raises(DatabaseUnavailableError) as raised, database.transaction():
        pass
    message = str(raised.value)
    assert "password authentication failed" in message and role in message
    assert "wrong-password" not in message


def test_a_missing_secret_fails_naming_it(
    server: PostgresServer, vault: KeyVaultServer, store: SecretStore, databases: list[Database]
) -> None:
    role, name = _new_role(server, secrets.token_urlsafe(18)), f"pg-{secrets.token_hex(4)}"
    database = _database(
        databases,
        _conninfo(server, role),
        password_provider=KeyVaultPassword(store, name),
        timeout_seconds=2,
        reconnect_timeout_seconds=1,
    )
    with pytest.raises(DatabaseUnavailableError) as raised, database.statements():
        pass
    assert f"Key Vault secret {name!r} in {vault.vault_url}: not found" in str(raised.value)


def test_a_rotated_password_reaches_new_connections_after_the_ttl(
    server: PostgresServer, vault: KeyVaultServer, store: SecretStore, clock: FakeClock, databases: list[Database]
) -> None:
    old, new, name = secrets.token_urlsafe(18), secrets.token_urlsafe(18), f"pg-{secrets.token_hex(4)}"
    role = _new_role(server, old)
    vault.set_secret(name, old)
    provider = KeyVaultPassword(store, name)
    database = _database(databases, _conninfo(server, role), password_provider=provider)
    first = database.pool.getconn()
    try:
        reads = vault.secret_reads
        _set_password(server, role, new)  # rotation: the role and the secret
        vault.set_secret(name, new)
        assert first.execute("SELECT 1").fetchone() is not None  # open connections are not affected
        assert provider() == old  # within the TTL: the cached password
        clock.now += 61
        second = database.pool.getconn()  # the first is out: the pool opens another one
        try:
            assert second.info.backend_pid != first.info.backend_pid
            assert second.execute("SELECT current_user AS name").fetchone() == {"name": role}
        finally:
            database.pool.putconn(second)
        assert vault.secret_reads - reads == 1
    finally:
        database.pool.putconn(first)


def test_a_refused_cached_password_is_read_again_at_once(
    server: PostgresServer, vault: KeyVaultServer, store: SecretStore, databases: list[Database]
) -> None:
    old, new, name = secrets.token_urlsafe(18), secrets.token_urlsafe(18), f"pg-{secrets.token_hex(4)}"
    role = _new_role(server, old)
    vault.set_secret(name, old)
    provider = KeyVaultPassword(store, name)
    database = _database(
        databases, _conninfo(server, role), password_provider=provider, on_password_rejected=provider.rejected
    )
    first = database.pool.getconn()
    try:
        _set_password(server, role, new)
        vault.set_secret(name, new)
        started = time.monotonic()
        second = database.pool.getconn()  # refused with the cached password, then read anew (clock not moved)
        try:
            assert second.execute("SELECT current_user AS name").fetchone() == {"name": role}
        finally:
            database.pool.putconn(second)
        assert time.monotonic() - started < 10
        assert store.get(name) == new
    finally:
        database.pool.putconn(first)


def test_entra_sends_a_fresh_token_for_each_new_connection(server: PostgresServer, databases: list[Database]) -> None:
    credential = FakeTokenCredential(token=f"eyJ0eXAi.{secrets.token_urlsafe(64)}")
    role = _new_role(server, credential.token)  # stands for Entra: the token is the password
    settings = _settings(server, role, postgres_auth="entra", postgres_password="ignored")
    options = postgres_connect_options(settings, credential=credential)
    assert options.on_password_rejected is None
    database = _database(
        databases,
        settings.postgres_conninfo(),
        password_provider=options.password_provider,
        prepare_threshold=options.prepare_threshold,
    )
    first = database.pool.getconn()
    try:
        assert credential.calls == {POSTGRES_ENTRA_SCOPE: 1}
        credential.token = f"eyJ0eXAi.{secrets.token_urlsafe(64)}"  # renewed by the identity provider
        _set_password(server, role, credential.token)
        second = database.pool.getconn()
        try:
            assert second.execute("SELECT current_user AS name").fetchone() == {"name": role}
        finally:
            database.pool.putconn(second)
        assert credential.calls == {POSTGRES_ENTRA_SCOPE: 2}
    finally:
        database.pool.putconn(first)


def test_entra_token_failure_is_reported(server: PostgresServer, databases: list[Database]) -> None:
    from azure.identity import CredentialUnavailableError

    credential = FakeTokenCredential()
    credential.fail_with = CredentialUnavailableError("ManagedIdentityCredential authentication unavailable")
    settings = _settings(server, "geoetl_probe", postgres_auth="entra")
    options = postgres_connect_options(settings, credential=credential)
    database = _database(
        databases,
        settings.postgres_conninfo(),
        password_provider=options.password_provider,
        timeout_seconds=2,
        reconnect_timeout_seconds=1,
    )
    with pytest.raises(DatabaseUnavailableError, match="no Azure identity available"), database.statements():
        pass


@pytest.mark.parametrize("pgbouncer", [True, False])
def test_pgbouncer_mode_prepares_no_statements(
    server: PostgresServer, databases: list[Database], pgbouncer: bool
) -> None:
    password = secrets.token_urlsafe(18)
    role = _new_role(server, password)
    settings = _settings(server, role, postgres_password=password, postgres_pgbouncer=pgbouncer)
    options = postgres_connect_options(settings)
    database = _database(
        databases,
        settings.postgres_conninfo(),
        password_provider=options.password_provider,
        prepare_threshold=options.prepare_threshold,
    )
    with database.pool.connection() as conn:
        assert conn.prepare_threshold == (None if pgbouncer else PSYCOPG_PREPARE_THRESHOLD)
        for _ in range(PSYCOPG_PREPARE_THRESHOLD + 2):
            conn.execute("SELECT %s::int AS n", (1,))
        prepared: Any = conn.execute("SELECT count(*) AS n FROM pg_prepared_statements").fetchone()
    assert prepared is not None
    assert (prepared["n"] == 0) is pgbouncer


def test_an_unresolved_key_vault_reference_is_never_sent(server: PostgresServer, databases: list[Database]) -> None:
    settings = _settings(server, "geoetl_probe", postgres_password=UNRESOLVED)
    options = postgres_connect_options(settings)
    with pytest.raises(SecretConfigurationError, match="POSTGRES_PASSWORD holds an unresolved Key Vault reference"):
        options.password_provider()
    database = _database(
        databases,
        settings.postgres_conninfo(),
        password_provider=options.password_provider,
        timeout_seconds=2,
        reconnect_timeout_seconds=1,
    )
    with pytest.raises(DatabaseUnavailableError, match="unresolved Key Vault reference"), database.statements():
        pass
    assert database.pool.get_stats().get("connections_errors", 0) == 0  # no login was attempted with it


def test_a_static_password_connects(server: PostgresServer, databases: list[Database]) -> None:
    password = secrets.token_urlsafe(18)
    role = _new_role(server, password)
    database = _database(databases, _conninfo(server, role), password_provider=static_password(password))
    assert _current_user(database) == role
