-- 0002: failure handling and control: error categories, held tasks (max_parallel_tasks),
-- priorities, job dependencies, high-priority task queue, dead letters.

ALTER TABLE jobs ADD COLUMN priority text NOT NULL DEFAULT 'normal' CHECK (priority IN ('normal', 'high'));
ALTER TABLE jobs ADD COLUMN max_parallel_tasks integer CHECK (max_parallel_tasks >= 1);
ALTER TABLE jobs ADD COLUMN depends_on text[] NOT NULL DEFAULT '{}';
CREATE INDEX jobs_depends_on_idx ON jobs USING gin (depends_on) WHERE status = 'queued';

ALTER TABLE tasks ADD COLUMN error_category text CHECK (error_category IN ('permanent', 'transient', 'throttling'));
ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('held', 'queued', 'processing', 'completed', 'failed', 'skipped'));
CREATE INDEX tasks_processing_lease_idx ON tasks (lease_expires_at) WHERE status = 'processing';
CREATE INDEX tasks_queued_updated_idx ON tasks (updated_at) WHERE status = 'queued';

ALTER TABLE outbox DROP CONSTRAINT outbox_queue_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_queue_check CHECK (queue IN ('jobs', 'tasks', 'tasks_high'));

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
    received_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_received_at_idx ON dead_letters (received_at);
