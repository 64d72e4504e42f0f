"""How the app reaches one storage account: a connection string (Azurite, local development) or,
in Azure, identity-based — service URIs plus an azure-identity ``TokenCredential``, no account key.

Every queue client, blob client and GDAL ``/vsiaz/`` configuration is built here, so the choice is
made in one place (``services/container.py``) from settings and nothing else knows which it is.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import certifi
from azure.core.credentials import AccessToken, TokenCredential
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

# The OAuth scope of Azure Storage (blobs and queues).
STORAGE_SCOPE = "https://storage.azure.com/.default"
# A token handed to GDAL has at least this long to live: a /vsiaz/ read or write started with it
# does not meet an expiry halfway (managed-identity tokens live for hours; this only bites near the end).
GDAL_TOKEN_MIN_REMAINING_SECONDS = 15 * 60

# Azurite's well-known development account (public, documented by Microsoft), for the
# "UseDevelopmentStorage=true" shorthand, which the SDK understands and GDAL does not.
_DEV_ACCOUNT = "devstoreaccount1"
_DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_DEV_CONNECTION_STRING = (
    f"DefaultEndpointsProtocol=http;AccountName={_DEV_ACCOUNT};AccountKey={_DEV_KEY};"
    f"BlobEndpoint=http://127.0.0.1:10000/{_DEV_ACCOUNT};QueueEndpoint=http://127.0.0.1:10001/{_DEV_ACCOUNT};"
)


class StorageConfigurationError(ValueError):
    """A storage account description that cannot work (no way to reach the service asked for)."""


def gdal_connection_string(connection_string: str) -> str:
    """The connection string GDAL's /vsiaz/ understands (expands the development-storage shorthand)."""
    parts = dict(part.split("=", 1) for part in connection_string.strip().rstrip(";").split(";") if "=" in part)
    if parts.get("UseDevelopmentStorage", "").lower() == "true":
        return _DEV_CONNECTION_STRING
    return connection_string


def account_service_uri(account_name: str, service: str) -> str:
    """The public-cloud endpoint of an account's service ("blob" or "queue")."""
    return f"https://{account_name}.{service}.core.windows.net"


class RefreshingToken:
    """Tokens of one scope from a credential, re-fetched when less than ``min_remaining`` is left.

    azure-identity caches tokens itself; this only keeps a token in hand so a caller that needs the
    raw string (GDAL) gets one with time to spare, without a credential call per use.
    """

    def __init__(self, credential: TokenCredential, scope: str, *, min_remaining_seconds: float) -> None:
        self._credential = credential
        self._scope = scope
        self._min_remaining = min_remaining_seconds
        self._token: AccessToken | None = None
        self._lock = threading.Lock()

    def get(self) -> str:
        with self._lock:
            token = self._token
            if token is None or token.expires_on - time.time() < self._min_remaining:
                token = self._credential.get_token(self._scope)
                self._token = token
            return token.token


@dataclass
class StorageAccount:
    """One storage account: ``connection_string``, or service URIs with ``credential``.

    ``verify`` is the TLS verification of the SDK's HTTP transport (a CA bundle path for an endpoint
    with a private certificate, such as Azurite over HTTPS in tests); GDAL gets the same bundle.
    """

    connection_string: str | None = None
    blob_service_uri: str | None = None
    queue_service_uri: str | None = None
    credential: TokenCredential | None = field(default=None, repr=False)
    verify: str | bool = True
    _gdal_token: RefreshingToken | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.connection_string:
            return
        if self.credential is None:
            raise StorageConfigurationError("identity-based storage needs a token credential")
        if not (self.blob_service_uri or self.queue_service_uri):
            raise StorageConfigurationError("identity-based storage needs a blob or queue service URI")
        for uri in (self.blob_service_uri, self.queue_service_uri):
            if uri and urlsplit(uri).scheme != "https":
                raise StorageConfigurationError(f"{uri}: identity-based storage needs an https:// endpoint")
        self._gdal_token = RefreshingToken(
            self.credential, STORAGE_SCOPE, min_remaining_seconds=GDAL_TOKEN_MIN_REMAINING_SECONDS
        )

    @classmethod
    def of(cls, account: StorageAccount | str) -> StorageAccount:
        """Accepts a connection string where an account is expected (local tools, tests)."""
        return account if isinstance(account, StorageAccount) else cls(connection_string=account)

    @classmethod
    def identity(
        cls,
        credential: TokenCredential,
        *,
        account_name: str | None = None,
        blob_service_uri: str | None = None,
        queue_service_uri: str | None = None,
        verify: str | bool = True,
    ) -> StorageAccount:
        """Identity-based access: explicit service URIs win over the public-cloud ones of ``account_name``."""
        if account_name:
            blob_service_uri = blob_service_uri or account_service_uri(account_name, "blob")
            queue_service_uri = queue_service_uri or account_service_uri(account_name, "queue")
        return cls(
            blob_service_uri=blob_service_uri,
            queue_service_uri=queue_service_uri,
            credential=credential,
            verify=verify,
        )

    @property
    def uses_identity(self) -> bool:
        return not self.connection_string

    def _transport_options(self) -> dict[str, Any]:
        return {} if self.verify is True else {"connection_verify": self.verify}

    def blob_service_client(self, **options: Any) -> BlobServiceClient:
        options = {**self._transport_options(), **options}
        if self.connection_string:
            return BlobServiceClient.from_connection_string(self.connection_string, **options)
        if not self.blob_service_uri:
            raise StorageConfigurationError("this storage account has no blob service URI")
        return BlobServiceClient(self.blob_service_uri, credential=self.credential, **options)

    def queue_client(self, queue_name: str, **options: Any) -> QueueClient:
        options = {**self._transport_options(), **options}
        if self.connection_string:
            return QueueClient.from_connection_string(self.connection_string, queue_name, **options)
        if not self.queue_service_uri:
            raise StorageConfigurationError("this storage account has no queue service URI")
        return QueueClient(self.queue_service_uri, queue_name, credential=self.credential, **options)

    def gdal_options(self) -> dict[str, str]:
        """GDAL configuration for /vsiaz/ access: the connection string, or the account, its endpoint
        and a bearer token of the credential (refreshed before expiry; never an account key)."""
        # The CA bundle GDAL's curl trusts: the rasterio wheel's curl looks for a Red Hat path by
        # default, absent on Debian (and so on Azure Functions' Linux images), so HTTPS is always
        # given a bundle: the private one when set, else certifi's (Mozilla's roots).
        bundle = self.verify if isinstance(self.verify, str) else certifi.where()
        options: dict[str, str] = {"GDAL_CURL_CA_BUNDLE": bundle}
        if self.connection_string:
            options["AZURE_STORAGE_CONNECTION_STRING"] = gdal_connection_string(self.connection_string)
            return options
        if not self.blob_service_uri or self._gdal_token is None:
            raise StorageConfigurationError("GDAL /vsiaz/ access needs a blob service URI")
        endpoint = self.blob_service_uri.rstrip("/")
        options["AZURE_STORAGE_ACCOUNT"] = _account_name(endpoint)
        options["CPL_AZURE_ENDPOINT"] = endpoint
        options["AZURE_STORAGE_ACCESS_TOKEN"] = self._gdal_token.get()
        return options


def _account_name(blob_endpoint: str) -> str:
    """The account of a blob endpoint: the host's first label, or the path's first segment for an
    emulator-style endpoint (``https://127.0.0.1:10000/devstoreaccount1``)."""
    parts = urlsplit(blob_endpoint)
    path = parts.path.strip("/")
    if path:
        return path.split("/")[0]
    return (parts.hostname or "").split(".")[0]
