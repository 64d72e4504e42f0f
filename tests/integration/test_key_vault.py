"""SecretStore against a local HTTPS Key Vault speaking the real protocol (tests/support/key_vault_server.py),
read by the real azure-keyvault-secrets client: challenge auth, TTL cache, rotation, errors, outages."""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from repositories.key_vault import SecretConfigurationError, SecretStore, SecretStoreUnavailableError
from tests.support.key_vault_fixtures import clock_fixture, store_fixture, vault_fixture  # noqa: F401
from tests.support.key_vault_server import VAULT_SCOPE, FakeClock, KeyVaultServer, key_vault_server

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _vault_serving(vault: KeyVaultServer) -> Iterator[None]:
    vault.set_mode("serve")
    yield
    vault.set_mode("serve")
    vault.state.forbidden.clear()


def _name() -> str:
    return f"pg-password-{secrets.token_hex(4)}"


def test_reads_a_secret_with_challenge_auth(tmp_path: Path) -> None:
    with key_vault_server(tmp_path) as fresh:  # a vault this process has not met: no cached challenge
        fresh.set_secret("db-password", "first value")
        store = SecretStore(fresh.vault_url, fresh.credential, **fresh.client_options)
        try:
            assert store.get("db-password") == "first value"
        finally:
            store.close()
        assert fresh.state.challenges == 1
        assert fresh.credential.calls == {VAULT_SCOPE: 1}  # the scope of the challenge's resource
        # The first request went without a token, the retry with it.
        assert [authorised for _, _, authorised in fresh.state.requests] == [False, True]


def test_repeated_gets_within_the_ttl_read_the_vault_once(vault: KeyVaultServer, store: SecretStore) -> None:
    name = _name()
    vault.set_secret(name, "value")
    before = vault.secret_reads
    assert [store.get(name) for _ in range(5)] == ["value"] * 5
    assert vault.secret_reads - before == 1


def test_a_new_version_is_picked_up_after_the_ttl(vault: KeyVaultServer, store: SecretStore, clock: FakeClock) -> None:
    name = _name()
    vault.set_secret(name, "old password")
    assert store.get(name) == "old password"
    vault.set_secret(name, "new password")  # rotation: a new latest version
    clock.now += 59
    assert store.get(name) == "old password"  # still within the TTL
    clock.now += 2
    before = vault.secret_reads
    assert store.get(name) == "new password"
    assert vault.secret_reads - before == 1


def test_concurrent_readers_share_one_fetch(vault: KeyVaultServer, store: SecretStore) -> None:
    name = _name()
    vault.set_secret(name, "shared")
    before = vault.secret_reads
    barrier = threading.Barrier(8)
    results: list[str] = []

    def read() -> None:
        barrier.wait()
        results.append(store.get(name))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == ["shared"] * 8
    assert vault.secret_reads - before == 1


def test_a_missing_secret_is_a_configuration_error_naming_it(vault: KeyVaultServer, store: SecretStore) -> None:
    name = _name()
    with pytest.raises(SecretConfigurationError) as raised:
        store.get(name)
    message = str(raised.value)
    assert name in message
    assert vault.vault_url in message
    assert "not found" in message
    assert "\n" not in message


def test_access_denied_is_a_configuration_error_without_the_value(vault: KeyVaultServer, store: SecretStore) -> None:
    name = _name()
    vault.set_secret(name, "do-not-leak-me")
    vault.state.forbidden.add(name)
    with pytest.raises(SecretConfigurationError) as raised:
        store.get(name)
    message = str(raised.value)
    assert name in message
    assert "403" in message
    assert "do-not-leak-me" not in message


@pytest.mark.parametrize("mode", ["unavailable", "drop"])
def test_vault_down_is_a_transient_error(vault: KeyVaultServer, store: SecretStore, mode: str) -> None:
    name = _name()
    vault.set_secret(name, "value")
    vault.set_mode(mode)  # type: ignore[arg-type]
    with pytest.raises(SecretStoreUnavailableError) as raised:
        store.get(name)
    assert name in str(raised.value)
    assert "value" not in str(raised.value).replace(name, "")


def test_vault_not_listening_is_a_transient_error(tmp_path: Path) -> None:
    with key_vault_server(tmp_path) as gone:
        url, options, credential = gone.vault_url, gone.client_options, gone.credential
    store = SecretStore(url, credential, **options)
    try:
        with pytest.raises(SecretStoreUnavailableError, match="unreachable"):
            store.get("anything")
    finally:
        store.close()


def test_a_value_read_before_is_served_while_the_vault_is_down(
    vault: KeyVaultServer, store: SecretStore, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    name = _name()
    vault.set_secret(name, "last known")
    assert store.get(name) == "last known"
    clock.now += 120
    vault.set_mode("unavailable")
    with caplog.at_level(logging.WARNING, logger="repositories.key_vault"):
        assert store.get(name) == "last known"
    assert any("vault unavailable" in record.getMessage() for record in caplog.records)
    reads = len(vault.state.requests)
    clock.now += 29
    assert store.get(name) == "last known"  # the vault is not asked again for a while
    assert len(vault.state.requests) == reads
    vault.set_mode("serve")
    vault.set_secret(name, "rotated")
    clock.now += 2
    assert store.get(name) == "rotated"


def test_a_deleted_secret_is_not_served_from_the_stale_cache(
    vault: KeyVaultServer, store: SecretStore, clock: FakeClock
) -> None:
    name = _name()
    vault.set_secret(name, "value")
    store.get(name)
    vault.delete_secret(name)
    clock.now += 120
    with pytest.raises(SecretConfigurationError):
        store.get(name)


def test_invalidate_makes_the_next_get_read_the_vault(vault: KeyVaultServer, store: SecretStore) -> None:
    name = _name()
    vault.set_secret(name, "one")
    assert store.get(name) == "one"
    vault.set_secret(name, "two")
    store.invalidate(name)
    assert store.get(name) == "two"
