-- 0006: per-caller submission limits (POST /api/jobs/{type}): one token bucket per caller key.
-- A row holds the tokens left at updated_at; the refill since then is computed by the statement
-- that takes a token (repositories/sql/rate_limits.sql). A missing row is a full bucket, so rows
-- idle long enough to be full again are deleted.

CREATE TABLE rate_limits (
    caller_key  text             PRIMARY KEY,
    tokens      double precision NOT NULL CHECK (tokens >= 0),
    granted     boolean          NOT NULL,
    updated_at  timestamptz      NOT NULL DEFAULT now()
);
CREATE INDEX rate_limits_updated_at_idx ON rate_limits (updated_at);
