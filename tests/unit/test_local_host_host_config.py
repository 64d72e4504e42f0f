"""host.json parsing for the local host: durations, defaults, validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from local_host.host_config import (
    DEFAULT_FUNCTION_TIMEOUT_SECONDS,
    HostConfig,
    HostConfigError,
    load_host_config,
    parse_host_config,
    parse_timespan,
)

SAMPLE_APP = Path(__file__).resolve().parent.parent / "fixtures" / "sample_app"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("00:00:02", 2.0),
        ("00:01:00", 60.0),
        ("01:30:15", 5415.0),
        ("00:00:00.100", 0.1),
        ("00:00:01.5", 1.5),
        ("00:00:00.0500000", 0.05),
        ("1.02:00:00", 93600.0),
        (" 00:00:03 ", 3.0),
    ],
)
def test_parse_timespan(text: str, seconds: float) -> None:
    assert parse_timespan(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["2", "00:02", "00:60:00", "00:00:61", "abc", "00:00:01,5", ""])
def test_parse_timespan_rejects_malformed(text: str) -> None:
    with pytest.raises(HostConfigError):
        parse_timespan(text)


def test_defaults_when_nothing_is_configured() -> None:
    config = parse_host_config({"version": "2.0"})
    queues = config.queues
    assert (queues.batch_size, queues.new_batch_threshold, queues.max_dequeue_count) == (16, 8, 5)
    assert queues.max_polling_interval == 60.0
    assert queues.visibility_timeout == 0.0
    assert queues.message_encoding == "base64"
    assert queues.max_in_flight == 24
    assert config.http.route_prefix == "api"
    assert config.function_timeout == DEFAULT_FUNCTION_TIMEOUT_SECONDS


def test_new_batch_threshold_defaults_to_half_the_batch_size() -> None:
    config = parse_host_config({"extensions": {"queues": {"batchSize": 5}}})
    assert config.queues.new_batch_threshold == 2
    assert config.queues.max_in_flight == 7


def test_full_queues_section() -> None:
    config = parse_host_config(
        {
            "functionTimeout": "00:10:00",
            "extensions": {
                "queues": {
                    "batchSize": 32,
                    "newBatchThreshold": 0,
                    "maxPollingInterval": "00:00:00.500",
                    "visibilityTimeout": "00:00:05",
                    "maxDequeueCount": 2,
                    "messageEncoding": "None",
                },
                "http": {"routePrefix": "/v1/"},
            },
        }
    )
    assert config.queues.batch_size == 32
    assert config.queues.new_batch_threshold == 0
    assert config.queues.max_polling_interval == 0.5
    assert config.queues.visibility_timeout == 5.0
    assert config.queues.max_dequeue_count == 2
    assert config.queues.message_encoding == "none"
    assert config.http.route_prefix == "v1"
    assert config.function_timeout == 600.0


def test_empty_route_prefix_and_unbounded_timeout() -> None:
    config = parse_host_config({"functionTimeout": "-1", "extensions": {"http": {"routePrefix": ""}}})
    assert config.http.route_prefix == ""
    assert config.function_timeout is None


@pytest.mark.parametrize(
    "queues",
    [
        {"batchSize": 0},
        {"batchSize": 33},
        {"batchSize": "16"},
        {"maxDequeueCount": 0},
        {"maxPollingInterval": "00:00:00.050"},
        {"maxPollingInterval": 2000},
        {"messageEncoding": "utf8"},
        {"newBatchThreshold": -1},
    ],
)
def test_invalid_queue_settings_are_errors(queues: dict[str, object]) -> None:
    with pytest.raises(HostConfigError):
        parse_host_config({"extensions": {"queues": queues}})


def test_load_host_config_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load_host_config(tmp_path) == HostConfig()


def test_load_host_config_reports_the_file_on_error(tmp_path: Path) -> None:
    (tmp_path / "host.json").write_text(json.dumps({"extensions": {"queues": {"batchSize": 99}}}))
    with pytest.raises(HostConfigError, match=r"host\.json"):
        load_host_config(tmp_path)
    (tmp_path / "host.json").write_text("{not json")
    with pytest.raises(HostConfigError, match="invalid JSON"):
        load_host_config(tmp_path)


def test_sample_app_host_json() -> None:
    config = load_host_config(SAMPLE_APP)
    assert config.queues.max_polling_interval == 1.0
    assert config.queues.visibility_timeout == 1.0
    assert config.queues.max_dequeue_count == 3
    assert config.queues.batch_size == 4
    assert config.queues.new_batch_threshold == 2
