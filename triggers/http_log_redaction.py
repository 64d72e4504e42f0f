"""Secrets never reach the app's log records: function keys in URLs (``?code=``), SAS signatures,
account keys and passwords in connection strings are replaced by ``[REDACTED]``.

``install()`` (called once by function_app.py) wraps the log record factory, so it covers every
record of the app's own loggers whatever handler or formatter the host configures: the message,
and the traceback of ``logger.exception`` (formatted once, redacted, kept as ``exc_text``).
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

REDACTED = "[REDACTED]"
# Loggers of the app's own packages (the host's and the SDKs' loggers are not ours).
APP_LOGGER_PREFIXES = ("function_app", "triggers", "services", "repositories", "controllers", "schemas")

_PATTERNS = (
    # Query parameters: function keys, SAS signatures, tokens.
    re.compile(r"(?i)([?&;](?:code|sig|key|token|access_token|client_secret|password)=)[^&#\s\"'<>]+"),
    # Connection-string and conninfo fields.
    re.compile(r"(?i)\b((?:AccountKey|SharedAccessSignature|SharedAccessKey|password)\s*=\s*)[^;\s\"'&]+"),
    # Header-style keys.
    re.compile(r"(?i)\b((?:x-functions-key|authorization)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]+"),
)


def redact(text: str) -> str:
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def is_app_logger(name: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in APP_LOGGER_PREFIXES)


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact a record's message (args merged in) and traceback in place; untouched if clean."""
    try:
        message = record.getMessage()
    except Exception:  # a malformed call: leave it to the handler to report
        return record
    cleaned = redact(message)
    if cleaned != message:
        record.msg, record.args = cleaned, None
    if record.exc_info and record.exc_info[0] is not None:
        text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        cleaned = redact(text)
        if cleaned != text:
            record.exc_info, record.exc_text = None, cleaned
    return record


def install() -> None:
    """Wrap the current log record factory (once per process)."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "redacts_app_records", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        return redact_record(record) if is_app_logger(record.name) else record

    factory.redacts_app_records = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
