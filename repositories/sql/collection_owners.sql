-- Named queries of STAC collection ownership (table collection_owners, migration 0008). Loaded by
-- repositories/collection_owner_queries.py; same "-- name: <name>" blocks as queries.sql.

-- name: claim_collection
-- One atomic statement: the first claim of a collection id in an output container records its
-- owner; any later claim locks the row and returns the owner already there (the caller compares
-- owner_key: the same owner may write again, another one is refused).
INSERT INTO collection_owners AS o (output_container, collection_id, owner_key, owner)
VALUES (%(output_container)s, %(collection_id)s, %(owner_key)s, %(owner)s)
ON CONFLICT (output_container, collection_id) DO UPDATE SET owner_key = o.owner_key
RETURNING o.owner_key, o.owner, o.writer_job_id;

-- name: take_over_outputs
-- One atomic statement, before a job writes a collection's outputs: it becomes the writer unless
-- another job of the same owner is the writer and still queued or processing (then nothing
-- changes and the caller waits). The previous writer, when it is another job that finished with
-- a result, gets result.superseded_by / superseded_at: its recorded outputs are no longer there.
-- Lock order: the collection_owners row, then the previous writer's job row (never the reverse).
WITH previous AS (
    SELECT o.writer_job_id, j.status AS writer_status
      FROM collection_owners o
      LEFT JOIN jobs j ON j.job_id = o.writer_job_id
     WHERE o.output_container = %(output_container)s AND o.collection_id = %(collection_id)s
       AND o.owner_key = %(owner_key)s
       FOR UPDATE OF o
), taken AS (
    UPDATE collection_owners o
       SET writer_job_id = %(job_id)s, written_at = now()
      FROM previous p
     WHERE o.output_container = %(output_container)s AND o.collection_id = %(collection_id)s
       AND (p.writer_job_id IS NULL OR p.writer_job_id = %(job_id)s OR p.writer_status IS NULL
            OR p.writer_status NOT IN ('queued', 'processing'))
    RETURNING o.writer_job_id
), superseded AS (
    UPDATE jobs j
       SET result = j.result || jsonb_build_object('superseded_by', %(job_id)s::text, 'superseded_at', now())
      FROM previous p
     WHERE j.job_id = p.writer_job_id AND j.job_id <> %(job_id)s AND j.result IS NOT NULL
       AND jsonb_typeof(j.result) = 'object' AND EXISTS (SELECT 1 FROM taken)
    RETURNING j.job_id
)
SELECT p.writer_job_id AS previous_writer, p.writer_status AS previous_status,
       EXISTS (SELECT 1 FROM taken) AS taken, EXISTS (SELECT 1 FROM superseded) AS superseded
  FROM previous p;
