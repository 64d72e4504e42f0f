"""HTTP → job queue → tasks → fan-in → completion, through the local Functions host with 3 workers."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest

from devstack.postgres import PostgresDatabase
from schemas.settings import Settings
from tests.support.engine import make_settings, sql
from tests.support.host import RunningHost, start_host

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def api_settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(
        azurite_connection_string,
        postgres_database,
        max_request_bytes=4096,
        input_containers=("bronze", BROWSED, f"{BROWSED}-gone"),
    )


BROWSED = f"browse-{secrets.token_hex(4)}"  # a container of the deployment's, for the listing test


@pytest.fixture(scope="module")
def host(api_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    running = start_host(api_settings, workers=3, log_path=tmp_path_factory.mktemp("host") / "host.log")
    yield running
    assert running.stop() == 0, "the host exits cleanly on SIGTERM"


def test_hello_world_50_completes_across_three_workers(host: RunningHost, api_settings: Settings) -> None:
    code, submitted = host.request("POST", "/jobs/hello_world", {"n": 50, "message": "e2e"})
    assert code == 202, submitted
    assert submitted["status"] == "queued" and submitted["created"] is True
    assert submitted["status_url"].endswith(f"/api/jobs/{submitted['job_id']}")
    status = host.wait_for_job(submitted["job_id"])
    assert status["status"] == "completed", status
    replies = status["result"]["replies"]
    assert len(replies) == 50 and len(set(replies)) == 50
    assert status["stage"] == status["total_stages"] == 2
    assert [s["tasks"]["completed"] for s in status["progress"]["stages"]] == [50, 50]
    # Each task ran once; no outbox message left behind.
    assert sql(api_settings, "SELECT count(*), max(attempts) FROM tasks WHERE job_id = %s", (submitted["job_id"],)) == [
        (100, 1)
    ]
    assert sql(api_settings, "SELECT count(*) FROM outbox") == [(0,)]

    code, again = host.request("POST", "/jobs/hello_world", {"message": "e2e", "n": 50})
    assert code == 200 and again["job_id"] == submitted["job_id"] and again["status"] == "completed"

    code, tasks = host.request("GET", f"/jobs/{submitted['job_id']}/tasks?stage=2&limit=20")
    assert code == 200 and len(tasks["tasks"]) == 20 and tasks["next_cursor"]
    seen = {t["task_id"] for t in tasks["tasks"]}
    cursor = tasks["next_cursor"]
    while cursor:
        code, page = host.request("GET", f"/jobs/{submitted['job_id']}/tasks?stage=2&limit=20&cursor={cursor}")
        assert code == 200
        seen |= {t["task_id"] for t in page["tasks"]}
        cursor = page["next_cursor"]
    assert len(seen) == 50
    assert all(t["predecessor_task_id"] for t in tasks["tasks"])


def test_job_listing_is_paged_and_filtered(host: RunningHost) -> None:
    ids = set()
    for i in range(3):
        code, body = host.request("POST", "/jobs/hello_world", {"n": 1, "message": f"list-{i}"})
        assert code == 202
        ids.add(body["job_id"])
    listed: set[str] = set()
    cursor = ""
    for _ in range(20):
        code, page = host.request("GET", f"/jobs?job_type=hello_world&limit=2&cursor={cursor}")
        assert code == 200 and len(page["jobs"]) <= 2
        listed |= {j["job_id"] for j in page["jobs"]}
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert ids <= listed
    code, body = host.request("GET", "/jobs?status=bogus")
    assert code == 400 and body["details"][0]["field"] == "status"
    code, body = host.request("GET", "/jobs?limit=0")
    assert code == 400 and body["details"][0]["field"] == "limit"


def test_job_types_list_parameter_schemas(host: RunningHost) -> None:
    code, body = host.request("GET", "/job-types")
    assert code == 200
    hello = next(t for t in body["job_types"] if t["job_type"] == "hello_world")
    assert hello["stages"] == ["greet", "reply"]
    assert hello["parameters_schema"]["properties"]["n"]["maximum"] == 1000


@pytest.mark.parametrize(
    ("path", "body", "raw", "code", "field"),
    [
        ("/jobs/hello_world", {"n": 0}, None, 400, "n"),
        ("/jobs/hello_world", {"n": 5, "bogus": True}, None, 400, "bogus"),
        ("/jobs/hello_world", None, b'{"n": 5', 400, "body"),
        ("/jobs/hello_world", None, b"[1, 2]", 400, "body"),
        ("/jobs/no_such_type", {"n": 1}, None, 404, None),
        ("/jobs/hello_world", None, b'{"message": "' + b"x" * 5000 + b'"}', 413, None),
    ],
    ids=["n-out-of-range", "unknown-field", "malformed-json", "not-an-object", "unknown-type", "too-large"],
)
def test_bad_submissions_get_clear_4xx(
    host: RunningHost, path: str, body: object, raw: bytes | None, code: int, field: str | None
) -> None:
    got, payload = host.request("POST", path, body, raw=raw)
    assert got == code, payload
    assert payload["error"]
    if field:
        assert any(d["field"] == field for d in payload["details"]), payload


def test_unknown_job_and_route_are_404(host: RunningHost) -> None:
    code, body = host.request("GET", "/jobs/" + "0" * 64)
    assert code == 404 and "not found" in body["error"]
    code, _ = host.request("GET", "/jobs/" + "0" * 64 + "/tasks")
    assert code == 404
    code, _ = host.request("GET", "/no-such-route")
    assert code == 404


def test_log_lines_about_tasks_carry_job_and_task_ids(host: RunningHost) -> None:
    code, submitted = host.request("POST", "/jobs/hello_world", {"n": 2, "message": "logs"})
    assert code == 202
    assert host.wait_for_job(submitted["job_id"])["status"] == "completed"
    records = []
    for line in host.log_path.read_text().splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            records.append(json.loads(line[start:]))
        except json.JSONDecodeError:
            continue
    about_job = [r for r in records if r.get("job_id") == submitted["job_id"]]
    claimed = [r for r in about_job if "task claimed" in r.get("message", "")]
    assert len(claimed) == 4, "every task's claim is logged with its job id"
    assert all(r.get("task_id", "").startswith(submitted["job_id"] + "-s") for r in claimed)


def test_container_listing_pages_every_blob_once(host: RunningHost, api_settings: Settings) -> None:
    from azure.storage.blob import BlobServiceClient

    name = BROWSED
    service = BlobServiceClient.from_connection_string(api_settings.storage_connection_string.get_secret_value())
    client = service.create_container(name)
    expected = {f"a/{i:03d}.tif" for i in range(23)} | {f"a/{i:03d}.txt" for i in range(7)} | {"b/other.tif"}
    for blob in expected:
        client.upload_blob(blob, b"x" * 3)

    seen: list[str] = []
    cursor = ""
    for _ in range(20):
        code, page = host.request("GET", f"/containers/{name}/blobs?prefix=a/&limit=8&cursor={cursor}")
        assert code == 200 and len(page["blobs"]) <= 8
        seen += [b["name"] for b in page["blobs"]]
        assert all(b["size"] == 3 and b["etag"] and b["last_modified"] for b in page["blobs"])
        cursor = page["next_cursor"] or ""
        if not cursor:
            break
    assert sorted(seen) == sorted(b for b in expected if b.startswith("a/")), "every blob exactly once"

    code, tifs = host.request("GET", f"/containers/{name}/blobs?suffix=.tif&limit=1000")
    assert code == 200 and len(tifs["blobs"]) == 24 and tifs["next_cursor"] is None

    code, listing = host.request("GET", "/containers")
    assert code == 200
    mine = next(c for c in listing["containers"] if c["name"] == name)
    assert mine == {"name": name, "blob_count": 31, "blob_count_is_exact": True}

    code, missing = host.request("GET", f"/containers/{BROWSED}-gone/blobs")  # allowed, never created
    assert code == 404 and "not found" in missing["error"]
    code, other = host.request("GET", "/containers/no-such-container/blobs")  # not the deployment's
    assert code == 403 and other["details"][0]["field"] == "container"
    code, bad = host.request("GET", f"/containers/{name}/blobs?limit=0")
    assert code == 400 and bad["details"][0]["field"] == "limit"
    code, bad = host.request("GET", "/containers/Bad_Name/blobs")
    assert code == 400 and bad["details"][0]["field"] == "container"
