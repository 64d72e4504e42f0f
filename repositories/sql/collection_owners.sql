-- Named queries of STAC collection ownership (table collection_owners, migration 0008). Loaded by
-- repositories/collection_owner_queries.py; same "-- name: <name>" blocks as queries.sql.

-- name: claim_collection
-- One atomic statement: the first claim of a collection id in an output container records its
-- owner. A later claim locks the row (ON CONFLICT DO UPDATE) and, in the same statement, decides:
-- the same owner refreshes claimed_at (its submission holds the collection until it writes); another
-- owner takes the collection over when the current one no longer holds it, else the row is left as it
-- is and the caller compares owner_key (a 409 naming who holds it and held_until). The current owner
-- holds it while (a) a claim newer than its last write is younger than the lease (a submitted job that
-- has not started writing), or (b) its writer job is queued or processing and wrote or renewed within
-- the lease. A writer that completed, failed or was cancelled (or whose job row is gone) holds nothing;
-- one stuck in processing holds it until its lease lapses. writer_job_id stays: the next writer
-- supersedes it (take_over_outputs).
INSERT INTO collection_owners AS o (output_container, collection_id, owner_key, owner)
VALUES (%(output_container)s, %(collection_id)s, %(owner_key)s, %(owner)s)
ON CONFLICT (output_container, collection_id) DO UPDATE
   SET (owner_key, owner, claimed_at) = (
       SELECT CASE WHEN d.taken THEN excluded.owner_key ELSE o.owner_key END,
              CASE WHEN d.taken THEN excluded.owner ELSE o.owner END,
              CASE WHEN d.taken THEN now() ELSE o.claimed_at END
         FROM (SELECT o.owner_key = excluded.owner_key
                      OR NOT ((o.claimed_at > now() - make_interval(secs => %(lease_seconds)s)
                               AND (o.written_at IS NULL OR o.claimed_at > o.written_at))
                              OR (o.written_at > now() - make_interval(secs => %(lease_seconds)s)
                                  AND EXISTS (SELECT 1 FROM jobs j WHERE j.job_id = o.writer_job_id
                                                 AND j.status IN ('queued', 'processing')))) AS taken) d)
RETURNING o.owner_key, o.owner, o.writer_job_id,
          (SELECT j.status FROM jobs j WHERE j.job_id = o.writer_job_id) AS writer_status,
          greatest(CASE WHEN o.written_at IS NULL OR o.claimed_at > o.written_at THEN o.claimed_at END,
                   o.written_at) + make_interval(secs => %(lease_seconds)s) AS held_until;

-- name: take_over_outputs
-- One atomic statement, before a job writes a collection's outputs: it becomes the writer unless
-- another job is the writer, still queued or processing, and wrote or renewed within the lease (then
-- nothing changes and the caller waits; a writer stuck in processing is taken over once its lease
-- lapses). Taking over, or writing again, sets written_at: the writer's lease starts again. The
-- previous writer, when it is another job that finished with a result, gets result.superseded_by /
-- superseded_at: its recorded outputs are no longer there.
-- Lock order: the collection_owners row, then the previous writer's job row (never the reverse).
WITH previous AS (
    SELECT o.writer_job_id, j.status AS writer_status,
           o.written_at + make_interval(secs => %(lease_seconds)s) AS lease_until
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
            OR p.writer_status NOT IN ('queued', 'processing') OR p.lease_until <= now())
    RETURNING o.writer_job_id
), superseded AS (
    UPDATE jobs j
       SET result = j.result || jsonb_build_object('superseded_by', %(job_id)s::text, 'superseded_at', now())
      FROM previous p
     WHERE j.job_id = p.writer_job_id AND j.job_id <> %(job_id)s AND j.result IS NOT NULL
       AND jsonb_typeof(j.result) = 'object' AND EXISTS (SELECT 1 FROM taken)
    RETURNING j.job_id
)
SELECT p.writer_job_id AS previous_writer, p.writer_status AS previous_status, p.lease_until,
       EXISTS (SELECT 1 FROM taken) AS taken, EXISTS (SELECT 1 FROM superseded) AS superseded
  FROM previous p;

-- name: renew_writer_lease
-- A running writer's heartbeat (each process_rasters task): its lease starts again. No row when
-- the job is no longer the collection's writer (its lease lapsed and another job took over).
UPDATE collection_owners
   SET written_at = now()
 WHERE output_container = %(output_container)s AND collection_id = %(collection_id)s
   AND writer_job_id = %(job_id)s
RETURNING written_at + make_interval(secs => %(lease_seconds)s) AS lease_until;
