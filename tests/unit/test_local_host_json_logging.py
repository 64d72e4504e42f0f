"""JSON-lines logging of worker processes."""

from __future__ import annotations

import io
import json
import logging

import pytest

from local_host.json_logging import JsonLineFormatter, LinePrefixingStream, parse_log_level


def log_line(record_logger: logging.Logger, stream: io.StringIO) -> dict[str, object]:
    return json.loads(stream.getvalue().strip().splitlines()[-1])


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonLineFormatter(worker=2))
    logger = logging.getLogger("test.local_host.json")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream


def test_line_has_base_fields_and_extras(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.info("task %s done", "t-1", extra={"job_id": "j-1", "task_id": "t-1", "attempt": 2})
    entry = log_line(logger, stream)
    assert entry["level"] == "INFO"
    assert entry["logger"] == "test.local_host.json"
    assert entry["message"] == "task t-1 done"
    assert entry["worker"] == 2
    assert entry["job_id"] == "j-1" and entry["task_id"] == "t-1" and entry["attempt"] == 2
    assert str(entry["ts"]).endswith("+00:00")
    assert "lineno" not in entry and "args" not in entry and "msg" not in entry


def test_exception_is_formatted(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    try:
        raise ValueError("bad value")
    except ValueError:
        logger.exception("failed", extra={"job_id": "j-2"})
    entry = log_line(logger, stream)
    assert entry["level"] == "ERROR" and entry["job_id"] == "j-2"
    assert "Traceback" in str(entry["exc_info"]) and "ValueError: bad value" in str(entry["exc_info"])


def test_unserializable_extras_become_text(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    logger.warning("odd", extra={"thing": object(), "items": {1, 2}})
    entry = log_line(logger, stream)
    assert str(entry["thing"]).startswith("<object")


@pytest.mark.parametrize(
    ("value", "level"),
    [
        (None, logging.INFO),
        ("debug", logging.DEBUG),
        ("WARN", logging.WARNING),
        ("Information", logging.INFO),
        ("10", 10),
        ("nonsense", logging.INFO),
    ],
)
def test_parse_log_level(value: str | None, level: int) -> None:
    assert parse_log_level(value)[0] == level


def test_line_prefixing_stream() -> None:
    target = io.StringIO()
    stream = LinePrefixingStream(target, "[worker 1] ")
    stream.write("hello ")
    stream.write("world\nsecond line\npartial")
    assert target.getvalue() == "[worker 1] hello world\n[worker 1] second line\n"
    stream.finish()
    assert target.getvalue().endswith("[worker 1] partial\n")
