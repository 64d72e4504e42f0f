"""Fixtures shared by integration modules that define a module-scoped ``settings`` fixture
(a module with its own ``container`` or ``storage`` fixture uses that one instead)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from repositories.blob_storage import BlobStorage
from schemas.settings import Settings
from services.container import ServiceContainer
from tests.support.engine import make_container


@pytest.fixture(scope="module")
def container(settings: Settings) -> Iterator[ServiceContainer]:
    """The services over the module's settings, with the default job types."""
    services = make_container(settings)
    yield services
    services.close()


@pytest.fixture(scope="module")
def storage(settings: Settings) -> BlobStorage:
    """Blob storage of the module's settings, with the bronze container made."""
    blobs = BlobStorage(settings.storage_connection_string.get_secret_value())
    blobs.ensure_container("bronze")
    return blobs
