-- 0005: operator tools (GET/POST /api/dead-letters, /api/stats/*).
-- A dead letter the operator put back to work (the job retried, or the message re-sent) is kept,
-- marked with when; finished tasks are indexed by completion time for the failure and throughput stats.

ALTER TABLE dead_letters ADD COLUMN requeued_at timestamptz;
CREATE INDEX tasks_completed_at_idx ON tasks (completed_at) WHERE status IN ('completed', 'failed');
