"""devstack: local.settings.json handling and configuration resolution (no servers involved)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devstack.stack import (
    effective_config,
    ensure_settings_file,
    read_settings_file,
    resolve_config,
    settings_missing_from_local_file,
)
from devstack.stack_state import PROJECT_ROOT, StackError, StackPaths

EXAMPLE = {
    "IsEncrypted": False,
    "Values": {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "5432", "POSTGRES_DB": "geoetl", "FLAG": True},
    "Host": {"LocalHttpPort": 7071},
}


@pytest.fixture
def paths(tmp_path: Path) -> StackPaths:
    (tmp_path / "local.settings.example.json").write_text(json.dumps(EXAMPLE), encoding="utf-8")
    return StackPaths(tmp_path)


def test_settings_file_is_copied_from_the_example_when_missing(paths: StackPaths) -> None:
    assert ensure_settings_file(paths) is True
    assert json.loads(paths.settings_file.read_text(encoding="utf-8")) == EXAMPLE


def test_existing_settings_file_is_left_alone(paths: StackPaths) -> None:
    paths.settings_file.write_text('{"Values": {"POSTGRES_DB": "mine"}}', encoding="utf-8")
    assert ensure_settings_file(paths) is False
    assert json.loads(paths.settings_file.read_text(encoding="utf-8")) == {"Values": {"POSTGRES_DB": "mine"}}


def test_missing_example_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"local\.settings\.example\.json"):
        ensure_settings_file(StackPaths(tmp_path))


def test_read_settings_file_returns_values_as_text_and_host(paths: StackPaths) -> None:
    ensure_settings_file(paths)
    values, host = read_settings_file(paths.settings_file)
    assert values == {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "5432", "POSTGRES_DB": "geoetl", "FLAG": "true"}
    assert host == {"LocalHttpPort": 7071}


def test_read_settings_file_missing_is_empty(tmp_path: Path) -> None:
    assert read_settings_file(tmp_path / "nope.json") == ({}, {})


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"Values": [1]}'])
def test_read_settings_file_rejects_malformed_files(tmp_path: Path, text: str) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(StackError, match=r"local\.settings\.json"):
        read_settings_file(path)


def test_resolve_config_defaults() -> None:
    config = resolve_config({}, {}, {})
    assert (config.postgres.host, config.postgres.port, config.postgres.user) == ("127.0.0.1", 5432, "postgres")
    assert (config.database, config.schema, config.workers, config.api_port) == ("geoetl", "geoetl", 2, 7071)
    assert config.api_url == "http://127.0.0.1:7071/api"
    assert config.function_key is None
    assert config.uses_local_storage


def test_environment_wins_over_the_settings_file() -> None:
    values = {"POSTGRES_PORT": "5432", "POSTGRES_DB": "geoetl", "POSTGRES_SCHEMA": "s1"}
    config = resolve_config(values, {"LocalHttpPort": 7072}, {"POSTGRES_PORT": "55432", "WORKERS": "4"})
    assert config.postgres.port == 55432
    assert config.database == "geoetl"
    assert config.schema == "s1"
    assert config.workers == 4
    assert config.api_port == 7072


def test_workers_come_from_the_environment_only() -> None:
    assert resolve_config({"WORKERS": "9"}, {}, {}).workers == 2


def test_function_key_is_sent_only_when_the_host_requires_it() -> None:
    values = {"LOCAL_HOST_FUNCTION_KEY": "k"}
    assert resolve_config(values, {}, {}).function_key is None
    assert resolve_config({**values, "LOCAL_HOST_REQUIRE_FUNCTION_KEY": "true"}, {}, {}).function_key == "k"


def test_bad_integer_is_a_clear_error() -> None:
    with pytest.raises(StackError, match="POSTGRES_PORT"):
        resolve_config({"POSTGRES_PORT": "five"}, {}, {})


@pytest.mark.parametrize(
    ("storage", "local"),
    [
        ("UseDevelopmentStorage=true", True),
        ("DefaultEndpointsProtocol=http;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;", True),
        ("DefaultEndpointsProtocol=https;AccountName=prod;AccountKey=x;EndpointSuffix=core.windows.net", False),
    ],
)
def test_uses_local_storage(storage: str, local: bool) -> None:
    assert resolve_config({"AzureWebJobsStorage": storage}, {}, {}).uses_local_storage is local


def test_the_repository_example_settings_describe_the_local_stack() -> None:
    values, host = read_settings_file(PROJECT_ROOT / "local.settings.example.json")
    config = resolve_config(values, host, {})
    assert (config.postgres.host, config.postgres.port, config.database) == ("127.0.0.1", 5432, "geoetl")
    assert config.uses_local_storage
    assert config.api_port == 7071


def test_settings_added_to_the_example_later_are_reported_and_used(paths: StackPaths) -> None:
    paths.settings_file.write_text('{"Values": {"POSTGRES_DB": "mine"}}', encoding="utf-8")
    missing = settings_missing_from_local_file(paths)
    assert missing == {"POSTGRES_HOST": "127.0.0.1", "POSTGRES_PORT": "5432", "FLAG": "true"}
    config = effective_config(paths, {})
    assert config.database == "mine"  # the local file wins over the example
    assert config.api_port == 7071  # Host section from the example


def test_no_settings_are_missing_from_a_fresh_copy(paths: StackPaths) -> None:
    ensure_settings_file(paths)
    assert settings_missing_from_local_file(paths) == {}
