"""Schemathesis against the local Functions host: every operation of GET /api/openapi.json gets at
least 100 positive and 100 negative examples (Hypothesis, derandomized: the same examples each run),
and no answer may be a 5xx or fall outside the document (status code, content type, body schema).

The bounded run of ``make test``; ``python -m bench.openapi_fuzz`` is the longer one (1000 + 1000
per operation). Both use ``bench.openapi_fuzz.fuzz_operations``. The host runs with its own input
and output containers (seeded with a few blobs) and one finished job, so reads have something to
return; hello_world submissions stay small (n ≤ 3), see bench/openapi_fuzz.py.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis.configuration import set_hypothesis_home_dir
from openapi_spec_validator import validate

from bench.openapi_fuzz import Seeded, failure_report, format_table, fuzz_operations, load_schema, seed_stack
from devstack.postgres import PostgresDatabase
from schemas.settings import Settings
from tests.support.engine import make_settings
from tests.support.host import RunningHost, start_host

pytestmark = pytest.mark.integration

set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "geoetl-hypothesis")

EXAMPLES = 100  # positive, and as many negative, per operation
PINNED = 10  # more per seeded resource (job, dead letter, dashboard file) with its id fixed


@pytest.fixture(scope="module")
def fuzz_settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    token = secrets.token_hex(3)
    return make_settings(
        azurite_connection_string,
        postgres_database,
        bronze_container=f"fuzz-in-{token}",
        silver_container=f"fuzz-out-{token}",
    )


@pytest.fixture(scope="module")
def host(fuzz_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    containers = {
        "BRONZE_CONTAINER": fuzz_settings.bronze_container,
        "SILVER_CONTAINER": fuzz_settings.silver_container,
    }
    running = start_host(
        fuzz_settings, workers=1, log_path=tmp_path_factory.mktemp("host") / "host.log", extra_env=containers
    )
    yield running
    assert running.stop() == 0, "the host exits cleanly on SIGTERM"


@pytest.fixture(scope="module")
def seeded(host: RunningHost, fuzz_settings: Settings) -> Seeded:
    return seed_stack(
        host.base_url,
        fuzz_settings.storage_connection_string.get_secret_value(),
        containers=(fuzz_settings.bronze_container, fuzz_settings.silver_container),
        job_queue=fuzz_settings.job_queue,
    )


@pytest.fixture(scope="module")
def api(host: RunningHost, seeded: Seeded) -> str:
    return host.base_url


def operation_count(document: dict[str, Any]) -> int:
    return sum(len(item) for item in document["paths"].values())


def test_the_host_serves_a_valid_document_anonymously(api: str, fuzz_settings: Settings) -> None:
    answer = requests.get(f"{api}/openapi.json", timeout=30)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("application/json")
    document = answer.json()
    validate(document)
    assert "/openapi.json" in document["paths"] and "/health" in document["paths"]
    poison = document["paths"]["/poison/{queue}"]["get"]["parameters"][0]["schema"]["enum"]
    assert f"{fuzz_settings.job_queue}-poison" in poison
    connection = dict(
        part.split("=", 1) for part in fuzz_settings.storage_connection_string.get_secret_value().split(";") if part
    )
    assert connection["AccountKey"] not in answer.text and "127.0.0.1" not in answer.text
    password = fuzz_settings.postgres_password.get_secret_value()
    assert not password or password not in answer.text


# 200 examples per operation: about 2-3 minutes on a quiet 2-CPU machine, and it grows with every
# operation the API gains; a busy machine (a fresh-machine run beside other work) took over the
# suite's 300 s per-test limit.
@pytest.mark.timeout(1200)
def test_schemathesis_finds_no_5xx_and_no_answer_outside_the_document(api: str, seeded: Seeded) -> None:
    schema = load_schema(api)
    started = time.perf_counter()
    results = fuzz_operations(
        schema, api, positive=EXAMPLES, negative=EXAMPLES, seed=0, pins=seeded.pins(), pinned=PINNED
    )
    elapsed = time.perf_counter() - started
    print(f"\n{format_table(results)}\nruntime {elapsed:.1f} s")
    document = requests.get(f"{api}/openapi.json", timeout=30).json()
    assert len(results) == operation_count(document), "every operation of the document ran"
    for r in results:
        item = document["paths"][r.path][r.method.lower()]
        has_inputs = bool(item.get("parameters") or item.get("requestBody"))
        # Hypothesis stops early only when an operation's inputs are exhausted (no parameters).
        assert r.examples.get("positive", 0) >= (EXAMPLES if has_inputs else 1), r
    assert not any(r.failures for r in results), failure_report(results)
    answered = {(r.operation, status) for r in results for status in r.statuses}
    # The seeded resources were reached: their documents, not only 404s, were checked.
    for expected in [("get_job", 200), ("list_job_tasks", 200), ("cancel_job", 409), ("retry_job", 202),
                     ("list_dead_letters", 200), ("requeue_dead_letter", 202), ("requeue_dead_letter", 409),
                     ("delete_dead_letter", 204), ("dashboard_job", 200), ("list_container_blobs", 200)]:  # fmt: skip
        assert expected in answered, expected


def test_the_checks_catch_an_answer_outside_the_document(api: str) -> None:
    """Control: with ``stages`` dropped from JobTypeInfo (whose schema forbids unknown fields), every
    GET /job-types answer violates the document, and the same run reports it."""
    document = requests.get(f"{api}/openapi.json", timeout=30).json()
    del document["components"]["schemas"]["JobTypeInfo"]["properties"]["stages"]
    document["components"]["schemas"]["JobTypeInfo"]["required"].remove("stages")
    schema = schemathesis.openapi.from_dict(document)
    results = fuzz_operations(schema, api, positive=3, negative=0, include=lambda name: name == "list_job_types")
    assert len(results) == 1 and results[0].failures >= 1, results
    assert "stages" in results[0].failure_samples[0]
