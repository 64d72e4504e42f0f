"""Who owns a STAC collection's outputs (table collection_owners, migration 0008).

A collection id in an output container has one owner: the job type with the input and output
options whose outputs it describes (``Owner.key``). The first submission naming it claims it (one
INSERT … ON CONFLICT); a submission from another owner is refused with a 409 naming
``collection_id``, and a job that reaches its writing stage under another owner (submitted before
ownership was recorded) fails with a one-line reason. Ownership is held while it is used: by a
submission that has not written yet, or by a writer job still queued or processing, each for at most
the writer lease (COLLECTION_WRITER_LEASE_SECONDS, renewed by every write); a collection whose writer
completed, failed or was cancelled, or whose lease lapsed (a writer stuck in processing), is taken
over by the next claim, of whichever owner, in the claiming statement itself. Jobs of the same
owner (a replaced source is a new job with the same outputs; another STAC datetime) write in turn:
before writing, a job takes over as the collection's writer, waiting while another job of the owner
is still running (within its lease), and the previous writer's result is marked ``superseded_by``:
what it recorded (blobs, sha256) is no longer what is there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from repositories.collection_owner_queries import CollectionOwnerQueries
from repositories.database import Database
from schemas.errors import ConflictError, InstanceBusyError, PermanentTaskError

# A job whose outputs another job of the same owner is still writing waits this long (uniform),
# handed back to the queue without counting an attempt, and tries again.
WRITER_WAIT_SECONDS = (10.0, 20.0)
MAX_OWNER_CHARS = 300
# Default of COLLECTION_WRITER_LEASE_SECONDS: two functionTimeouts (30 min), the longest a live
# writer's task runs between two renewals.
DEFAULT_WRITER_LEASE_SECONDS = 3600.0


@dataclass(frozen=True)
class Owner:
    key: str  # compared: job type, input and output options
    description: str  # shown: "process_raster of bronze/a.tif"

    @property
    def shown(self) -> str:
        text = self.description
        return text if len(text) <= MAX_OWNER_CHARS else text[: MAX_OWNER_CHARS - 1] + "…"


def _when(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "unknown"


def _taken_by(collection_id: str, output_container: str, row: dict[str, Any]) -> str:
    writer = f"job {row['writer_job_id']} ({row['writer_status'] or 'gone'})" if row["writer_job_id"] else None
    held = f"held by {writer}" if writer and row["writer_status"] in ("queued", "processing") else "claimed"
    return (
        f"collection_id {collection_id!r} in {output_container} belongs to {row['owner']} "
        f"({held} until {_when(row['held_until'])}); choose another collection_id (or leave it out for "
        "the default), or submit again after that time"
    )


class CollectionOwnership:
    def __init__(self, database: Database, lease_seconds: float = DEFAULT_WRITER_LEASE_SECONDS) -> None:
        self._db = database
        self._lease = lease_seconds

    def _claim(self, output_container: str, collection_id: str, owner: Owner) -> str | None:
        """Claim the collection for ``owner``; the reason it cannot be, or None."""
        with self._db.transaction() as repo:
            row = CollectionOwnerQueries.within(repo).claim_collection(
                output_container, collection_id, owner.key, owner.shown, self._lease
            )
        if row["owner_key"] == owner.key:
            return None
        return _taken_by(collection_id, output_container, row)

    def claim_at_submission(self, output_container: str, collection_id: str, owner: Owner) -> None:
        """At submission: a collection owned by another owner is a 409 naming ``collection_id``."""
        problem = self._claim(output_container, collection_id, owner)
        if problem:
            raise ConflictError(
                "the collection belongs to another source or other output options",
                details=[{"field": "collection_id", "message": problem}],
            )

    def take_over(self, output_container: str, collection_id: str, owner: Owner, job_id: str) -> str | None:
        """Before writing: become the collection's writer. Fails (permanently) when another owner
        has it; hands the task back (InstanceBusyError, no attempt counted) while another job of
        the same owner is still writing. Returns the job this one superseded, if any."""
        problem = self._claim(output_container, collection_id, owner)
        if problem:
            raise PermanentTaskError(problem)
        with self._db.transaction() as repo:
            row = CollectionOwnerQueries.within(repo).take_over_outputs(
                output_container, collection_id, owner.key, job_id, self._lease
            )
        if row is None:  # the owner changed between the two statements (an operator deleted the row)
            raise InstanceBusyError("the collection's owner changed meanwhile", retry_after=1.0)
        if not row["taken"]:
            raise InstanceBusyError(
                f"job {row['previous_writer']} ({row['previous_status']}) is still writing collection "
                f"{collection_id!r}; waiting for it to finish (its lease ends {_when(row['lease_until'])})",
                retry_after=random.uniform(*WRITER_WAIT_SECONDS),
            )
        previous = row["previous_writer"]
        return str(previous) if previous and previous != job_id else None

    def renew(self, output_container: str, collection_id: str, job_id: str) -> None:
        """A running writer's heartbeat: its lease starts again. Fails the task (permanently) when
        the job is no longer the writer: its lease lapsed and another job took the outputs over."""
        with self._db.transaction() as repo:
            row = CollectionOwnerQueries.within(repo).renew_writer_lease(
                output_container, collection_id, job_id, self._lease
            )
        if row is None:
            raise PermanentTaskError(
                f"job {job_id} is no longer the writer of collection {collection_id!r} in {output_container}: "
                f"its lease ({self._lease:.0f}s, COLLECTION_WRITER_LEASE_SECONDS) lapsed and another job took over"
            )
