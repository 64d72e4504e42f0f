-- 0008: errors nobody classified, and who owns a STAC collection's outputs.
-- An exception the engine does not recognise is no longer retried as transient: the task fails in
-- one attempt with error_category 'unclassified' (services/engine/error_classification.py).
-- collection_owners: one row per STAC collection written by a job (process_raster,
-- catalog_container), claimed by its first submission with one INSERT … ON CONFLICT: a different
-- source or different output options naming the same collection is refused (409 / failed task).
-- writer_job_id is the job whose outputs are there now; a newer job of the same owner takes over
-- only once the previous writer is no longer running, and marks its result superseded.

ALTER TABLE tasks DROP CONSTRAINT tasks_error_category_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_error_category_check
    CHECK (error_category IN ('permanent', 'transient', 'throttling', 'unclassified'));

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
