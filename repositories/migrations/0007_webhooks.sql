-- 0007: signed job-completion webhooks (the job option callback_url).
-- A subscription is one callback URL of a job (a resubmission with another URL adds one); every
-- terminal transition of the job makes one delivery per subscription, sent through the outbox on
-- the 'webhooks' queue and retried with backoff until delivered or out of attempts.

ALTER TABLE outbox DROP CONSTRAINT outbox_queue_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_queue_check CHECK (queue IN ('jobs', 'tasks', 'tasks_high', 'webhooks'));

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
