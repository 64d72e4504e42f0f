"""Statements of STAC collection ownership (table ``collection_owners``, migration 0008).

They live in repositories/sql/collection_owners.sql (same ``-- name:`` blocks as queries.sql) and
run on the connection of an open ``Database.transaction()``; each is one atomic statement.
"""

from __future__ import annotations

from typing import Any

from repositories.named_queries import NamedQueries
from repositories.sql_catalog import named_queries_in


def collection_owner_queries() -> dict[str, str]:
    return named_queries_in(CollectionOwnerQueries.SQL_FILE)


class CollectionOwnerQueries(NamedQueries):
    SQL_FILE = "collection_owners.sql"

    def claim_collection(
        self, output_container: str, collection_id: str, owner_key: str, owner: str, lease_seconds: float
    ) -> dict[str, Any]:
        """Record ``owner_key`` as the collection's owner if it has none or its owner no longer holds
        it (see the statement); the owner it has now, its writer and until when it is held."""
        params = {
            "output_container": output_container,
            "collection_id": collection_id,
            "owner_key": owner_key,
            "owner": owner,
            "lease_seconds": lease_seconds,
        }
        row = self._one("claim_collection", params)
        assert row is not None  # INSERT … ON CONFLICT DO UPDATE … RETURNING always returns the row
        return row

    def take_over_outputs(
        self, output_container: str, collection_id: str, owner_key: str, job_id: str, lease_seconds: float
    ) -> dict[str, Any] | None:
        """Make ``job_id`` the collection's writer (see the statement); None when ``owner_key``
        does not own the collection (claim it first)."""
        params = {
            "output_container": output_container,
            "collection_id": collection_id,
            "owner_key": owner_key,
            "job_id": job_id,
            "lease_seconds": lease_seconds,
        }
        return self._one("take_over_outputs", params)

    def renew_writer_lease(
        self, output_container: str, collection_id: str, job_id: str, lease_seconds: float
    ) -> dict[str, Any] | None:
        """Start ``job_id``'s writer lease again; None when it is no longer the writer."""
        params = {
            "output_container": output_container,
            "collection_id": collection_id,
            "job_id": job_id,
            "lease_seconds": lease_seconds,
        }
        return self._one("renew_writer_lease", params)
