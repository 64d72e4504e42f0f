-- geoetl declared schema: what the numbered migrations in ../migrations must produce.
-- Applied inside the schema named by POSTGRES_SCHEMA (search_path is set by the caller).
-- tests/integration/test_schema.py proves migrated == declared.

CREATE TABLE jobs (
    job_id        text        PRIMARY KEY CHECK (job_id ~ '^[0-9a-f]{64}$'),
    job_type      text        NOT NULL,
    parameters    jsonb       NOT NULL,
    status        text        NOT NULL DEFAULT 'queued'
                  CHECK (status IN ('queued', 'processing', 'completed', 'completed_with_errors', 'failed', 'cancelled')),
    stage         integer     NOT NULL DEFAULT 1 CHECK (stage >= 1),
    total_stages  integer     NOT NULL CHECK (total_stages >= 1),
    result        jsonb,
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    completed_at  timestamptz,
    priority      text        NOT NULL DEFAULT 'normal' CHECK (priority IN ('normal', 'high')),
    max_parallel_tasks integer CHECK (max_parallel_tasks >= 1),
    depends_on    text[]      NOT NULL DEFAULT '{}'
);
CREATE INDEX jobs_depends_on_idx ON jobs USING gin (depends_on) WHERE status = 'queued';
CREATE INDEX jobs_created_at_idx ON jobs (created_at DESC, job_id DESC);
CREATE INDEX jobs_status_created_at_idx ON jobs (status, created_at DESC);
CREATE INDEX jobs_type_created_at_idx ON jobs (job_type, created_at DESC);

-- One row per created stage: the fan-in counter. Its row lock serialises task completions.
CREATE TABLE stages (
    job_id           text        NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    stage            integer     NOT NULL CHECK (stage >= 1),
    name             text        NOT NULL,
    status           text        NOT NULL DEFAULT 'processing' CHECK (status IN ('processing', 'completed')),
    task_count       integer     NOT NULL CHECK (task_count >= 0),
    completed_count  integer     NOT NULL DEFAULT 0,
    failed_count     integer     NOT NULL DEFAULT 0,
    skipped_count    integer     NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    PRIMARY KEY (job_id, stage),
    CHECK (completed_count + failed_count + skipped_count <= task_count)
);

