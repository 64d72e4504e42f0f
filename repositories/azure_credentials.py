"""The app's Azure identity, made on demand (never at import: importing function_app touches no network)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential


def default_credential(client_id: str | None) -> TokenCredential:
    """``DefaultAzureCredential`` for the app's managed identity: the user-assigned one whose client
    id is ``client_id`` (AZURE_CLIENT_ID), else the system-assigned one; locally, the developer's
    Azure CLI / environment credentials. Constructing it sends nothing: tokens are requested (and
    cached by azure-identity) on first use. Close it with the app (``close()``)."""
    from azure.identity import DefaultAzureCredential

    if client_id:
        return DefaultAzureCredential(managed_identity_client_id=client_id)
    return DefaultAzureCredential()
