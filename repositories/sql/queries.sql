-- Named queries of the engine. Loaded once by repositories/sql_catalog.py.
-- Each block starts with "-- name: <name>"; parameters are psycopg %(name)s placeholders.

-- name: insert_job
INSERT INTO jobs (job_id, job_type, parameters, total_stages, priority, max_parallel_tasks, depends_on)
VALUES (%(job_id)s, %(job_type)s, %(parameters)s, %(total_stages)s, %(priority)s, %(max_parallel_tasks)s,
        %(depends_on)s)
ON CONFLICT (job_id) DO NOTHING
RETURNING *;

-- name: get_job
SELECT * FROM jobs WHERE job_id = %(job_id)s;

-- name: lock_job
SELECT * FROM jobs WHERE job_id = %(job_id)s FOR UPDATE;

-- name: list_jobs
SELECT * FROM jobs
 WHERE (%(status)s::text IS NULL OR status = %(status)s)
   AND (%(job_type)s::text IS NULL OR job_type = %(job_type)s)
   AND (%(after_created_at)s::timestamptz IS NULL
        OR (created_at, job_id) < (%(after_created_at)s::timestamptz, %(after_job_id)s::text))
 ORDER BY created_at DESC, job_id DESC
 LIMIT %(limit)s;

-- name: mark_job_processing
UPDATE jobs
   SET status = 'processing', started_at = coalesce(started_at, now()), updated_at = now()
 WHERE job_id = %(job_id)s AND status IN ('queued', 'processing');

-- name: advance_job_stage
UPDATE jobs SET stage = stage + 1, updated_at = now()
 WHERE job_id = %(job_id)s AND stage = %(stage)s AND status = 'processing'
RETURNING *;

-- name: complete_job
UPDATE jobs
   SET status = %(status)s, result = %(result)s, error = %(error)s, completed_at = now(), updated_at = now()
 WHERE job_id = %(job_id)s AND status = 'processing'
RETURNING *;

-- name: fail_job
UPDATE jobs
   SET status = 'failed', error = %(error)s, result = %(result)s, completed_at = now(), updated_at = now()
 WHERE job_id = %(job_id)s AND status IN ('queued', 'processing')
RETURNING *;

-- name: skip_queued_tasks
WITH skipped AS (
    UPDATE tasks
       SET status = 'skipped', error = %(reason)s, completed_at = now(), updated_at = now()
     WHERE job_id = %(job_id)s AND status IN ('queued', 'held')
    RETURNING stage
), per_stage AS (
    SELECT stage, count(*)::integer AS n FROM skipped GROUP BY stage
)
UPDATE stages AS s
   SET skipped_count = s.skipped_count + p.n,
       status = CASE WHEN s.completed_count + s.failed_count + s.skipped_count + p.n = s.task_count
                     THEN 'completed' ELSE s.status END,
       completed_at = CASE WHEN s.completed_count + s.failed_count + s.skipped_count + p.n = s.task_count
                           THEN now() ELSE s.completed_at END
  FROM per_stage AS p
 WHERE s.job_id = %(job_id)s AND s.stage = p.stage
RETURNING p.n;

-- name: insert_stage
INSERT INTO stages (job_id, stage, name, task_count, status, completed_at)
VALUES (%(job_id)s, %(stage)s, %(name)s, %(task_count)s,
        CASE WHEN %(task_count)s = 0 THEN 'completed' ELSE 'processing' END,
        CASE WHEN %(task_count)s = 0 THEN now() END)
ON CONFLICT (job_id, stage) DO NOTHING
RETURNING stage;

-- name: list_stages
SELECT * FROM stages WHERE job_id = %(job_id)s ORDER BY stage;

-- name: insert_task
INSERT INTO tasks (task_id, job_id, stage, task_key, parameters, predecessor_task_id, status)
VALUES (%(task_id)s, %(job_id)s, %(stage)s, %(task_key)s, %(parameters)s, %(predecessor_task_id)s, %(status)s);

