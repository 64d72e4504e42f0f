"""process_rasters retried (POST /api/jobs/{id}/retry): the failed files are converted again.

Per-file failures never fail a convert task (the rest of its batch goes on), so the engine's retry —
which re-runs a job's failed tasks from its earliest stage with one — finds only the catalog stage's
``report`` task failed. That task is therefore where a retry happens: its first run records that it
failed (row ``report_failed`` of blob_chunks) and fails with the per-file reasons; when it runs again
with that row there (a retry), it first inspects every failed file again (its source may have been
replaced meanwhile), converts each one that is now valid, one after another in this task (one tile
at a time, each within the per-task memory budget), replaces the files' records, and re-publishes
the collection (which removes what the new outputs no longer use). Files that had succeeded are
neither read nor written. The re-published catalog summary is kept in row ``published``, where the
finalizer reads it (the ``catalog`` task's own result describes the first run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controllers.process_rasters_plan import FileRecords
from services.inventory.chunks import CHUNK_KEY_PREFIX

RETRY_MARKER_KEY = "report_failed"  # the report task failed once: its next run is a retry
PUBLISHED_KEY = "published"  # the latest catalog summary (catalog task, or a retried report)
RETRY_TASK_PREFIX = "retry_"  # outputs of a retry: row out_retry_<chunk key>

InspectFile = Callable[[dict[str, Any]], dict[str, Any]]  # listed blob {name, size} → inspection record
ConvertFile = Callable[[dict[str, Any], "dict[str, int] | None"], dict[str, Any]]  # record, window → output


def is_retry(records: FileRecords) -> bool:
    """Whether the report task failed before (so this run of it is a retry)."""
    return records.note(RETRY_MARKER_KEY) is not None


def mark_report_failed(records: FileRecords, failed_count: int) -> None:
    records.save_note(RETRY_MARKER_KEY, {"failed": failed_count})


def convert_failed_files(
    records: FileRecords, failed: set[str], inspect: InspectFile, convert: ConvertFile
) -> dict[str, int]:
    """Inspect and convert again every file of ``failed`` (and every file of a chunk whose inspect
    task failed), chunk by chunk; their old output records are dropped, the new ones saved in
    ``out_retry_<chunk>``. Counts: files tried, conversions made."""
    tried = conversions = 0
    for key, row in records.iter_rows(CHUNK_KEY_PREFIX):
        blobs: list[dict[str, Any]] = row["blobs"]
        results: list[dict[str, Any]] | None = row["results"]
        todo = [
            index
            for index, blob in enumerate(blobs)
            if results is None or "error" in results[index] or blob["name"] in failed
        ]
        if not todo:
            continue
        fresh = list(results) if results is not None else [{"name": b["name"], "error": "not inspected"} for b in blobs]
        outputs: list[dict[str, Any]] = []
        for index in todo:
            record = inspect(blobs[index])
            fresh[index] = record
            if "metadata" in record:
                windows: list[dict[str, int] | None] = [None] if len(record["tiles"]) == 1 else record["tiles"]
                outputs.extend(convert(record, window) for window in windows)
        # Outputs first: a crash in between leaves the file without outputs, i.e. failed ("its
        # convert task failed"), and the task's next attempt (still a retry) converts it again.
        records.drop_outputs({blobs[index]["name"] for index in todo})
        records.save_outputs(RETRY_TASK_PREFIX + key, outputs)
        records.save_inspection(key, fresh)
        tried += len(todo)
        conversions += len(outputs)
    return {"retried_files": tried, "retried_conversions": conversions}
