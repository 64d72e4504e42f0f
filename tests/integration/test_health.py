"""GET /api/health: readiness with each dependency (status, latency, migrations), 503 naming the one
that is down, answered within seconds, no secrets; GET /api/health/live; anonymous even with keys
required. Real Azurite and Postgres, through the app's triggers and the local host."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from pydantic import SecretStr

from devstack.azurite import free_port
from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from schemas.settings import Settings
from services.container import ServiceContainer
from tests.support.engine import make_container, make_settings
from tests.support.host import start_host
from triggers import http_health

pytestmark = pytest.mark.integration


@pytest.fixture
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    settings = make_settings(azurite_connection_string, postgres_database)
    storage = BlobStorage(azurite_connection_string)
    for name in (settings.bronze_container, settings.silver_container):
        storage.ensure_container(name)
    return settings


def call_health(container: ServiceContainer) -> tuple[int, dict[str, Any], dict[str, str], float]:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(http_health.create_blueprint(container))
    [handler] = [f.get_user_function() for f in app.get_functions() if f.get_function_name() == "health"]
    request = func.HttpRequest("GET", "http://localhost/api/health", body=b"")
    started = time.monotonic()
    response = handler(request)
    return response.status_code, json.loads(response.get_body()), dict(response.headers), time.monotonic() - started


@pytest.fixture
def healthy(settings: Settings) -> Iterator[ServiceContainer]:
    c = make_container(settings)
    yield c
    c.close()


def test_ready_reports_every_dependency_with_latency_and_migrations(healthy: ServiceContainer) -> None:
    code, body, _, _ = call_health(healthy)
    assert code == 200 and body["status"] == "ready", body
    dependencies = body["dependencies"]
    assert set(dependencies) == {"postgres", "queue_storage", "data_storage"}
    assert all(d["status"] == "ok" and d["latency_ms"] >= 0 for d in dependencies.values())
    assert dependencies["postgres"]["migrations"]["applied"] == dependencies["postgres"]["migrations"]["expected"] >= 4
    assert dependencies["data_storage"]["containers"] == {"bronze": True, "silver": True}


@pytest.mark.parametrize("down", ["postgres", "storage"])
def test_a_dependency_that_is_down_makes_it_503_within_seconds_naming_it(settings: Settings, down: str) -> None:
    closed = free_port()
    if down == "postgres":
        broken = settings.model_copy(
            update={"postgres_port": closed, "db_connect_timeout_seconds": 1, "db_pool_timeout_seconds": 2}
        )
    else:
        account = settings.storage_connection_string.get_secret_value()
        dead = account.replace(account.split("BlobEndpoint=http://127.0.0.1:")[1].split("/")[0], str(closed))
        dead = dead.replace(dead.split("QueueEndpoint=http://127.0.0.1:")[1].split("/")[0], str(closed))
        broken = settings.model_copy(update={"storage_connection_string": SecretStr(dead)})
    container = make_container(broken)
    try:
        code, body, headers, seconds = call_health(container)
    finally:
        container.close()
    failing = {name for name, d in body["dependencies"].items() if d["status"] != "ok"}
    assert code == 503 and headers.get("Retry-After") and body["status"] == "not ready"
    assert failing == ({"postgres"} if down == "postgres" else {"queue_storage", "data_storage"}), body
    assert seconds < 6, f"health took {seconds:.1f}s"
    text = json.dumps(body)
    assert "AccountKey" not in text and "127.0.0.1" not in text and str(closed) not in text


def test_health_is_anonymous_while_the_api_requires_a_key(settings: Settings, tmp_path: Path) -> None:
    host = start_host(
        settings,
        workers=1,
        log_path=tmp_path / "host.log",
        extra_env={"LOCAL_HOST_REQUIRE_FUNCTION_KEY": "true", "LOCAL_HOST_FUNCTION_KEY": "k-123"},
    )
    try:
        assert host.request("GET", "/health/live") == (200, {"status": "alive"})
        code, body = host.request("GET", "/health")
        assert code == 200 and body["status"] == "ready", body
        assert host.request("GET", "/job-types")[0] == 401  # the API itself still needs the key
    finally:
        host.stop()


def test_an_unresolved_key_vault_reference_is_reported_by_name_and_never_used(settings: Settings) -> None:
    literal = "@Microsoft.KeyVault(SecretUri=https://geoetl-kv.vault.azure.net/secrets/postgres-password/)"
    unresolved = make_container(settings.model_copy(update={"postgres_password": SecretStr(literal)}))
    try:
        code, body, _, _ = call_health(unresolved)
    finally:
        unresolved.close()
    assert code == 503 and body["status"] == "not ready", body
    configuration = body["dependencies"]["configuration"]
    assert configuration["status"] == "down" and "POSTGRES_PASSWORD" in configuration["error"], configuration
    # The literal is refused before any login: Postgres is reported down by the error's type only.
    assert body["dependencies"]["postgres"]["status"] == "down"
    assert "vault.azure.net" not in json.dumps(body) and "KeyVault(" not in json.dumps(body)