-- name: completed_results_of_stage
SELECT task_key, result FROM tasks
 WHERE job_id = %(job_id)s AND stage = %(stage)s AND status = 'completed'
 ORDER BY task_key;

-- name: task_outcomes_of_job
SELECT stage, task_key, status, result, error FROM tasks
 WHERE job_id = %(job_id)s
 ORDER BY stage, task_key;

-- name: claim_task
-- Takes a lease on a queued task, or on a processing one whose holder's lease lapsed
-- (crashed instance), or on one leased by an earlier delivery of this same queue message
-- (it came back with a higher dequeue count: that delivery died). Returns nothing when the
-- task is finished, leased by another live delivery, or its job is not processing.
WITH claimed AS (
    UPDATE tasks AS t
       SET status = 'processing', attempts = t.attempts + 1, started_at = now(), updated_at = now(),
           lease_expires_at = now() + make_interval(secs => %(lease_seconds)s),
           claimed_by_message = %(message_id)s, claimed_dequeue_count = %(dequeue_count)s,
           claim_token = gen_random_uuid()
      FROM jobs AS j
     WHERE t.task_id = %(task_id)s AND j.job_id = t.job_id AND j.status = 'processing'
       AND (t.status = 'queued'
            OR (t.status = 'processing'
                AND (t.lease_expires_at < now()
                     OR (t.claimed_by_message = %(message_id)s
                         AND t.claimed_dequeue_count < %(dequeue_count)s))))
    RETURNING t.*, j.job_type, j.parameters AS job_parameters, j.priority
)
SELECT c.*, p.result AS predecessor_result
  FROM claimed AS c LEFT JOIN tasks AS p ON p.task_id = c.predecessor_task_id;

-- name: describe_task_state
SELECT t.status, t.lease_expires_at > now() AS lease_live, j.status AS job_status, t.error, t.attempts
  FROM tasks AS t JOIN jobs AS j USING (job_id)
 WHERE t.task_id = %(task_id)s;

-- name: failed_tasks_of_stage
SELECT task_key, error FROM tasks
 WHERE job_id = %(job_id)s AND stage = %(stage)s AND status = 'failed'
 ORDER BY completed_at
 LIMIT %(limit)s;

-- name: renew_task_leases
-- Only leases still held under the claims named (task_ids[i] with claim_tokens[i]).
UPDATE tasks AS t SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
  FROM unnest(%(task_ids)s::text[], %(claim_tokens)s::uuid[]) AS held (task_id, claim_token)
 WHERE t.task_id = held.task_id AND t.claim_token = held.claim_token AND t.status = 'processing';

-- name: release_task_for_retry
UPDATE tasks SET status = 'queued', error = %(error)s, error_category = %(error_category)s,
       lease_expires_at = NULL, claim_token = NULL, updated_at = now()
 WHERE task_id = %(task_id)s AND status = 'processing' AND claim_token = %(claim_token)s
RETURNING attempts;

-- name: hand_back_task
-- The claimed task never started its work (the instance was busy): queued again, and the attempt
-- its claim counted is given back.
UPDATE tasks SET status = 'queued', attempts = greatest(attempts - 1, 0), lease_expires_at = NULL,
       claim_token = NULL, updated_at = now()
 WHERE task_id = %(task_id)s AND status = 'processing' AND claim_token = %(claim_token)s
RETURNING attempts;

-- name: set_task_error_category
UPDATE tasks SET error_category = %(error_category)s WHERE task_id = %(task_id)s;

-- name: finish_task
SELECT * FROM finish_task(%(task_id)s, %(status)s, %(result)s, %(error)s, %(claim_token)s);

-- name: task_counts_of_job
SELECT stage, status, count(*)::integer AS n,
       avg(extract(epoch FROM completed_at - started_at))
           FILTER (WHERE status = 'completed') AS avg_seconds
  FROM tasks
 WHERE job_id = %(job_id)s
 GROUP BY stage, status;

