"""JSON-lines logging for worker processes, and a stdout wrapper tagging lines with the worker index."""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
from datetime import UTC, datetime
from typing import Any, TextIO

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
STANDARD_RECORD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys() | {"message", "asctime", "taskName"}
)
# Azure SDK clients log every HTTP request at INFO; the Functions host does not surface those.
NOISY_LOGGERS = ("azure.core.pipeline.policies.http_logging_policy", "azure.identity", "urllib3")


class JsonLineFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, worker, then the record's extra attributes."""

    def __init__(self, worker: int | None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "worker": self.worker,
        }
        for key, value in vars(record).items():
            if key not in STANDARD_RECORD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def parse_log_level(value: str | None) -> tuple[int, str | None]:
    """A logging level from LOG_LEVEL (name or number); returns (level, complaint-or-None)."""
    if not value:
        return logging.INFO, None
    text = value.strip()
    if text.isdigit():
        return int(text), None
    aliases = {"WARN": "WARNING", "INFORMATION": "INFO", "TRACE": "DEBUG", "FATAL": "CRITICAL"}
    name = aliases.get(text.upper(), text.upper())
    level = logging.getLevelName(name)
    if isinstance(level, int):
        return level, None
    return logging.INFO, f"LOG_LEVEL={value!r} is not a logging level; using INFO"


def configure_logging(worker: int | None, stream: TextIO | None = None) -> None:
    """Root logger → JSON lines on stderr at LOG_LEVEL (default INFO)."""
    level, complaint = parse_log_level(os.environ.get("LOG_LEVEL"))
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonLineFormatter(worker))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(max(level, logging.WARNING))
    logging.captureWarnings(True)
    if complaint:
        logging.getLogger("local_host").warning(complaint)


class LinePrefixingStream:
    """A text stream that writes whole lines to ``target``, each starting with ``prefix`` (for print())."""

    def __init__(self, target: TextIO, prefix: str) -> None:
        self._target = target
        self._prefix = prefix
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            *lines, self._pending = self._pending.split("\n")
            if lines:
                bare = self._prefix.rstrip()
                self._target.write("".join(f"{self._prefix}{line}\n" if line else f"{bare}\n" for line in lines))
                self._target.flush()
        return len(text)

    def flush(self) -> None:
        """Partial lines stay pending (so every line keeps its prefix) until a newline or ``finish``."""
        self._target.flush()

    def finish(self) -> None:
        with self._lock:
            if self._pending:
                self._target.write(f"{self._prefix}{self._pending}\n")
                self._pending = ""
            self._target.flush()

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        return self._target.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._target, "encoding", "utf-8")

    def writable(self) -> bool:
        return True
