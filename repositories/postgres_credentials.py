"""The password each new Postgres connection uses, and how connections are made.

``Database`` calls a *password provider* for every connection its pool opens, so what it returns
can change while the app runs:

- POSTGRES_AUTH=password, POSTGRES_PASSWORD_SECRET_NAME set: the Key Vault secret, read through a
  ``SecretStore`` (cached KEY_VAULT_CACHE_SECONDS): after a rotation, new connections use the new
  password once the cached one is that old, or at once when the server refuses the cached one
  (``on_password_rejected`` drops it, at most every REFETCH_AFTER_REJECTION_SECONDS); open
  connections are not affected.
- POSTGRES_AUTH=password otherwise: POSTGRES_PASSWORD (None when empty: libpq's own defaults).
- POSTGRES_AUTH=entra: an access token of the app's identity for POSTGRES_ENTRA_SCOPE, asked of
  the credential for each new connection (azure-identity caches it and renews it before it
  expires), so no connection is opened with an expired token. POSTGRES_USER is then the Entra
  principal's role name; Azure requires TLS (POSTGRES_SSLMODE=require), which is left to the
  setting.

A password that is still an ``@Microsoft.KeyVault(...)`` literal (an app setting reference App
Service could not resolve) is refused with ``SecretConfigurationError``, never sent.

With POSTGRES_PGBOUNCER, connections use no server-side prepared statements
(``prepare_threshold=None``): PgBouncer in transaction mode may run each transaction on another
server connection.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from repositories.key_vault import SecretConfigurationError, SecretStore, is_key_vault_reference, translate_azure_error
from schemas.settings import Settings, setting_env_name

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

PasswordProvider = Callable[[], str | None]
# psycopg's own default: a query is prepared on the server after it ran this many times.
PSYCOPG_PREPARE_THRESHOLD = 5
# A refused Key Vault password is read again at most this often (the pool retries a failed
# connection with delays from 1 s; every instance of the app does): the vault is not hammered.
REFETCH_AFTER_REJECTION_SECONDS = 5.0


@dataclass(frozen=True)
class PostgresConnectOptions:
    """What ``Database`` takes besides the conninfo: ``Database(conninfo, ...,
    password_provider=options.password_provider, on_password_rejected=options.on_password_rejected,
    prepare_threshold=options.prepare_threshold)``."""

    password_provider: PasswordProvider
    on_password_rejected: Callable[[], None] | None
    prepare_threshold: int | None


def _refuse_reference(password: str, source: str) -> str:
    if is_key_vault_reference(password):
        raise SecretConfigurationError(
            f"{source} holds an unresolved Key Vault reference (@Microsoft.KeyVault(...)): App Service could not "
            "resolve it; check the reference and that the app's identity may read the secret"
        )
    return password


def static_password(password: str | None, source: str = "POSTGRES_PASSWORD") -> PasswordProvider:
    """A fixed password (None or empty: none sent). Refuses an unresolved Key Vault reference."""

    def provide() -> str | None:
        return _refuse_reference(password, source) if password else None

    return provide


class KeyVaultPassword:
    """The Key Vault secret ``secret_name`` through the store's cache (call it); ``rejected()``
    drops the cached value, at most every ``refetch_seconds``, when the server refused it."""

    def __init__(
        self, store: SecretStore, secret_name: str, *, refetch_seconds: float = REFETCH_AFTER_REJECTION_SECONDS
    ) -> None:
        self._store = store
        self._name = secret_name
        self._refetch_seconds = refetch_seconds
        self._last_drop: float | None = None
        self._lock = threading.Lock()

    def __call__(self) -> str:
        value = self._store.get(self._name)
        return _refuse_reference(value, f"Key Vault secret {self._name!r} in {self._store.vault_url}")

    def rejected(self) -> None:
        now = time.monotonic()
        with self._lock:
            if self._last_drop is not None and now - self._last_drop < self._refetch_seconds:
                return
            self._last_drop = now
        self._store.invalidate(self._name)


def key_vault_password(store: SecretStore, secret_name: str) -> KeyVaultPassword:
    """The Key Vault secret ``secret_name``, through the store's cache."""
    return KeyVaultPassword(store, secret_name)


def entra_token_password(credential: TokenCredential, scope: str) -> PasswordProvider:
    """A current access token for ``scope``, asked of ``credential`` each time (it caches and renews)."""

    def provide() -> str:
        try:
            return credential.get_token(scope).token
        except Exception as exc:
            raise translate_azure_error(exc, f"Entra access token for Postgres ({scope})") from exc

    return provide


def postgres_connect_options(
    settings: Settings,
    *,
    credential: TokenCredential | None = None,
    secret_store: SecretStore | None = None,
) -> PostgresConnectOptions:
    """The password provider and prepare threshold for ``Database`` from the settings.

    ``credential`` (``repositories.azure_credentials.default_credential(settings.azure_client_id)``)
    is needed for POSTGRES_AUTH=entra; ``secret_store`` (a ``SecretStore`` over KEY_VAULT_URL) when
    POSTGRES_PASSWORD_SECRET_NAME is set; ``needs_credential`` / ``needs_secret_store`` say when.
    Raises ``SecretConfigurationError`` when a needed one is missing. Sends nothing: the provider
    reads the vault or asks for a token only when the pool opens a connection."""
    rejected: Callable[[], None] | None = None
    if settings.postgres_auth == "entra":
        if credential is None:
            raise SecretConfigurationError("POSTGRES_AUTH=entra needs the app's Azure credential")
        provider = entra_token_password(credential, settings.postgres_entra_scope)
    elif settings.postgres_password_secret_name:
        if secret_store is None:
            raise SecretConfigurationError(
                f"{setting_env_name('postgres_password_secret_name')} needs a Key Vault secret store (KEY_VAULT_URL)"
            )
        from_vault = key_vault_password(secret_store, settings.postgres_password_secret_name)
        provider, rejected = from_vault, from_vault.rejected
    else:
        provider = static_password(
            settings.postgres_password.get_secret_value() or None, setting_env_name("postgres_password")
        )
    threshold = None if settings.postgres_pgbouncer else PSYCOPG_PREPARE_THRESHOLD
    return PostgresConnectOptions(
        password_provider=provider, on_password_rejected=rejected, prepare_threshold=threshold
    )


def resolved_conninfo(conninfo: str, options: PostgresConnectOptions) -> str:
    """``conninfo`` with the provider's current password, for a one-off ``psycopg.connect`` outside
    the pool (migrations, CLIs). Raises what the provider raises."""
    from psycopg.conninfo import make_conninfo

    password = options.password_provider()
    return make_conninfo(conninfo, password=password) if password is not None else conninfo


def needs_credential(settings: Settings) -> bool:
    """Whether the settings need the app's Azure credential (Entra auth or a Key Vault)."""
    return settings.postgres_auth == "entra" or settings.key_vault_url is not None


def needs_secret_store(settings: Settings) -> bool:
    """Whether Postgres's password comes from Key Vault (POSTGRES_PASSWORD_SECRET_NAME)."""
    return settings.postgres_auth == "password" and settings.postgres_password_secret_name is not None
