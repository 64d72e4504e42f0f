-- Named queries of the operator endpoints (dead letters, failure and throughput statistics).
-- Loaded once by repositories/operations_queries.py; same "-- name: <name>" blocks as queries.sql.

-- name: list_dead_letters
SELECT dead_letter_id, queue, message_id, dequeue_count, body, reason, job_id, task_id, received_at, requeued_at
  FROM dead_letters
 WHERE (%(status)s::text IS NULL
        OR (%(status)s = 'open' AND requeued_at IS NULL)
        OR (%(status)s = 'requeued' AND requeued_at IS NOT NULL))
 ORDER BY received_at DESC, dead_letter_id DESC
 LIMIT %(limit)s;

-- name: lock_dead_letter
SELECT dead_letter_id, queue, message_id, dequeue_count, body, reason, job_id, task_id, received_at, requeued_at
  FROM dead_letters WHERE dead_letter_id = %(dead_letter_id)s
   FOR UPDATE;

-- name: mark_dead_letter_requeued
UPDATE dead_letters SET requeued_at = now()
 WHERE dead_letter_id = %(dead_letter_id)s AND requeued_at IS NULL
RETURNING requeued_at;

-- name: delete_dead_letter
DELETE FROM dead_letters WHERE dead_letter_id = %(dead_letter_id)s;

-- name: job_exists
SELECT 1 AS found FROM jobs WHERE job_id = %(job_id)s;

-- name: failure_groups
-- Failed tasks of the window by category and the first line of their error; a group's job ids are
-- its most recently failed jobs first.
WITH failed AS (
    SELECT error_category,
           left(split_part(coalesce(error, ''), E'\n', 1), %(reason_chars)s) AS reason,
           job_id,
           completed_at
      FROM tasks
     WHERE status = 'failed' AND completed_at >= now() - make_interval(hours => %(hours)s)
), per_job AS (
    SELECT error_category, reason, job_id, count(*)::integer AS n, max(completed_at) AS last_at
      FROM failed
     GROUP BY error_category, reason, job_id
)
SELECT error_category,
       reason,
       sum(n)::integer AS count,
       max(last_at) AS last_at,
       (array_agg(job_id ORDER BY last_at DESC, job_id))[1:%(max_job_ids)s] AS job_ids
  FROM per_job
 GROUP BY error_category, reason
 ORDER BY count DESC, last_at DESC
 LIMIT %(limit)s;

-- name: throughput_buckets
-- One row per minute of the window (the current minute last), zeros included.
WITH minutes AS (
    SELECT generate_series(date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1),
                           date_trunc('minute', now()),
                           interval '1 minute') AS minute
), finished AS (
    SELECT date_trunc('minute', completed_at) AS minute,
           count(*) FILTER (WHERE status = 'completed')::integer AS completed,
           count(*) FILTER (WHERE status = 'failed')::integer AS failed
      FROM tasks
     WHERE status IN ('completed', 'failed')
       AND completed_at >= date_trunc('minute', now()) - make_interval(mins => %(minutes)s - 1)
     GROUP BY 1
)
SELECT m.minute, coalesce(f.completed, 0) AS completed, coalesce(f.failed, 0) AS failed
  FROM minutes AS m LEFT JOIN finished AS f USING (minute)
 ORDER BY m.minute;