-- name: task_result_counters_of_job
-- Sums of integer fields of the completed tasks' results, per stage (JobController.progress_counters);
-- a missing or non-integer field counts as 0.
SELECT t.stage, k.key, coalesce(sum(CASE WHEN jsonb_typeof(t.result -> k.key) = 'number'
                                         THEN (t.result ->> k.key)::numeric END), 0)::bigint AS total
  FROM tasks t CROSS JOIN unnest(%(keys)s::text[]) AS k(key)
 WHERE t.job_id = %(job_id)s AND t.status = 'completed'
 GROUP BY t.stage, k.key;

-- name: job_timing
SELECT min(started_at) AS first_started_at,
       count(*) FILTER (WHERE status IN ('completed', 'failed', 'skipped'))::integer AS finished
  FROM tasks WHERE job_id = %(job_id)s;

-- name: list_tasks
SELECT * FROM tasks
 WHERE job_id = %(job_id)s
   AND (%(stage)s::integer IS NULL OR stage = %(stage)s)
   AND (%(status)s::text IS NULL OR status = %(status)s)
   AND (%(after_task_id)s::text IS NULL OR task_id > %(after_task_id)s)
 ORDER BY task_id
 LIMIT %(limit)s;

-- name: insert_outbox
INSERT INTO outbox (queue, body, job_id, visible_at)
VALUES (%(queue)s, %(body)s, %(job_id)s, now() + make_interval(secs => %(delay_seconds)s))
RETURNING message_id, queue, body, visible_at;

-- name: pending_outbox_of_job
SELECT message_id, queue, body, visible_at FROM outbox
 WHERE job_id = %(job_id)s AND created_at < now() - make_interval(secs => %(older_than_seconds)s)
 ORDER BY message_id;

-- name: delete_outbox
DELETE FROM outbox WHERE message_id = ANY(%(message_ids)s);

-- name: release_held_tasks
-- Moves held tasks to queued while the job has fewer than max_parallel_tasks queued or running.
-- The caller locks the job row first (lock_job), so concurrent releasers count consistently.
WITH inflight AS (
    SELECT count(*)::integer AS n FROM tasks
     WHERE job_id = %(job_id)s AND status IN ('queued', 'processing')
), picked AS (
    SELECT task_id FROM tasks
     WHERE job_id = %(job_id)s AND status = 'held'
     ORDER BY stage, task_key
     LIMIT greatest(0, %(max_parallel_tasks)s - (SELECT n FROM inflight))
)
UPDATE tasks SET status = 'queued', updated_at = now()
 WHERE task_id IN (SELECT task_id FROM picked)
RETURNING task_id;

-- name: insert_dead_letter
INSERT INTO dead_letters (queue, message_id, dequeue_count, body, reason, job_id, task_id)
VALUES (%(queue)s, %(message_id)s, %(dequeue_count)s, %(body)s, %(reason)s, %(job_id)s, %(task_id)s);

-- name: cancel_job
UPDATE jobs SET status = 'cancelled', error = %(reason)s, completed_at = now(), updated_at = now()
 WHERE job_id = %(job_id)s AND status IN ('queued', 'processing')
RETURNING *;

-- name: lock_jobs_shared
SELECT job_id, status, error FROM jobs WHERE job_id = ANY(%(job_ids)s) ORDER BY job_id FOR SHARE;

-- name: job_statuses
SELECT job_id, status, error FROM jobs WHERE job_id = ANY(%(job_ids)s) ORDER BY job_id;

-- name: waiting_dependents
SELECT job_id FROM jobs
 WHERE status = 'queued' AND depends_on @> ARRAY[%(job_id)s]::text[]
 ORDER BY job_id
   FOR UPDATE;

