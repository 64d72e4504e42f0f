"""Malformed input gets a 400 naming the field, never a 5xx (issue 16, items 3, 4 and 26).

The app's HTTP functions are called in-process (the same functions the host invokes) against real
Azurite and Postgres, so any Python string can be put in a query or route parameter. A property-based
test (hypothesis) throws random query strings and bodies at every route.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceExistsError
from azure.storage.blob import BlobServiceClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.configuration import set_hypothesis_home_dir

from devstack.postgres import PostgresDatabase
from schemas.settings import Settings
from services.container import ServiceContainer
from tests.support.engine import make_container, make_settings
from triggers import http_containers, http_jobs

pytestmark = pytest.mark.integration

# Hypothesis keeps caches in <cwd>/.hypothesis by default: keep the checkout clean.
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "geoetl-hypothesis")

Handler = Callable[[func.HttpRequest], func.HttpResponse]
JOB_TYPES = (
    "hello_world",
    "process_raster",
    "process_rasters",
    "inventory_container",
    "catalog_container",
    "extract_metadata",
    "stage_vector",
    "export_geoparquet",
    "validate_stac",
)
BAD_TEXT = ("\x00", "a\x00b", "\ud800", "x\udfff", "\x01", "\u202e", "é", "'; --", "%00", "9" * 30)


@pytest.fixture(scope="module")
def hardening_settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    # The paging test's containers are the deployment's: some as inputs, some as outputs.
    return make_settings(
        azurite_connection_string,
        postgres_database,
        container_blob_count_cap=5,
        input_containers=("bronze", *PAGE_CONTAINERS[:3]),
        output_containers=("silver", *PAGE_CONTAINERS[3:]),
    )


PAGE_RUN = secrets.token_hex(3)
PAGE_CONTAINERS = [f"zz-page-{PAGE_RUN}-{i}" for i in range(5)]


@pytest.fixture(scope="module")
def app_container(hardening_settings: Settings) -> Iterator[ServiceContainer]:
    container = make_container(hardening_settings)
    yield container
    container.close()


@pytest.fixture(scope="module")
def functions(app_container: ServiceContainer) -> dict[str, Handler]:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(http_jobs.create_blueprint(app_container))
    app.register_functions(http_containers.create_blueprint(app_container))
    return {str(f.get_function_name()): f.get_user_function() for f in app.get_functions()}


@pytest.fixture(scope="module")
def job_id(functions: dict[str, Handler]) -> str:
    code, body = call(functions, "submit_job", "POST", {"job_type": "hello_world"}, body={"n": 2, "message": "fuzz"})
    assert code in (200, 202), body
    return str(body["job_id"])


def call(
    functions: dict[str, Handler],
    name: str,
    method: str,
    route: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    body: Any = None,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
    req = func.HttpRequest(
        method,
        "http://127.0.0.1:7071/api/x",
        headers={"content-type": "application/json"},
        params=params or {},
        route_params=route or {},
        body=data,
    )
    resp = functions[name](req)
    text = resp.get_body()
    payload = json.loads(text) if text else None
    if resp.status_code >= 400:
        assert isinstance(payload, dict) and "error" in payload, payload
        assert "Traceback" not in text.decode("utf-8", "replace")
    return resp.status_code, payload


def fields(payload: Any) -> set[Any]:
    return {d.get("field") for d in (payload or {}).get("details") or [] if isinstance(d, dict)}


def job_cursor(parts: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(parts).encode()).decode().rstrip("=")


# --- item 3: each class of malformed input -------------------------------------------------------


def test_list_cursor_with_a_created_at_that_is_not_a_timestamp_is_400(functions: dict[str, Handler]) -> None:
    for created_at in ("yesterday", 12, None, "2026-13-45T99:00:00", "\x00"):
        code, body = call(
            functions, "list_jobs", "GET", params={"cursor": job_cursor({"created_at": created_at, "job_id": "a"})}
        )
        assert code == 400 and fields(body) == {"cursor"}, (created_at, body)
    code, body = call(functions, "list_job_tasks", "GET", {"job_id": "f" * 64}, {"cursor": job_cursor({"task_id": 7})})
    assert code == 400 and fields(body) == {"cursor"}, body


@pytest.mark.parametrize("bad", ["\x00", "\ud800"], ids=["nul", "lone-surrogate"])
def test_nul_and_lone_surrogates_in_any_text_are_400_naming_the_field(
    functions: dict[str, Handler], job_id: str, bad: str
) -> None:
    escaped = json.dumps(bad)  # "\u0000" / "\ud800": valid JSON escapes
    raw = ('{"container": "bronze", "prefix": "a' + escaped[1:-1] + '"}').encode()
    code, body = call(functions, "submit_job", "POST", {"job_type": "extract_metadata"}, raw=raw)
    assert code == 400 and fields(body) == {"prefix"}, body
    raw = ('{"n": 1, "message": ' + escaped + "}").encode()
    code, body = call(functions, "submit_job", "POST", {"job_type": "hello_world"}, raw=raw)
    assert code == 400 and fields(body) == {"message"}, body
    code, body = call(
        functions,
        "submit_job",
        "POST",
        {"job_type": "hello_world"},
        raw=b'{"n": 1, "depends_on": ["' + escaped[1:-1].encode() + b'"]}',
    )
    assert code == 400 and fields(body) == {"depends_on.0"}, body
    checks: list[tuple[str, str, dict[str, str], dict[str, str], str]] = [
        ("get_job", "GET", {"job_id": bad}, {}, "job_id"),
        ("cancel_job", "POST", {"job_id": "f" * 63 + bad}, {}, "job_id"),
        ("retry_job", "POST", {"job_id": bad}, {}, "job_id"),
        ("list_job_tasks", "GET", {"job_id": job_id}, {"status": bad}, "status"),
        ("list_jobs", "GET", {}, {"job_type": "hello" + bad}, "job_type"),
        ("list_jobs", "GET", {}, {"cursor": bad}, "cursor"),
        ("submit_job", "POST", {"job_type": bad}, {}, "job_type"),
        ("list_container_blobs", "GET", {"container": "bronze"}, {"prefix": bad}, "prefix"),
        ("list_container_blobs", "GET", {"container": "bronze"}, {"cursor": "m" + bad}, "cursor"),
        ("list_containers", "GET", {}, {"cursor": bad}, "cursor"),
    ]
    for name, method, route, params, field in checks:
        code, body = call(functions, name, method, route, params)
        assert code == 400 and field in fields(body), (name, route, params, body)


def test_json_nested_50000_deep_is_400(functions: dict[str, Handler]) -> None:
    for raw in (b"[" * 50_000 + b"]" * 50_000, b'{"n": 1, "message": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"):
        code, body = call(functions, "submit_job", "POST", {"job_type": "hello_world"}, raw=raw)
        assert code == 400 and fields(body) == {"body"}, body
    code, body = call(
        functions, "submit_job", "POST", {"job_type": "hello_world"}, raw=b'{"a":' * 500 + b"1" + b"}" * 500
    )
    assert code == 400 and body["details"][0]["field"].startswith("a.a.a"), body
    assert "nested" in body["details"][0]["message"]


def test_stage_beyond_int4_is_400(functions: dict[str, Handler], job_id: str) -> None:
    for stage in ("99999999999", "2147483648", "-99999999999", "0"):
        code, body = call(functions, "list_job_tasks", "GET", {"job_id": job_id}, {"stage": stage})
        assert code == 400 and fields(body) == {"stage"}, (stage, body)
    code, body = call(functions, "list_job_tasks", "GET", {"job_id": job_id}, {"stage": "2147483647"})
    assert code == 200 and body["tasks"] == []


def test_integer_literal_of_5000_digits_is_400(functions: dict[str, Handler]) -> None:
    code, body = call(functions, "submit_job", "POST", {"job_type": "hello_world"}, raw=b'{"n": ' + b"7" * 5000 + b"}")
    assert code == 400 and fields(body) == {"body"}, body
    for raw in (b'{"n": 1e999}', b'{"n": NaN}', b'{"n": -Infinity}'):
        code, body = call(functions, "submit_job", "POST", {"job_type": "hello_world"}, raw=raw)
        assert code == 400 and fields(body) == {"body"}, (raw, body)
    code, body = call(functions, "list_jobs", "GET", params={"limit": "7" * 5000})
    assert code == 400 and fields(body) == {"limit"}, body


# --- item 4: the container listing is paged, its counting capped --------------------------------


def test_container_listing_is_paged_and_counts_are_capped(
    functions: dict[str, Handler], hardening_settings: Settings
) -> None:
    service = BlobServiceClient.from_connection_string(hardening_settings.storage_connection_string.get_secret_value())
    names = PAGE_CONTAINERS
    hidden = f"zz-page-{PAGE_RUN}-hidden"  # a container of the account that is not the deployment's
    service.create_container(hidden)
    with contextlib.suppress(ResourceExistsError):
        service.create_container("azure-webjobs-secrets")
    for i, name in enumerate(names):
        client = service.create_container(name)
        for b in range(i * 3):  # 0, 3, 6, 9, 12 blobs; the cap is 5
            client.upload_blob(f"b{b}", b"x")
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    for _ in range(200):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        code, page = call(functions, "list_containers", "GET", params=params)
        assert code == 200 and len(page["containers"]) <= 2, page
        seen += page["containers"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    mine = {c["name"]: c for c in seen if c["name"] in names}
    assert [c["name"] for c in seen] == sorted({c["name"] for c in seen}), "every container once, by name"
    assert {c["name"] for c in seen} <= {"bronze", "silver", *names}, "only the deployment's containers"
    for other in (hidden, "azure-webjobs-secrets"):
        code, body = call(functions, "list_container_blobs", "GET", {"container": other})
        assert code == 403 and fields(body) == {"container"}, body
    assert [(mine[n]["blob_count"], mine[n]["blob_count_is_exact"]) for n in names] == [
        (0, True),
        (3, True),
        (5, False),
        (5, False),
        (5, False),
    ]
    for limit in ("0", "101", "x"):
        code, body = call(functions, "list_containers", "GET", params={"limit": limit})
        assert code == 400 and fields(body) == {"limit"}, body


# --- items 3 and 26: random input never gives a 5xx ----------------------------------------------

FUZZ = settings(
    max_examples=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
any_text = st.one_of(
    st.sampled_from(BAD_TEXT),
    st.text(alphabet=st.one_of(st.characters(), st.characters(categories=["Cs", "Cc"])), max_size=40),
    st.from_regex(r"\A-?[0-9]{1,25}\Z"),
    st.just(""),
)
json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**30), max_value=10**30), st.floats(), any_text
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(any_text, inner, max_size=4)),
    max_leaves=12,
)
QUERY_NAMES = ("status", "job_type", "limit", "cursor", "stage", "prefix", "suffix", "code")
query_params = st.dictionaries(st.sampled_from(QUERY_NAMES), any_text, max_size=5)


def assert_no_5xx(code: int, body: Any) -> None:
    assert code < 500, body


def parameter_names(functions: dict[str, Handler], job_type: str) -> list[str]:
    _, listing = call(functions, "list_job_types", "GET")
    schema = next(t["parameters_schema"] for t in listing["job_types"] if t["job_type"] == job_type)
    return [*schema.get("properties", {}), "priority", "max_parallel_tasks", "depends_on"]


# A valid body per type: random changes of one or two of its fields reach the deeper layers
# (parameter models, job id, insert) instead of stopping at the first missing field.
VALID_BODIES: dict[str, dict[str, Any]] = {
    "hello_world": {"n": 1},
    "process_raster": {"blob_name": "a.tif"},
    "process_rasters": {"prefix": "a/"},
    "inventory_container": {},
    "catalog_container": {},
    "extract_metadata": {"prefix": "a/"},
    "stage_vector": {"blob_name": "a.gpkg"},
    "export_geoparquet": {"table": "a"},
    "validate_stac": {"prefix": "stac/"},
}


def raw_bodies(job_type: str, names: list[str]) -> st.SearchStrategy[bytes]:
    """Bodies as bytes: a valid body with fields changed, random objects keyed by the type's
    parameters, any JSON, any bytes."""
    values = st.one_of(any_text, st.lists(any_text, max_size=2), json_values)
    changes = st.dictionaries(st.sampled_from(names), values, min_size=1, max_size=2)
    near_valid = changes.map(lambda c: {**VALID_BODIES[job_type], **c})
    objects = st.dictionaries(st.sampled_from(names), json_values, max_size=len(names))
    as_json = st.one_of(near_valid, near_valid, objects, json_values).map(
        lambda v: json.dumps(v, allow_nan=True).encode()
    )
    return st.one_of(as_json, as_json, as_json, st.binary(max_size=200))


@pytest.mark.parametrize("job_type", JOB_TYPES)
def test_fuzz_submit_never_5xx(functions: dict[str, Handler], job_type: str) -> None:
    @FUZZ
    @given(raw=raw_bodies(job_type, parameter_names(functions, job_type)), params=query_params)
    def run(raw: bytes, params: dict[str, str]) -> None:
        assert_no_5xx(*call(functions, "submit_job", "POST", {"job_type": job_type}, params, raw=raw))

    run()


def test_fuzz_job_routes_never_5xx(functions: dict[str, Handler], job_id: str) -> None:
    job_ids = st.one_of(st.just(job_id), any_text)
    routes: list[tuple[str, str, st.SearchStrategy[dict[str, str]]]] = [
        ("get_job", "GET", st.fixed_dictionaries({"job_id": job_ids})),
        ("list_jobs", "GET", st.just({})),
        ("list_job_tasks", "GET", st.fixed_dictionaries({"job_id": job_ids})),
        ("cancel_job", "POST", st.fixed_dictionaries({"job_id": any_text})),
        ("retry_job", "POST", st.fixed_dictionaries({"job_id": job_ids})),
        ("list_job_types", "GET", st.just({})),
        ("submit_job", "POST", st.fixed_dictionaries({"job_type": any_text})),
    ]
    for name, method, route_strategy in routes:

        @FUZZ
        @given(route=route_strategy, params=query_params, raw=st.binary(max_size=64))
        def run(route: dict[str, str], params: dict[str, str], raw: bytes) -> None:
            assert_no_5xx(*call(functions, name, method, route, params, raw=raw))  # noqa: B023

        run()


def test_fuzz_list_cursors_never_5xx(functions: dict[str, Handler], job_id: str) -> None:
    """Cursors that decode: the right keys with random values (the shape a forger would send)."""
    values = st.one_of(json_values, st.datetimes().map(lambda d: d.isoformat()))

    @FUZZ
    @given(created_at=values, last_id=values, task_id=values)
    def run(created_at: Any, last_id: Any, task_id: Any) -> None:
        cursor = job_cursor({"created_at": created_at, "job_id": last_id})
        assert_no_5xx(*call(functions, "list_jobs", "GET", params={"cursor": cursor}))
        cursor = job_cursor({"task_id": task_id})
        assert_no_5xx(*call(functions, "list_job_tasks", "GET", {"job_id": job_id}, {"cursor": cursor}))

    run()


def test_fuzz_container_routes_never_5xx(functions: dict[str, Handler]) -> None:
    containers = st.one_of(st.sampled_from(["bronze", "silver", "no-such-container"]), any_text)

    @FUZZ
    @given(params=query_params)
    def run_containers(params: dict[str, str]) -> None:
        assert_no_5xx(*call(functions, "list_containers", "GET", params=params))

    @FUZZ
    @given(container=containers, params=query_params)
    def run_blobs(container: str, params: dict[str, str]) -> None:
        assert_no_5xx(*call(functions, "list_container_blobs", "GET", {"container": container}, params))

    run_containers()
    run_blobs()
