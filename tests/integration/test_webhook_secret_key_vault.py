"""The webhook signing secret from Key Vault (WEBHOOK_SECRET_NAME) through the app's SecretStore,
against the local vault: deliveries are signed with the vault's current value."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from devstack.postgres import PostgresDatabase
from repositories.key_vault import SecretConfigurationError, SecretStore
from schemas.settings import Settings
from services.container import ServiceContainer
from services.webhooks.signing import WebhookSigner
from tests.support.engine import make_settings
from tests.support.key_vault_fixtures import clock_fixture, store_fixture, vault_fixture  # noqa: F401
from tests.support.key_vault_server import FakeClock, KeyVaultServer

pytestmark = pytest.mark.integration

FIRST = "whsec_" + base64.b64encode(b"first-webhook-secret-from-the-vault!").decode()
SECOND = "whsec_" + base64.b64encode(b"rotated-webhook-secret-from-vault!!!").decode()


@pytest.fixture
def container(
    azurite_connection_string: str, postgres_database: PostgresDatabase, vault: KeyVaultServer, store: SecretStore
) -> Iterator[ServiceContainer]:
    settings: Settings = make_settings(
        azurite_connection_string,
        postgres_database,
        key_vault_url=vault.vault_url,
        webhook_secret_name="webhook-signing",
    )
    c = ServiceContainer(settings)
    # The app builds this store from KEY_VAULT_URL with its identity; the local vault needs its CA
    # and test credential, so the container gets the store the fixture made for it.
    c._instances["secret_store"] = store
    yield c
    c._instances.pop("secret_store", None)
    c.close()


def test_the_signing_secret_comes_from_key_vault_and_follows_rotation(
    container: ServiceContainer, vault: KeyVaultServer, clock: FakeClock
) -> None:
    assert container.callback_policy.signing_configured
    signer = WebhookSigner(container.webhook_secret)
    with pytest.raises(SecretConfigurationError):
        signer.key()  # not in the vault yet: the delivery raises before claiming (the host retries)
    vault.set_secret("webhook-signing", FIRST)
    headers = signer.headers(signer.key(), "msg_kv", "{}")
    assert Webhook(FIRST).verify("{}", headers) == {}
    vault.set_secret("webhook-signing", SECOND)
    clock.now += 61  # past the store's cache time
    rotated = signer.headers(signer.key(), "msg_kv", "{}")
    assert Webhook(SECOND).verify("{}", rotated) == {}
    with pytest.raises(WebhookVerificationError):
        Webhook(FIRST).verify("{}", rotated)
