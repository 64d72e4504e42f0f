"""pytest fixtures over the local Key Vault (tests/support/key_vault_server.py): a module's vault, a
settable clock and a SecretStore reading the vault through it. Import the ``*_fixture`` functions
into a test module; tests ask for ``vault``, ``clock`` and ``store``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from repositories.key_vault import SecretStore
from tests.support.key_vault_server import FakeClock, KeyVaultServer, key_vault_server


@pytest.fixture(scope="module", name="vault")
def vault_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyVaultServer]:
    with key_vault_server(tmp_path_factory.mktemp("key-vault")) as server:
        yield server


@pytest.fixture(name="clock")
def clock_fixture() -> FakeClock:
    return FakeClock()


@pytest.fixture(name="store")
def store_fixture(vault: KeyVaultServer, clock: FakeClock) -> Iterator[SecretStore]:
    """A SecretStore of the vault, caching 60 s of ``clock``."""
    secret_store = SecretStore(vault.vault_url, vault.credential, cache_seconds=60, clock=clock, **vault.client_options)
    yield secret_store
    secret_store.close()
