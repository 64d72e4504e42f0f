-- Named queries of the telemetry gauges (services/telemetry/backlog.py); same "-- name:" blocks as queries.sql.

-- name: backlog
SELECT (SELECT count(*) FROM outbox)::integer AS outbox_messages,
       coalesce(extract(epoch FROM now() - (SELECT min(created_at) FROM outbox)), 0)::float8
           AS outbox_oldest_age_seconds,
       (SELECT count(*) FROM dead_letters WHERE requeued_at IS NULL)::integer AS open_dead_letters;
