-- Named queries of the per-caller submission limit (token buckets). Loaded once by
-- repositories/rate_limit_queries.py; same "-- name: <name>" blocks as queries.sql.

-- name: take_token
-- One atomic statement per submission. A new caller starts with a full bucket less the token it
-- takes. Otherwise the caller's row is locked (ON CONFLICT), refilled by per_second tokens for each
-- second since updated_at (capped at burst), and a token is taken if at least one is there.
-- Concurrent callers of one key serialise on the row lock and each sees the row its predecessor
-- left, so a burst across any number of instances is granted at most `burst` tokens. updated_at
-- never moves back (a transaction that started earlier but locks later does not re-count time).
-- retry_after_seconds: how long until the next token, 0 when this request got one.
INSERT INTO rate_limits AS b (caller_key, tokens, granted, updated_at)
VALUES (%(caller_key)s, %(burst)s::double precision - 1, true, now())
ON CONFLICT (caller_key) DO UPDATE
   SET (tokens, granted, updated_at) = (
       SELECT CASE WHEN r.available >= 1 THEN r.available - 1 ELSE r.available END,
              r.available >= 1,
              r.at
         FROM (SELECT LEAST(%(burst)s::double precision,
                            b.tokens + %(per_second)s::double precision
                                       * GREATEST(0, extract(epoch FROM now() - b.updated_at))::double precision)
                          AS available,
                      GREATEST(b.updated_at, now()) AS at) AS r)
RETURNING granted, tokens,
          CASE WHEN granted THEN 0::double precision
               ELSE (1 - tokens) / %(per_second)s::double precision END AS retry_after_seconds;

-- name: prune_full_buckets
-- Rows idle for full_after_seconds (burst / per_second) hold a full bucket again: the same as no
-- row. The condition is on the row itself, so a row a concurrent take_token just updated is kept.
DELETE FROM rate_limits WHERE updated_at < now() - make_interval(secs => %(full_after_seconds)s);
