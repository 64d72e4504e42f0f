"""Deterministic ids: a job is its type plus canonical parameters; a task is job + stage + key."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def job_id_for(job_type: str, parameters: dict[str, Any]) -> str:
    """SHA-256 (64 hex) of the job type and its validated, canonically serialised parameters."""
    digest = hashlib.sha256()
    digest.update(job_type.encode("utf-8"))
    digest.update(b"\n")
    digest.update(canonical_json(parameters).encode("utf-8"))
    return digest.hexdigest()


def task_id_for(job_id: str, stage: int, task_key: str) -> str:
    """Unique across all jobs: the full job id, the stage and the semantic key."""
    return f"{job_id}-s{stage}-{task_key}"
