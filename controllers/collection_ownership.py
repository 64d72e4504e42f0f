"""Who owns a STAC collection's outputs (table collection_owners, migration 0008).

A collection id in an output container has one owner: the job type with the input and output
options whose outputs it describes (``Owner.key``). The first submission naming it claims it (one
INSERT … ON CONFLICT); a submission from another owner is refused with a 409 naming
``collection_id``, and a job that reaches its writing stage under another owner (submitted before
ownership was recorded) fails with a one-line reason. Jobs of the same owner (a replaced source is
a new job with the same outputs; another STAC datetime) write in turn: before writing, a job takes
over as the collection's writer, waiting while another job of the owner is still running, and the
previous writer's result is marked ``superseded_by``: what it recorded (blobs, sha256) is no longer
what is there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from repositories.collection_owner_queries import CollectionOwnerQueries
from repositories.database import Database
from schemas.errors import ConflictError, InstanceBusyError, PermanentTaskError

# A job whose outputs another job of the same owner is still writing waits this long (uniform),
# handed back to the queue without counting an attempt, and tries again.
WRITER_WAIT_SECONDS = (10.0, 20.0)
MAX_OWNER_CHARS = 300


@dataclass(frozen=True)
class Owner:
    key: str  # compared: job type, input and output options
    description: str  # shown: "process_raster of bronze/a.tif"

    @property
    def shown(self) -> str:
        text = self.description
        return text if len(text) <= MAX_OWNER_CHARS else text[: MAX_OWNER_CHARS - 1] + "…"


def _taken_by(collection_id: str, output_container: str, owner: str) -> str:
    return (
        f"collection_id {collection_id!r} in {output_container} belongs to {owner}; "
        "choose another collection_id (or leave it out for the default)"
    )


class CollectionOwnership:
    def __init__(self, database: Database) -> None:
        self._db = database

    def _claim(self, output_container: str, collection_id: str, owner: Owner) -> str | None:
        """Claim the collection for ``owner``; the reason it cannot be, or None."""
        with self._db.transaction() as repo:
            row = CollectionOwnerQueries.within(repo).claim_collection(
                output_container, collection_id, owner.key, owner.shown
            )
        if row["owner_key"] == owner.key:
            return None
        return _taken_by(collection_id, output_container, row["owner"])

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
                output_container, collection_id, owner.key, job_id
            )
        if row is None:  # the owner changed between the two statements (an operator deleted the row)
            raise InstanceBusyError("the collection's owner changed meanwhile", retry_after=1.0)
        if not row["taken"]:
            raise InstanceBusyError(
                f"job {row['previous_writer']} ({row['previous_status']}) is still writing collection "
                f"{collection_id!r}; waiting for it to finish",
                retry_after=random.uniform(*WRITER_WAIT_SECONDS),
            )
        previous = row["previous_writer"]
        return str(previous) if previous and previous != job_id else None
