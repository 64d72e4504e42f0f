"""Key Vault secrets, cached, with Azure SDK errors translated at this boundary.

``SecretStore.get(name)`` reads the latest version of a secret and keeps it ``cache_seconds``
(KEY_VAULT_CACHE_SECONDS): a rotated secret is picked up by the first read after that. One fetch
per name runs at a time; concurrent readers of the same name wait for it instead of each asking
the vault. Errors, after the SDK's own (short) retries:

- the secret does not exist, the identity may not read it (401, 403), the name or vault is wrong
  (other 4xx), no identity is available → ``SecretConfigurationError``: the deployment must be
  fixed, retrying will not help;
- 5xx, 408, 429, timeouts, connection failures → ``SecretStoreUnavailableError`` (transient). A
  value read before is then served past its time to live (logged), and the vault asked again
  OUTAGE_RETRY_SECONDS later at the soonest, so a vault outage neither stops nor slows down new
  Postgres connections with a password that has most likely not changed.

Messages name the secret and the vault, never a value.

``unresolved_key_vault_references`` finds app settings that still hold an App Service Key Vault
reference literal (``@Microsoft.KeyVault(...)``): App Service leaves it in place when it cannot
resolve the reference (identity lacks access, wrong secret URI), and such a value must never be
used as what it stands for.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from azure.core.exceptions import (
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from pydantic import SecretStr

from schemas.errors import GeoEtlError, TransientTaskError
from schemas.settings import Settings, setting_env_name

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.keyvault.secrets import SecretClient

logger = logging.getLogger(__name__)

# What an app setting holds when App Service could not resolve its Key Vault reference.
_KEY_VAULT_REFERENCE = re.compile(r"^\s*@Microsoft\.KeyVault\(", re.IGNORECASE)

_ACCESS_HINT = "grant the app's identity the 'Key Vault Secrets User' role on the vault"
# While the vault is down, a value read before is served and the vault asked again this often at most.
OUTAGE_RETRY_SECONDS = 30.0

# SecretClient options unless the caller gives its own: a vault that does not answer is reported
# within seconds (a new Postgres connection waits on it), not after the SDK's default ten retries.
DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {
    "retry_total": 2,
    "retry_backoff_factor": 0.5,
    "retry_backoff_max": 4,
    "connection_timeout": 5,
    "read_timeout": 10,
}


class SecretConfigurationError(GeoEtlError):
    """A secret or credential the deployment must fix: missing secret, access denied, no identity,
    an unresolved Key Vault reference. Retrying does not help until the configuration changes."""


class SecretStoreUnavailableError(TransientTaskError):
    """Key Vault (or the identity endpoint) did not answer, or answered 5xx/429: retrying may succeed."""


def is_key_vault_reference(value: str | None) -> bool:
    """Whether ``value`` is an App Service Key Vault reference literal, i.e. one left unresolved."""
    return bool(value) and _KEY_VAULT_REFERENCE.match(value or "") is not None


def unresolved_key_vault_references(settings: Settings) -> list[str]:
    """The app settings (environment names, e.g. POSTGRES_PASSWORD) whose value is still an
    ``@Microsoft.KeyVault(...)`` literal, sorted. For the health check and startup: such a setting
    means App Service could not resolve the reference (the identity's access, the secret URI)."""
    found: list[str] = []
    for field in type(settings).model_fields:
        value = getattr(settings, field)
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            text = item.get_secret_value() if isinstance(item, SecretStr) else item
            if isinstance(text, str) and is_key_vault_reference(text):
                found.append(setting_env_name(field))
                break
    return sorted(found)


def unresolved_key_vault_references_in_environment(environ: Mapping[str, str]) -> list[str]:
    """Like ``unresolved_key_vault_references`` over raw environment variables: for startup when
    Settings cannot even be built because such a literal failed a setting's validation."""
    return sorted(name for name, value in environ.items() if is_key_vault_reference(value))


def _status(exc: HttpResponseError) -> int | None:
    status = exc.status_code
    if status is None and exc.response is not None:
        status = getattr(exc.response, "status_code", None)
    return status


def _error_code(exc: HttpResponseError) -> str:
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    return str(code) if code else ""


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _translate_http(exc: HttpResponseError, what: str, access_hint: str) -> GeoEtlError:
    status = _status(exc)
    if status is None:
        # No HTTP answer: the identity could not get a token. CredentialUnavailableError means no
        # identity is configured at all (a deployment matter); anything else may pass.
        from azure.identity import CredentialUnavailableError

        if isinstance(exc, CredentialUnavailableError):
            return SecretConfigurationError(f"{what}: no Azure identity available ({_first_line(exc)})")
        return SecretStoreUnavailableError(f"{what}: could not get an access token ({_first_line(exc)})")
    code = _error_code(exc)
    described = f"HTTP {status}{' ' + code if code else ''}"
    if status in {408, 429} or status >= 500:
        return SecretStoreUnavailableError(f"{what}: vault unavailable ({described})")
    if status in {401, 403}:
        return SecretConfigurationError(
            f"{what}: access denied ({described}){'; ' + access_hint if access_hint else ''}"
        )
    return SecretConfigurationError(f"{what}: refused ({described})")


def translate_azure_error(exc: Exception, what: str, *, access_hint: str = "") -> GeoEtlError:
    """Map an Azure SDK or azure-identity error met while reading ``what`` (a phrase naming the
    secret and vault, or the token scope) to ``SecretConfigurationError`` or
    ``SecretStoreUnavailableError``; ``access_hint`` is added to a 401/403's message. Never
    includes a secret value (Key Vault errors hold none)."""
    if isinstance(exc, ResourceNotFoundError):
        return SecretConfigurationError(f"{what}: not found (HTTP 404 {_error_code(exc) or 'NotFound'})")
    if isinstance(exc, HttpResponseError):  # ClientAuthenticationError (identity) is one too
        return _translate_http(exc, what, access_hint)
    if isinstance(exc, ServiceRequestError | ServiceResponseError | ConnectionError | TimeoutError):
        return SecretStoreUnavailableError(f"{what}: vault unreachable ({type(exc).__name__})")
    return SecretConfigurationError(f"{what}: {type(exc).__name__}: {_first_line(exc)}")


@dataclass
class _Cached:
    value: str
    fetched_at: float


class SecretStore:
    """Secrets of one vault, each cached ``cache_seconds``; thread-safe."""

    def __init__(
        self,
        vault_url: str,
        credential: TokenCredential,
        *,
        cache_seconds: float = 300.0,
        outage_retry_seconds: float = OUTAGE_RETRY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        **client_options: Any,
    ) -> None:
        """``client_options`` go to ``SecretClient`` over ``DEFAULT_CLIENT_OPTIONS`` (retries,
        timeouts; ``connection_verify`` for a private CA; ``verify_challenge_resource``)."""
        from azure.keyvault.secrets import SecretClient  # imported when a vault is used, not at app import

        self.vault_url = vault_url.rstrip("/")
        self._client: SecretClient = SecretClient(
            self.vault_url, credential, **{**DEFAULT_CLIENT_OPTIONS, **client_options}
        )
        self._cache_seconds = cache_seconds
        self._outage_retry_seconds = min(outage_retry_seconds, cache_seconds)
        self._clock = clock
        self._cache: dict[str, _Cached] = {}
        self._fetching: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def _fresh(self, name: str) -> str | None:
        with self._lock:
            entry = self._cache.get(name)
        if entry is not None and self._clock() - entry.fetched_at < self._cache_seconds:
            return entry.value
        return None

    def get(self, name: str) -> str:
        """The secret's latest value, from the cache while younger than ``cache_seconds``.

        Raises ``SecretConfigurationError`` (missing, forbidden, no value) or
        ``SecretStoreUnavailableError`` (vault down, no value read before)."""
        value = self._fresh(name)
        if value is not None:
            return value
        with self._lock:
            fetching = self._fetching.setdefault(name, threading.Lock())
        with fetching:  # one fetch per name: the others wait, then find it cached
            value = self._fresh(name)
            if value is not None:
                return value
            fetched_at = self._clock()
            try:
                value = self._fetch(name)
            except SecretStoreUnavailableError as error:
                with self._lock:
                    stale = self._cache.get(name)
                if stale is None:
                    raise
                logger.warning("%s; using the value read before", error)
                with self._lock:  # fresh again for outage_retry_seconds: not every caller waits on the vault
                    self._cache[name] = _Cached(
                        stale.value, fetched_at - self._cache_seconds + self._outage_retry_seconds
                    )
                return stale.value
            with self._lock:
                self._cache[name] = _Cached(value, fetched_at)
            return value

    def _fetch(self, name: str) -> str:
        what = f"Key Vault secret {name!r} in {self.vault_url}"
        try:
            secret = self._client.get_secret(name)
        except Exception as exc:
            raise translate_azure_error(exc, what, access_hint=_ACCESS_HINT) from exc
        if secret.value is None:
            raise SecretConfigurationError(f"{what}: has no value")
        if secret.properties.enabled is False:
            raise SecretConfigurationError(f"{what}: is disabled")
        return secret.value

    def invalidate(self, name: str | None = None) -> None:
        """Forget the cached value of ``name`` (every name when None): the next ``get`` reads the vault."""
        with self._lock:
            if name is None:
                self._cache.clear()
            else:
                self._cache.pop(name, None)

    def close(self) -> None:
        self._client.close()


def secret_store_from_settings(
    settings: Settings, credential: TokenCredential, **client_options: Any
) -> SecretStore | None:
    """The ``SecretStore`` of KEY_VAULT_URL, cached KEY_VAULT_CACHE_SECONDS; None without a vault."""
    if not settings.key_vault_url:
        return None
    return SecretStore(
        settings.key_vault_url, credential, cache_seconds=settings.key_vault_cache_seconds, **client_options
    )
