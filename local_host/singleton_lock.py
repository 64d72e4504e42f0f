"""A cross-process singleton lock on a blob lease, like the Functions host's ``locks/<hostId>/...`` blobs."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid

from azure.core.exceptions import HttpResponseError, ResourceExistsError
from azure.storage.blob import BlobLeaseClient, BlobServiceClient

logger = logging.getLogger("local_host.singleton")

HOSTS_CONTAINER = "azure-webjobs-hosts"
HOST_ID = "local"
LEASE_SECONDS = 15


def lock_blob_name(function_name: str) -> str:
    return f"locks/{HOST_ID}/{function_name}"


class BlobSingletonLock:
    """Held while this process owns the blob's lease; renewed every lease/3 on a background thread."""

    def __init__(self, service: BlobServiceClient, name: str, lease_seconds: int = LEASE_SECONDS) -> None:
        self._blob = service.get_blob_client(HOSTS_CONTAINER, name)
        self._container = service.get_container_client(HOSTS_CONTAINER)
        self.name = name
        self._lease_seconds = lease_seconds
        self._lease_id = str(uuid.uuid4())
        self._lease: BlobLeaseClient | None = None
        self._prepared = False
        self.lost = threading.Event()
        self._released = threading.Event()

    @property
    def held(self) -> bool:
        return self._lease is not None and not self.lost.is_set()

    def _prepare(self) -> None:
        if self._prepared:
            return
        with contextlib.suppress(ResourceExistsError):
            self._container.create_container()
        with contextlib.suppress(ResourceExistsError, HttpResponseError):  # exists, maybe leased by another instance
            self._blob.upload_blob(b"", overwrite=False)
        self._prepared = True

    def try_acquire(self) -> bool:
        try:
            self._prepare()
            self._lease = self._blob.acquire_lease(lease_duration=self._lease_seconds, lease_id=self._lease_id)
        except HttpResponseError as error:
            if error.status_code == 409:  # leased by someone else
                return False
            if error.status_code == 404:
                self._prepared = False
            logger.warning("Acquiring lock %s failed: %s", self.name, error.__class__.__name__)
            return False
        except Exception:
            logger.warning("Acquiring lock %s failed", self.name, exc_info=True)
            return False
        self.lost.clear()
        self._released.clear()
        threading.Thread(target=self._renew_loop, name=f"lock-{self.name}", daemon=True).start()
        return True

    def _renew_loop(self) -> None:
        last_renewed = time.monotonic()
        interval = self._lease_seconds / 3
        while not self._released.wait(interval):
            lease = self._lease
            if lease is None:
                return
            try:
                lease.renew()
                last_renewed = time.monotonic()
            except HttpResponseError as error:
                if error.status_code in (409, 412) or time.monotonic() - last_renewed >= self._lease_seconds:
                    logger.warning("Lost lock %s (%s)", self.name, error.__class__.__name__)
                    self.lost.set()
                    return
                logger.warning("Renewing lock %s failed; retrying", self.name)
            except Exception:
                if time.monotonic() - last_renewed >= self._lease_seconds:
                    logger.warning("Lost lock %s: renewals kept failing", self.name)
                    self.lost.set()
                    return
                logger.warning("Renewing lock %s failed; retrying", self.name, exc_info=True)

    def release(self) -> None:
        self._released.set()
        lease, self._lease = self._lease, None
        if lease is None or self.lost.is_set():
            return
        try:
            lease.release()
        except Exception:
            logger.warning("Releasing lock %s failed (it lapses in %ss)", self.name, self._lease_seconds)
