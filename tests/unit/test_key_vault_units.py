"""Key Vault references left unresolved, error translation, and choosing the Postgres password source."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.identity import CredentialUnavailableError

from repositories.azure_credentials import default_credential
from repositories.key_vault import (
    SecretConfigurationError,
    SecretStoreUnavailableError,
    is_key_vault_reference,
    translate_azure_error,
    unresolved_key_vault_references,
    unresolved_key_vault_references_in_environment,
)
from repositories.postgres_credentials import (
    PSYCOPG_PREPARE_THRESHOLD,
    needs_credential,
    needs_secret_store,
    postgres_connect_options,
    resolved_conninfo,
    static_password,
)
from schemas.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REFERENCE = "@Microsoft.KeyVault(SecretUri=https://geoetl-kv.vault.azure.net/secrets/pg-password/)"


def _settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "AzureWebJobsStorage": "UseDevelopmentStorage=true",
        "postgres_password": "",
        "postgres_auth": "password",
        "postgres_pgbouncer": False,
        "postgres_password_secret_name": None,
        "key_vault_url": None,
        **overrides,
    }
    return Settings.model_validate(values)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (REFERENCE, True),
        ("@Microsoft.KeyVault(VaultName=geoetl-kv;SecretName=pg-password)", True),
        ("  @microsoft.keyvault(SecretUri=https://x.vault.azure.net/secrets/y/)", True),
        ("a password with @Microsoft.KeyVault( inside", False),
        ("", False),
        (None, False),
    ],
)
def test_a_key_vault_reference_literal_is_recognised(value: str | None, expected: bool) -> None:
    assert is_key_vault_reference(value) is expected


def test_unresolved_references_are_named_by_their_app_setting() -> None:
    assert unresolved_key_vault_references(_settings(postgres_password="plain")) == []
    settings = _settings(AzureWebJobsStorage=REFERENCE, postgres_password=REFERENCE, postgres_user=REFERENCE)
    assert unresolved_key_vault_references(settings) == ["AzureWebJobsStorage", "POSTGRES_PASSWORD", "POSTGRES_USER"]


def test_unresolved_references_in_the_environment() -> None:
    environ = {"POSTGRES_PORT": REFERENCE, "KEY_VAULT_URL": "https://geoetl-kv.vault.azure.net", "X": REFERENCE}
    assert unresolved_key_vault_references_in_environment(environ) == ["POSTGRES_PORT", "X"]


def test_a_static_password_refuses_an_unresolved_reference() -> None:
    with pytest.raises(SecretConfigurationError, match="POSTGRES_PASSWORD holds an unresolved Key Vault reference"):
        static_password(REFERENCE)()
    assert static_password("")() is None
    assert static_password("s3cret")() == "s3cret"


def test_the_settings_choose_the_password_source() -> None:
    plain = postgres_connect_options(_settings(postgres_password="s3cret"))
    assert plain.password_provider() == "s3cret"
    assert plain.on_password_rejected is None and plain.prepare_threshold == PSYCOPG_PREPARE_THRESHOLD
    assert postgres_connect_options(_settings(postgres_pgbouncer=True)).prepare_threshold is None
    with pytest.raises(SecretConfigurationError, match="entra"):
        postgres_connect_options(_settings(postgres_auth="entra"))
    from_vault = _settings(key_vault_url="https://geoetl-kv.vault.azure.net", postgres_password_secret_name="pg")
    with pytest.raises(SecretConfigurationError, match="POSTGRES_PASSWORD_SECRET_NAME"):
        postgres_connect_options(from_vault)
    assert needs_secret_store(from_vault) and needs_credential(from_vault)
    assert needs_credential(_settings(postgres_auth="entra")) and not needs_secret_store(
        _settings(postgres_auth="entra")
    )
    assert not needs_credential(_settings()) and not needs_secret_store(_settings())


def test_a_one_off_conninfo_carries_the_current_password() -> None:
    from psycopg.conninfo import conninfo_to_dict

    settings = _settings(postgres_password="from-settings")
    options = postgres_connect_options(settings)
    assert conninfo_to_dict(resolved_conninfo("host=db user=app", options))["password"] == "from-settings"
    empty = postgres_connect_options(_settings())
    assert resolved_conninfo("host=db user=app", empty) == "host=db user=app"


@pytest.mark.parametrize(
    ("error", "expected", "words"),
    [
        (CredentialUnavailableError("no managed identity endpoint"), SecretConfigurationError, "no Azure identity"),
        (ClientAuthenticationError("IMDS did not answer"), SecretStoreUnavailableError, "access token"),
        (ServiceRequestError("connection refused"), SecretStoreUnavailableError, "unreachable"),
        (ConnectionResetError("reset"), SecretStoreUnavailableError, "unreachable"),
    ],
)
def test_identity_and_network_errors_are_translated(error: Exception, expected: type, words: str) -> None:
    translated = translate_azure_error(error, "Key Vault secret 'pg' in https://geoetl-kv.vault.azure.net")
    assert isinstance(translated, expected)
    assert words in str(translated) and "'pg'" in str(translated)


def test_the_credential_is_made_without_network() -> None:
    credential = default_credential("00000000-0000-0000-0000-000000000000")
    close = getattr(credential, "close", None)
    assert close is not None
    close()


def test_importing_the_modules_loads_no_identity_or_vault_client() -> None:
    code = (
        "import sys, repositories.key_vault, repositories.postgres_credentials, repositories.azure_credentials, "
        "repositories.database\n"
        "loaded = [m for m in ('azure.identity', 'azure.keyvault.secrets', 'msal') if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)
