"""StorageAccount: which clients and GDAL options a connection string or an identity gives, and the
GDAL token kept fresh. The identity path end to end: tests/integration/test_identity_storage.py."""

from __future__ import annotations

import time
from typing import Any

import certifi
import pytest
from azure.core.credentials import AccessToken

from repositories.storage_account import (
    GDAL_TOKEN_MIN_REMAINING_SECONDS,
    STORAGE_SCOPE,
    RefreshingToken,
    StorageAccount,
    StorageConfigurationError,
)
from schemas.settings import Settings
from services.container import ServiceContainer


class ScriptedCredential:
    """Hands out tokens with the lifetimes it is given, one per call."""

    def __init__(self, *lifetimes: float) -> None:
        self.lifetimes = list(lifetimes)
        self.calls = 0

    def get_token(self, *scopes: str, **_: Any) -> AccessToken:
        assert scopes == (STORAGE_SCOPE,)
        self.calls += 1
        lifetime = self.lifetimes.pop(0)
        return AccessToken(f"token-{self.calls}", int(time.time() + lifetime))


def test_a_token_with_time_to_spare_is_reused_and_one_near_expiry_is_replaced() -> None:
    credential = ScriptedCredential(3600, GDAL_TOKEN_MIN_REMAINING_SECONDS - 60, 3600)
    tokens = RefreshingToken(credential, STORAGE_SCOPE, min_remaining_seconds=GDAL_TOKEN_MIN_REMAINING_SECONDS)
    assert [tokens.get(), tokens.get()] == ["token-1", "token-1"] and credential.calls == 1
    expiring = RefreshingToken(
        ScriptedCredential(GDAL_TOKEN_MIN_REMAINING_SECONDS - 60, 3600),
        STORAGE_SCOPE,
        min_remaining_seconds=GDAL_TOKEN_MIN_REMAINING_SECONDS,
    )
    assert [expiring.get(), expiring.get(), expiring.get()] == ["token-1", "token-2", "token-2"]


def test_identity_gdal_options_carry_account_endpoint_and_token_never_a_key() -> None:
    account = StorageAccount.identity(ScriptedCredential(3600), account_name="geoetldata")
    assert account.blob_service_uri == "https://geoetldata.blob.core.windows.net"
    assert account.queue_service_uri == "https://geoetldata.queue.core.windows.net"
    options = account.gdal_options()
    assert options == {
        "GDAL_CURL_CA_BUNDLE": certifi.where(),
        "AZURE_STORAGE_ACCOUNT": "geoetldata",
        "CPL_AZURE_ENDPOINT": "https://geoetldata.blob.core.windows.net",
        "AZURE_STORAGE_ACCESS_TOKEN": "token-1",
    }
    emulator = StorageAccount.identity(
        ScriptedCredential(3600), blob_service_uri="https://127.0.0.1:10000/devstoreaccount1/", verify="/ca.pem"
    )
    assert emulator.gdal_options()["AZURE_STORAGE_ACCOUNT"] == "devstoreaccount1"
    assert emulator.gdal_options()["GDAL_CURL_CA_BUNDLE"] == "/ca.pem"


def test_a_connection_string_account_gives_gdal_the_expanded_string_and_a_ca_bundle() -> None:
    options = StorageAccount.of("UseDevelopmentStorage=true").gdal_options()
    assert "AccountName=devstoreaccount1" in options["AZURE_STORAGE_CONNECTION_STRING"]
    assert options["GDAL_CURL_CA_BUNDLE"] == certifi.where()
    assert "AZURE_STORAGE_ACCESS_TOKEN" not in options


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"blob_service_uri": "https://a.blob.core.windows.net"}, "needs a token credential"),
        ({"credential": ScriptedCredential(1)}, "needs a blob or queue service URI"),
        ({"credential": ScriptedCredential(1), "blob_service_uri": "http://127.0.0.1:10000/x"}, "https://"),
    ],
)
def test_identity_storage_that_cannot_work_is_refused(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(StorageConfigurationError, match=message):
        StorageAccount(**arguments)


def test_the_container_picks_identity_or_connection_string_per_account_and_shares_one_credential() -> None:
    credential = ScriptedCredential()
    identity = ServiceContainer(
        Settings.model_validate(
            {"AzureWebJobsStorage__accountName": "geoetlhost", "DATA_STORAGE__accountName": "geoetldata"}
        ),
        credential=credential,
    )
    assert identity.host_storage.queue_service_uri == "https://geoetlhost.queue.core.windows.net"
    assert identity.data_storage.blob_service_uri == "https://geoetldata.blob.core.windows.net"
    assert identity.host_storage.credential is identity.data_storage.credential is credential
    assert credential.calls == 0, "building clients asks for no token"

    local = ServiceContainer(Settings.model_validate({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}))
    assert not local.host_storage.uses_identity
    assert local.data_storage is local.host_storage  # no DATA_STORAGE*: the host's account
