"""Loggers that stamp every line with the job_id / task_id it is about (structured extras)."""

from __future__ import annotations

import logging


def job_logger(
    logger: logging.Logger, job_id: str, task_id: str | None = None
) -> logging.LoggerAdapter[logging.Logger]:
    extra: dict[str, object] = {"job_id": job_id}
    if task_id is not None:
        extra["task_id"] = task_id
    return logging.LoggerAdapter(logger, extra)
