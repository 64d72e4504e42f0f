-- Named queries of the engine. Loaded once by repositories/sql_catalog.py.
-- Each block starts with "-- name: <name>"; parameters are psycopg %(name)s placeholders.

-- name: insert_job
INSERT INTO jobs (job_id, job_type, parameters, total_stages)
VALUES (%(job_id)s, %(job_type)s, %(parameters)s, %(total_stages)s)
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
     WHERE job_id = %(job_id)s AND status = 'queued'
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
INSERT INTO tasks (task_id, job_id, stage, task_key, parameters, predecessor_task_id)
VALUES (%(task_id)s, %(job_id)s, %(stage)s, %(task_key)s, %(parameters)s, %(predecessor_task_id)s);

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
           claimed_by_message = %(message_id)s, claimed_dequeue_count = %(dequeue_count)s
      FROM jobs AS j
     WHERE t.task_id = %(task_id)s AND j.job_id = t.job_id AND j.status = 'processing'
       AND (t.status = 'queued'
            OR (t.status = 'processing'
                AND (t.lease_expires_at < now()
                     OR (t.claimed_by_message = %(message_id)s
                         AND t.claimed_dequeue_count < %(dequeue_count)s))))
    RETURNING t.*, j.job_type, j.parameters AS job_parameters
)
SELECT c.*, p.result AS predecessor_result
  FROM claimed AS c LEFT JOIN tasks AS p ON p.task_id = c.predecessor_task_id;

-- name: describe_task_state
SELECT t.status, t.lease_expires_at > now() AS lease_live, j.status AS job_status
  FROM tasks AS t JOIN jobs AS j USING (job_id)
 WHERE t.task_id = %(task_id)s;

-- name: failed_tasks_of_stage
SELECT task_key, error FROM tasks
 WHERE job_id = %(job_id)s AND stage = %(stage)s AND status = 'failed'
 ORDER BY completed_at
 LIMIT %(limit)s;

-- name: renew_task_lease
UPDATE tasks SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
 WHERE task_id = %(task_id)s AND status = 'processing'
RETURNING task_id;

-- name: release_task_for_retry
UPDATE tasks SET status = 'queued', error = %(error)s, lease_expires_at = NULL, updated_at = now()
 WHERE task_id = %(task_id)s AND status = 'processing'
RETURNING attempts;

-- name: finish_task
SELECT * FROM finish_task(%(task_id)s, %(status)s, %(result)s, %(error)s);

-- name: task_counts_of_job
SELECT stage, status, count(*)::integer AS n,
       avg(extract(epoch FROM completed_at - started_at))
           FILTER (WHERE status = 'completed') AS avg_seconds
  FROM tasks
 WHERE job_id = %(job_id)s
 GROUP BY stage, status;

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
