-- 0003: blob chunks of listing jobs (inventory_container, extract_metadata, catalog_container).
-- A listing task splits a container's blobs into chunks stored here, not in queue messages or
-- task results; one task per chunk reads its blobs and writes its results back to the same row.

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
