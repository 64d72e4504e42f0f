-- Named queries of job-completion webhooks (subscriptions, deliveries, their attempts).
-- Loaded once by repositories/webhook_queries.py; same "-- name: <name>" blocks as queries.sql.
-- Every state change of a delivery is one guarded statement: a lost race returns no row.

-- name: add_subscription
INSERT INTO webhook_subscriptions (job_id, url, status_url)
VALUES (%(job_id)s, %(url)s, %(status_url)s)
ON CONFLICT (job_id, url) DO NOTHING
RETURNING subscription_id;

-- name: count_subscriptions
SELECT count(*)::integer AS n FROM webhook_subscriptions WHERE job_id = %(job_id)s;

-- name: subscriptions_of_job
SELECT subscription_id, url, status_url FROM webhook_subscriptions
 WHERE job_id = %(job_id)s AND (%(subscription_id)s::bigint IS NULL OR subscription_id = %(subscription_id)s)
 ORDER BY subscription_id;

-- name: insert_delivery
INSERT INTO webhook_deliveries (subscription_id, job_id, webhook_id, event_type, payload, next_attempt_at)
VALUES (%(subscription_id)s, %(job_id)s, %(webhook_id)s, %(event_type)s, %(payload)s, now())
RETURNING delivery_id;

-- name: claim_delivery
-- One attempt: a pending delivery that is due (a message up to early_seconds early counts as due),
-- or one whose previous attempt's claim lapsed (its sender died). A duplicate message finds the
-- delivery claimed, done or not yet due, and gets no row.
UPDATE webhook_deliveries AS d
   SET status = 'delivering', attempts = d.attempts + 1, claim_token = gen_random_uuid(),
       claim_expires_at = now() + make_interval(secs => %(claim_seconds)s), updated_at = now()
  FROM webhook_subscriptions AS s
 WHERE d.delivery_id = %(delivery_id)s AND s.subscription_id = d.subscription_id
   AND ((d.status = 'pending' AND d.next_attempt_at <= now() + make_interval(secs => %(early_seconds)s))
        OR (d.status = 'delivering' AND d.claim_expires_at < now()))
RETURNING d.delivery_id, d.job_id, d.webhook_id, d.event_type, d.payload, d.attempts, d.claim_token, s.url;

-- name: delivery_state
SELECT delivery_id, job_id, status, attempts, next_attempt_at FROM webhook_deliveries
 WHERE delivery_id = %(delivery_id)s;

-- name: record_delivered
UPDATE webhook_deliveries
   SET status = 'delivered', delivered_at = now(), last_status_code = %(status_code)s, last_error = NULL,
       next_attempt_at = NULL, claim_token = NULL, claim_expires_at = NULL, updated_at = now()
 WHERE delivery_id = %(delivery_id)s AND status = 'delivering' AND claim_token = %(claim_token)s
RETURNING delivery_id;

-- name: record_failed_attempt
-- The attempt under this claim failed: pending again after retry_seconds, or failed for good
-- when retry_seconds is NULL (no attempts left).
UPDATE webhook_deliveries
   SET status = CASE WHEN %(retry_seconds)s::double precision IS NULL THEN 'failed' ELSE 'pending' END,
       next_attempt_at = now() + make_interval(secs => %(retry_seconds)s::double precision),
       last_error = %(error)s, last_status_code = %(status_code)s,
       claim_token = NULL, claim_expires_at = NULL, updated_at = now()
 WHERE delivery_id = %(delivery_id)s AND status = 'delivering' AND claim_token = %(claim_token)s
RETURNING delivery_id, job_id, status;

-- name: fail_open_delivery
-- Poison-queue reconciliation: a delivery still open is failed with the reason.
UPDATE webhook_deliveries
   SET status = 'failed', last_error = %(error)s, next_attempt_at = NULL,
       claim_token = NULL, claim_expires_at = NULL, updated_at = now()
 WHERE delivery_id = %(delivery_id)s AND status IN ('pending', 'delivering')
RETURNING delivery_id, job_id;

-- name: take_lost_deliveries
-- Open deliveries whose message was lost: pending and overdue, or claimed by a sender that died,
-- for longer than older_than_seconds, with no message owed in the outbox. Taken (touched) in this
-- one statement, so another janitor leaves them alone for the same period.
UPDATE webhook_deliveries AS d
   SET next_attempt_at = now(),
       claim_expires_at = CASE WHEN d.status = 'delivering' THEN now() ELSE d.claim_expires_at END,
       updated_at = now()
 WHERE d.delivery_id IN (
       SELECT o.delivery_id FROM webhook_deliveries AS o
        WHERE ((o.status = 'pending' AND o.next_attempt_at < now() - make_interval(secs => %(older_than_seconds)s))
               OR (o.status = 'delivering'
                   AND o.claim_expires_at < now() - make_interval(secs => %(older_than_seconds)s)))
          AND NOT EXISTS (SELECT 1 FROM outbox AS m
                           WHERE m.queue = 'webhooks' AND m.job_id = o.job_id
                             AND m.body->>'delivery_id' = o.delivery_id::text)
        ORDER BY o.next_attempt_at
        LIMIT %(limit)s
          FOR UPDATE SKIP LOCKED)
RETURNING d.delivery_id, d.job_id;

-- name: webhooks_of_job
-- Each subscription of the job with its latest delivery (none while the job runs).
SELECT s.url, s.created_at AS subscribed_at, d.webhook_id, d.event_type, d.status, d.attempts,
       d.next_attempt_at, d.last_error, d.last_status_code, d.delivered_at
  FROM webhook_subscriptions AS s
  LEFT JOIN LATERAL (SELECT * FROM webhook_deliveries AS w WHERE w.subscription_id = s.subscription_id
                      ORDER BY w.delivery_id DESC LIMIT 1) AS d ON true
 WHERE s.job_id = %(job_id)s
 ORDER BY s.subscription_id;
