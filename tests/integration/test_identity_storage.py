"""Identity-based storage, as deployed in Azure: no connection string and no account key anywhere.

Azurite serves HTTPS (a certificate from a private CA made here) with ``--oauth basic``, so it
refuses requests without a bearer token; the app is configured with service URIs only
(``AzureWebJobsStorage__queueServiceUri`` / ``__blobServiceUri``, ``DATA_STORAGE__blobServiceUri``)
and a token credential. Queues, blobs and GDAL ``/vsiaz/`` reads all go through that token: a
process_raster job completes end to end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import rasterio
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.storage.blob import BlobServiceClient

from devstack.azurite import AzuriteProcess, start_azurite
from devstack.postgres import PostgresDatabase
from repositories.blob_storage import BlobStorage
from repositories.storage_account import STORAGE_SCOPE
from schemas.settings import Settings
from services.container import ServiceContainer
from tests.support import rasters
from tests.support.engine import make_settings, pump_until_terminal
from tests.support.identity import EmulatorTokenCredential, private_ca_certificates

pytestmark = pytest.mark.integration
PROJECT_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class OAuthAzurite:
    process: AzuriteProcess
    ca_bundle: Path

    def blob_uri(self) -> str:
        return f"https://127.0.0.1:{self.process.blob_port}/devstoreaccount1"

    def queue_uri(self) -> str:
        return f"https://127.0.0.1:{self.process.queue_port}/devstoreaccount1"


@pytest.fixture(scope="module")
def oauth_azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OAuthAzurite]:
    folder = tmp_path_factory.mktemp("azurite-oauth")
    ca, cert, key = private_ca_certificates(folder / "tls")
    process = start_azurite(
        location=folder / "data", tls=(cert, key), oauth=True, log_file=folder / "azurite.log", in_memory=True
    )
    try:
        yield OAuthAzurite(process, ca)
    finally:
        process.stop()


@pytest.fixture(scope="module")
def settings(oauth_azurite: OAuthAzurite, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(
        "",
        postgres_database,
        AzureWebJobsStorage__queueServiceUri=oauth_azurite.queue_uri(),
        AzureWebJobsStorage__blobServiceUri=oauth_azurite.blob_uri(),
        DATA_STORAGE__blobServiceUri=oauth_azurite.blob_uri(),
    )


@pytest.fixture(scope="module")
def credential() -> EmulatorTokenCredential:
    return EmulatorTokenCredential()


@pytest.fixture(scope="module")
def container(
    settings: Settings, oauth_azurite: OAuthAzurite, credential: EmulatorTokenCredential
) -> Iterator[ServiceContainer]:
    services = ServiceContainer(settings, credential=credential, tls_verify=str(oauth_azurite.ca_bundle))
    yield services
    services.close()


def test_the_emulator_refuses_requests_without_a_token(oauth_azurite: OAuthAzurite) -> None:
    anonymous = BlobServiceClient(oauth_azurite.blob_uri(), connection_verify=str(oauth_azurite.ca_bundle))
    with pytest.raises((ClientAuthenticationError, HttpResponseError)) as caught:
        list(anonymous.list_containers())
    assert caught.value.status_code in {401, 403}


def test_nothing_is_configured_with_a_connection_string_or_key(settings: Settings, container: ServiceContainer) -> None:
    assert settings.storage_connection_string.get_secret_value() == ""
    assert settings.data_storage_connection_string.get_secret_value() == ""
    assert container.host_storage.uses_identity and container.data_storage.uses_identity
    options = container.blob_storage.gdal_options()
    assert "AZURE_STORAGE_CONNECTION_STRING" not in options and "AZURE_STORAGE_ACCESS_KEY" not in options
    assert options["AZURE_STORAGE_ACCESS_TOKEN"].count(".") == 2  # a JWT from the credential


def test_a_process_raster_job_completes_with_tokens_only(
    container: ServiceContainer, credential: EmulatorTokenCredential, tmp_path: Path
) -> None:
    storage = container.blob_storage
    storage.ensure_container("bronze")
    source = rasters.uint8_rgb(tmp_path / "rgb.tif")
    storage.upload_file("bronze", "identity/rgb.tif", source, content_type="image/tiff")

    job = container.job_service.submit("process_raster", {"blob_name": "identity/rgb.tif"}).job
    status = pump_until_terminal(container, job.job_id, timeout=120)

    assert status["status"] == "completed", status.get("error")
    assert set(credential.calls) == {STORAGE_SCOPE}  # every storage call was authorised by a token
    cogs = list(status["result"]["outputs"]["cogs"])
    assert cogs, status["result"]
    # The COG in silver has the source's pixels, read back through GDAL /vsiaz/ with a token.
    cog_path = BlobStorage.vsiaz_path(cogs[0]["container"], cogs[0]["blob"])
    with storage.gdal_env(), rasterio.open(cog_path) as cog, rasterio.open(source) as original:
        assert (cog.read() == original.read()).all()


def _index_functions(environment: dict[str, str], logs: list[str] | None = None) -> dict[str, list[str]]:
    """Import function_app in a fresh interpreter whose sockets cannot connect; what it indexed."""
    script = (
        "import json, socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise AssertionError(f'network access at import: {args}')\n"
        "socket.socket.connect = refuse\n"
        "socket.socket.connect_ex = refuse\n"
        "socket.create_connection = refuse\n"
        "import function_app\n"
        "functions = function_app.app.get_functions()\n"
        "print(json.dumps({'names': sorted(f.get_function_name() for f in functions)}))\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AzureWebJobs", "AZUREWEBJOBS", "DATA_STORAGE"))}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=PROJECT_ROOT,
        env={**clean, **environment},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    if logs is not None:
        logs.append(result.stderr)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_function_app_imports_with_identity_settings_only_and_indexes_every_function() -> None:
    identity = _index_functions(
        {
            "AzureWebJobsStorage__accountName": "geoetlhost",
            "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__clientId": "00000000-0000-0000-0000-000000000001",
            "DATA_STORAGE__accountName": "geoetldata",
            "AZURE_CLIENT_ID": "00000000-0000-0000-0000-000000000001",
            "POSTGRES_AUTH": "entra",
            "POSTGRES_SSLMODE": "require",
            "KEY_VAULT_URL": "https://geoetl-kv.vault.azure.net/",
        }
    )
    local = _index_functions({"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    assert identity["names"] == local["names"]
    assert len(identity["names"]) >= 10, identity  # http + queue + poison + timer triggers


def test_an_unresolved_key_vault_reference_is_reported_at_startup_by_setting_name() -> None:
    literal = "@Microsoft.KeyVault(SecretUri=https://geoetl-kv.vault.azure.net/secrets/pg/)"
    logs: list[str] = []
    _index_functions({"AzureWebJobsStorage__accountName": "geoetlhost", "POSTGRES_PASSWORD": literal}, logs)
    [stderr] = logs
    assert "app setting POSTGRES_PASSWORD still holds an unresolved @Microsoft.KeyVault(...) reference" in stderr
    assert "geoetl-kv.vault.azure.net" not in stderr