CREATE TABLE tasks (
    task_id              text        PRIMARY KEY,
    job_id               text        NOT NULL,
    stage                integer     NOT NULL,
    task_key             text        NOT NULL CHECK (task_key ~ '^[a-z0-9][a-z0-9_]{0,127}$'),
    parameters           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    predecessor_task_id  text        REFERENCES tasks (task_id) ON DELETE SET NULL,
    status               text        NOT NULL DEFAULT 'queued',
    attempts             integer     NOT NULL DEFAULT 0,
    result               jsonb,
    error                text,
    lease_expires_at     timestamptz,
    -- The queue delivery holding the lease (message id, dequeue count). A later delivery of the
    -- same message (higher dequeue count: the holder's message lease lapsed) may reclaim at once.
    claimed_by_message   text,
    claimed_dequeue_count integer,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    completed_at         timestamptz,
    error_category       text        CHECK (error_category IN ('permanent', 'transient', 'throttling', 'unclassified')),
    -- Drawn anew by every claim; every outcome write of the delivery must present it (fencing).
    claim_token          uuid,
    UNIQUE (job_id, stage, task_key),
    FOREIGN KEY (job_id, stage) REFERENCES stages (job_id, stage) ON DELETE CASCADE,
    -- held: created but not yet released (the job's max_parallel_tasks is reached).
    CONSTRAINT tasks_status_check
        CHECK (status IN ('held', 'queued', 'processing', 'completed', 'failed', 'skipped'))
);
CREATE INDEX tasks_job_stage_status_idx ON tasks (job_id, stage, status);
CREATE INDEX tasks_processing_lease_idx ON tasks (lease_expires_at) WHERE status = 'processing';
CREATE INDEX tasks_queued_updated_idx ON tasks (updated_at) WHERE status = 'queued';
-- Failure and throughput statistics (GET /api/stats/*) read finished tasks by completion time.
CREATE INDEX tasks_completed_at_idx ON tasks (completed_at) WHERE status IN ('completed', 'failed');

-- Transactional outbox: queue messages written in the same transaction as the state change
-- that requires them, published after commit, deleted once sent. 'webhooks': webhook deliveries.
CREATE TABLE outbox (
    message_id  bigserial   PRIMARY KEY,
    queue       text        NOT NULL CONSTRAINT outbox_queue_check CHECK (queue IN ('jobs', 'tasks', 'tasks_high', 'webhooks')),
    body        jsonb       NOT NULL,
    job_id      text        REFERENCES jobs (job_id) ON DELETE CASCADE,
    visible_at  timestamptz NOT NULL DEFAULT now(),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- When the janitor last took the row to resend it (it sends outside any transaction).
    send_attempted_at timestamptz
);
CREATE INDEX outbox_job_id_idx ON outbox (job_id);
CREATE INDEX outbox_created_at_idx ON outbox (created_at);

-- Messages that could never be processed (not JSON, unknown job/task, poisoned), kept for
-- inspection; the janitor deletes rows older than the retention setting.
CREATE TABLE dead_letters (
    dead_letter_id  bigserial   PRIMARY KEY,
    queue           text        NOT NULL,
    message_id      text,
    dequeue_count   integer,
    body            text        NOT NULL,
    reason          text        NOT NULL,
    job_id          text,
    task_id         text,
    received_at     timestamptz NOT NULL DEFAULT now(),
    -- When an operator put it back to work (POST /api/dead-letters/{id}/requeue); NULL while open.
    requeued_at     timestamptz
);
CREATE INDEX dead_letters_received_at_idx ON dead_letters (received_at);

-- Fan-in. Finishes one task (completed / failed / skipped) if it is not finished yet and
-- bumps its stage's counter under the stage row lock. Exactly one call per stage returns
-- closed_stage = true: the one whose increment made the counters reach task_count.
-- A duplicate call for a finished task changes nothing and returns changed = false.
-- With a claim token (a delivery recording its outcome) the task must still be processing under
-- that very claim: a delivery whose lease lapsed and was taken over changes nothing (fencing).
-- Without one (janitor, poison reconciliation) any unfinished task is finished.
CREATE FUNCTION finish_task(p_task_id text, p_status text, p_result jsonb, p_error text, p_claim_token uuid)
RETURNS TABLE (changed boolean, job_id text, stage integer, task_count integer,
               completed_count integer, failed_count integer, skipped_count integer, closed_stage boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_job_id text;
    v_stage integer;
    v_row stages%ROWTYPE;
BEGIN
    IF p_status NOT IN ('completed', 'failed', 'skipped') THEN
        RAISE EXCEPTION 'finish_task: invalid status %', p_status USING ERRCODE = '22023';
    END IF;

    UPDATE tasks AS t
       SET status = p_status, result = p_result, error = p_error,
           completed_at = now(), updated_at = now(), lease_expires_at = NULL, claim_token = NULL
     WHERE t.task_id = p_task_id
       AND CASE WHEN p_claim_token IS NULL THEN t.status IN ('queued', 'processing')
                ELSE t.status = 'processing' AND t.claim_token = p_claim_token END
    RETURNING t.job_id, t.stage INTO v_job_id, v_stage;

    IF NOT FOUND THEN
        RETURN QUERY SELECT false, t.job_id, t.stage, s.task_count, s.completed_count,
                            s.failed_count, s.skipped_count, false
                       FROM tasks AS t JOIN stages AS s USING (job_id, stage)
                      WHERE t.task_id = p_task_id;
        RETURN;
    END IF;

    UPDATE stages AS s
       SET completed_count = s.completed_count + (p_status = 'completed')::integer,
           failed_count    = s.failed_count    + (p_status = 'failed')::integer,
           skipped_count   = s.skipped_count   + (p_status = 'skipped')::integer
     WHERE s.job_id = v_job_id AND s.stage = v_stage
    RETURNING s.* INTO v_row;

    IF v_row.completed_count + v_row.failed_count + v_row.skipped_count = v_row.task_count
       AND v_row.status = 'processing' THEN
        UPDATE stages AS s SET status = 'completed', completed_at = now()
         WHERE s.job_id = v_job_id AND s.stage = v_stage;
        RETURN QUERY SELECT true, v_job_id, v_stage, v_row.task_count, v_row.completed_count,
                            v_row.failed_count, v_row.skipped_count, true;
    ELSE
        RETURN QUERY SELECT true, v_job_id, v_stage, v_row.task_count, v_row.completed_count,
                            v_row.failed_count, v_row.skipped_count, false;
    END IF;
END;
$$;

-- Blob chunks of listing jobs: one row per chunk of listed blobs and its results.
CREATE TABLE blob_chunks (
    job_id      text        NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    chunk_key   text        NOT NULL,
    blob_count  integer     NOT NULL CHECK (blob_count >= 0),
    blobs       jsonb       NOT NULL,
    results     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, chunk_key)
);

-- Per-caller submission limits: one token bucket per caller key (services/rate_limits.py). Tokens
-- left at updated_at; granted = whether the caller's last submission got a token.
CREATE TABLE rate_limits (
    caller_key  text             PRIMARY KEY,
    tokens      double precision NOT NULL CHECK (tokens >= 0),
    granted     boolean          NOT NULL,
    updated_at  timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX rate_limits_updated_at_idx ON rate_limits (updated_at);

-- Job-completion webhooks (callback_url): one subscription per job and URL; one delivery per
-- subscription and terminal transition, attempted through the 'webhooks' queue with backoff.
CREATE TABLE webhook_subscriptions (
    subscription_id  bigserial   PRIMARY KEY,
    job_id           text        NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    url              text        NOT NULL CHECK (length(url) <= 2048),
    -- GET /api/jobs/{id} as the submitter reached the API (the payload's status link); NULL if unknown.
    status_url       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, url)
);

CREATE TABLE webhook_deliveries (
    delivery_id      bigserial   PRIMARY KEY,
    subscription_id  bigint      NOT NULL REFERENCES webhook_subscriptions (subscription_id) ON DELETE CASCADE,
    job_id           text        NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    -- The webhook-id header: the same for every attempt of this delivery (receivers dedupe on it).
    webhook_id       text        NOT NULL UNIQUE,
    event_type       text        NOT NULL,
    payload          jsonb       NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivering', 'delivered', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  timestamptz,
    -- While delivering: the attempt's claim (fencing) and when it lapses (the sender died).
    claim_token      uuid,
    claim_expires_at timestamptz,
    last_error       text,
    last_status_code integer,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz
);
CREATE INDEX webhook_deliveries_job_id_idx ON webhook_deliveries (job_id, subscription_id, delivery_id DESC);
CREATE INDEX webhook_deliveries_open_idx ON webhook_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'delivering');

-- STAC collections written by jobs (process_raster, catalog_container): one owner each (the job
-- type, source and output options, owner_key; readable in owner), claimed at submission;
-- writer_job_id is the job whose outputs are there now (repositories/sql/collection_owners.sql).
CREATE TABLE collection_owners (
    output_container  text        NOT NULL,
    collection_id     text        NOT NULL,
    owner_key         text        NOT NULL,
    owner             text        NOT NULL,
    writer_job_id     text,
    claimed_at        timestamptz NOT NULL DEFAULT now(),
    written_at        timestamptz,
    PRIMARY KEY (output_container, collection_id)
);