-- name: earliest_unfinished_stage
SELECT min(stage) AS stage FROM tasks
 WHERE job_id = %(job_id)s AND status IN ('failed', 'skipped', 'held', 'queued');

-- name: delete_stages_after
DELETE FROM stages WHERE job_id = %(job_id)s AND stage > %(stage)s;

-- name: reset_unsuccessful_tasks
UPDATE tasks
   SET status = 'queued', attempts = 0, error = NULL, error_category = NULL, result = NULL,
       lease_expires_at = NULL, claimed_by_message = NULL, claimed_dequeue_count = NULL, claim_token = NULL,
       started_at = NULL, completed_at = NULL, updated_at = now()
 WHERE job_id = %(job_id)s AND stage = %(stage)s AND status IN ('failed', 'skipped', 'held', 'queued')
RETURNING task_id;

-- name: hold_tasks
UPDATE tasks SET status = 'held', updated_at = now()
 WHERE task_id = ANY(%(task_ids)s) AND status = 'queued';

-- name: recount_stage
-- Recomputes a stage's counters from its tasks. Repair (reopen = false): only a processing stage,
-- closed if its tasks are all finished. Retry (reopen = true): any stage, marked processing again.
WITH counts AS (
    SELECT count(*) FILTER (WHERE status = 'completed')::integer AS completed,
           count(*) FILTER (WHERE status = 'failed')::integer AS failed,
           count(*) FILTER (WHERE status = 'skipped')::integer AS skipped,
           count(*)::integer AS total
      FROM tasks WHERE job_id = %(job_id)s AND stage = %(stage)s
), decided AS (
    SELECT c.*, NOT %(reopen)s AND c.completed + c.failed + c.skipped = c.total AS closes FROM counts AS c
)
UPDATE stages AS s
   SET completed_count = d.completed, failed_count = d.failed, skipped_count = d.skipped, task_count = d.total,
       status = CASE WHEN d.closes THEN 'completed' ELSE 'processing' END,
       completed_at = CASE WHEN d.closes THEN now() END
  FROM decided AS d
 WHERE s.job_id = %(job_id)s AND s.stage = %(stage)s AND (%(reopen)s OR s.status = 'processing')
RETURNING s.status, s.task_count, s.completed_count, s.failed_count, s.skipped_count;

-- name: reopen_job
UPDATE jobs
   SET status = %(status)s, stage = %(stage)s, error = NULL, result = NULL, completed_at = NULL,
       updated_at = now()
 WHERE job_id = %(job_id)s
RETURNING *;

-- name: take_stale_outbox
-- Outbox rows nobody sent within the grace period (their publisher died), taken for a resend:
-- marked in this one statement, so the janitor sends outside any transaction, and another
-- janitor leaves them alone for the grace period again.
UPDATE outbox SET send_attempted_at = now()
 WHERE message_id IN (
       SELECT message_id FROM outbox
        WHERE coalesce(send_attempted_at, created_at) < now() - make_interval(secs => %(older_than_seconds)s)
        ORDER BY message_id
        LIMIT %(limit)s
          FOR UPDATE SKIP LOCKED)
RETURNING message_id, queue, body, visible_at;

-- name: expired_leases
SELECT t.task_id, t.job_id, t.attempts, j.job_type
  FROM tasks AS t JOIN jobs AS j USING (job_id)
 WHERE t.status = 'processing' AND t.lease_expires_at < now() - make_interval(secs => %(grace_seconds)s)
 ORDER BY t.lease_expires_at
 LIMIT %(limit)s;

-- name: requeue_expired_task
UPDATE tasks SET status = 'queued', error = %(error)s, error_category = 'transient', lease_expires_at = NULL,
       claim_token = NULL, updated_at = now()
 WHERE task_id = %(task_id)s AND status = 'processing'
   AND lease_expires_at < now() - make_interval(secs => %(grace_seconds)s)
RETURNING task_id;

