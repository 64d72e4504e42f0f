"""local.settings.json loading and %NAME% resolution for the local host."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from local_host.app_settings import (
    SettingsError,
    apply_settings,
    is_truthy,
    load_settings_into_environment,
    read_local_settings,
    resolve_placeholders,
)


def write_settings(path: Path, values: dict[str, object], **extra: object) -> Path:
    path.write_text(json.dumps({"IsEncrypted": False, "Values": values, **extra}))
    return path


def test_environment_wins_over_settings_file(tmp_path: Path) -> None:
    path = write_settings(tmp_path / "local.settings.json", {"A": "from-file", "B": "from-file"})
    environ = {"A": "from-env"}
    load_settings_into_environment(path, environ)
    assert environ == {"A": "from-env", "B": "from-file"}


def test_apply_settings_reports_what_it_applied() -> None:
    environ = {"KEEP": "1"}
    assert apply_settings({"KEEP": "2", "NEW": "3"}, environ) == ["NEW"]
    assert environ == {"KEEP": "1", "NEW": "3"}


def test_missing_file_means_environment_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    environ = {"X": "1"}
    with caplog.at_level(logging.INFO, logger="local_host.settings"):
        load_settings_into_environment(tmp_path / "absent.json", environ)
    assert environ == {"X": "1"}
    assert "No settings file" in caplog.text
    assert read_local_settings(tmp_path / "absent.json") is None


def test_non_string_values_become_text(tmp_path: Path) -> None:
    path = write_settings(tmp_path / "s.json", {"FLAG": True, "N": 3, "S": "x"})
    assert read_local_settings(path) == {"FLAG": "true", "N": "3", "S": "x"}


def test_ignores_other_sections_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"Values": {"A": "1"}, "Host": {"LocalHttpPort": 1}}).encode())
    assert read_local_settings(path) == {"A": "1"}


@pytest.mark.parametrize(
    "document",
    ['{"IsEncrypted": true, "Values": {}}', "[]", "{broken", '{"Values": []}', '{"Values": {"A": {"x": 1}}}'],
)
def test_unusable_settings_files(tmp_path: Path, document: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(document)
    with pytest.raises(SettingsError):
        read_local_settings(path)


def test_resolve_placeholders() -> None:
    environ = {"JOB_QUEUE": "geospatial-jobs", "ENV": "dev"}
    assert resolve_placeholders("%JOB_QUEUE%", environ, what="f") == "geospatial-jobs"
    assert resolve_placeholders("q-%ENV%-%JOB_QUEUE%", environ, what="f") == "q-dev-geospatial-jobs"
    assert resolve_placeholders("plain", environ, what="f") == "plain"


def test_missing_placeholder_is_a_clear_error() -> None:
    with pytest.raises(SettingsError, match="MISSING_QUEUE"):
        resolve_placeholders("%MISSING_QUEUE%", {}, what="function f")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("true", True),
        (" TRUE ", True),
        ("yes", True),
        ("0", False),
        ("false", False),
        ("", False),
        (None, False),
    ],
)
def test_is_truthy(value: str | None, expected: bool) -> None:
    assert is_truthy(value) is expected