-- name: touch_forgotten_task
-- Guarded like the sweep's selection: a task another janitor resent meanwhile is left alone.
UPDATE tasks SET updated_at = now()
 WHERE task_id = %(task_id)s AND status = 'queued'
   AND updated_at < now() - make_interval(secs => %(older_than_seconds)s)
RETURNING task_id;

-- name: forgotten_queued_tasks
-- Queued tasks untouched for a long time with no message owed in the outbox: the message was
-- lost (poisoned without reconciliation, deleted by hand). They get a new one.
SELECT t.task_id, t.job_id, j.priority
  FROM tasks AS t JOIN jobs AS j USING (job_id)
 WHERE t.status = 'queued' AND j.status = 'processing'
   AND t.updated_at < now() - make_interval(secs => %(older_than_seconds)s)
   AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.job_id = t.job_id AND o.body->>'task_id' = t.task_id)
 ORDER BY t.updated_at
 LIMIT %(limit)s;

-- name: stages_needing_repair
-- Processing stages whose tasks are all finished but whose counters did not close them.
SELECT s.job_id, s.stage FROM stages AS s JOIN jobs AS j USING (job_id)
 WHERE s.status = 'processing' AND j.status = 'processing'
   AND NOT EXISTS (SELECT 1 FROM tasks AS t WHERE t.job_id = s.job_id AND t.stage = s.stage
                    AND t.status IN ('held', 'queued', 'processing'))
 LIMIT %(limit)s;

-- name: stalled_jobs
-- Jobs that owe a job message nobody will send: queued with satisfied dependencies and no
-- stage yet, or processing whose current stage is missing (fan-out lost) or complete (advance
-- or finalize lost), with nothing pending in the outbox.
SELECT j.job_id, j.stage, j.total_stages, s.status AS stage_status
  FROM jobs AS j LEFT JOIN stages AS s ON s.job_id = j.job_id AND s.stage = j.stage
 WHERE j.updated_at < now() - make_interval(secs => %(older_than_seconds)s)
   AND NOT EXISTS (SELECT 1 FROM outbox AS o WHERE o.job_id = j.job_id)
   AND ((j.status = 'processing' AND (s.stage IS NULL OR s.status = 'completed'))
        OR (j.status = 'queued' AND s.stage IS NULL
            AND NOT EXISTS (SELECT 1 FROM jobs AS d WHERE d.job_id = ANY(j.depends_on)
                             AND d.status NOT IN ('completed', 'completed_with_errors'))))
 LIMIT %(limit)s;

-- name: touch_job
UPDATE jobs SET updated_at = now() WHERE job_id = %(job_id)s;

-- name: delete_old_dead_letters
DELETE FROM dead_letters WHERE received_at < now() - make_interval(secs => %(hours)s * 3600);

-- name: delete_blob_chunks
DELETE FROM blob_chunks WHERE job_id = %(job_id)s;

-- name: insert_blob_chunk
INSERT INTO blob_chunks (job_id, chunk_key, blob_count, blobs)
VALUES (%(job_id)s, %(chunk_key)s, %(blob_count)s, %(blobs)s)
ON CONFLICT (job_id, chunk_key)
DO UPDATE SET blob_count = excluded.blob_count, blobs = excluded.blobs, results = NULL, updated_at = now();

-- name: get_blob_chunk
SELECT * FROM blob_chunks WHERE job_id = %(job_id)s AND chunk_key = %(chunk_key)s;

-- name: save_blob_chunk_results
UPDATE blob_chunks SET results = %(results)s, updated_at = now()
 WHERE job_id = %(job_id)s AND chunk_key = %(chunk_key)s;

-- name: list_blob_chunk_keys
SELECT chunk_key, blob_count, results IS NOT NULL AS done
  FROM blob_chunks WHERE job_id = %(job_id)s ORDER BY chunk_key;

-- name: applied_migration_version
SELECT coalesce(max(version), 0) AS version FROM schema_migrations;
