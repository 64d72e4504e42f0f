"""devstack run: the demo job, progress lines, and following a job against a fake jobs API."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from devstack import __main__ as cli
from devstack.stack import StackConfig, api_ready, resolve_config
from devstack.stack_state import StackError


def job_document(status: str, stage: int, percent: float, tasks: dict[str, int]) -> dict[str, Any]:
    counts = {"queued": 0, "processing": 0, "completed": 0, "failed": 0, "skipped": 0, **tasks}
    return {
        "job_id": "abc123",
        "job_type": "hello_world",
        "status": status,
        "stage": stage,
        "total_stages": 2,
        "parameters": {"n": 3},
        "progress": {
            "stages": [
                {"stage": 1, "name": "greet", "state": "done", "task_count": 3, "tasks": {"completed": 3}},
                {"stage": 2, "name": "reply", "state": "running", "task_count": 3, "tasks": counts},
            ],
            "percent": percent,
            "eta_seconds": 1.5,
        },
        "result": {"replies": ["a", "b", "c"]} if status == "completed" else None,
        "error": None,
    }


class FakeJobsApi:
    """Serves /api/job-types and /api/jobs; each GET of the job returns the next scripted document."""

    def __init__(self, documents: list[dict[str, Any]], submit_status: int = 202) -> None:
        self.documents = documents
        self.submit_status = submit_status
        self.submitted: list[tuple[str, Any, str | None]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def reply(self, status: int, body: Any) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                if self.path == "/api/job-types":
                    self.reply(200, {"job_types": []})
                elif self.path == "/api/jobs/abc123":
                    document = api.documents.pop(0) if len(api.documents) > 1 else api.documents[0]
                    self.reply(200, document)
                else:
                    self.reply(404, {"error": "not found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.submitted.append((self.path, body, self.headers.get("x-functions-key")))
                self.reply(api.submit_status, {"job_id": "abc123", "status": "queued"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def config(self) -> StackConfig:
        values = {"LOCAL_HOST_REQUIRE_FUNCTION_KEY": "true", "LOCAL_HOST_FUNCTION_KEY": "secret"}
        return resolve_config(values, {"LocalHttpPort": self.server.server_address[1]}, {})


@pytest.fixture
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "POLL_INTERVAL_SECONDS", 0.01)


@contextlib.contextmanager
def serve(documents: list[dict[str, Any]], submit_status: int = 202) -> Iterator[FakeJobsApi]:
    api = FakeJobsApi(documents, submit_status)
    api.thread.start()
    try:
        yield api
    finally:
        api.server.shutdown()
        api.server.server_close()


@pytest.fixture
def finishing_api() -> Iterator[FakeJobsApi]:
    documents = [
        job_document("queued", 1, 0.0, {}),
        job_document("processing", 2, 50.0, {"queued": 2, "processing": 1}),
        job_document("completed", 2, 100.0, {"completed": 3}),
    ]
    with serve(documents) as api:
        yield api


def test_demo_job_uploads_a_sample_to_the_stacks_storage(monkeypatch: pytest.MonkeyPatch) -> None:
    uploaded_to: list[str] = []

    def fake_upload(connection_string: str) -> dict[str, Any]:
        uploaded_to.append(connection_string)
        return {"container": "bronze", "blob_name": "samples/terrain.tif", "datetime": "2024-01-01T00:00:00+00:00"}

    monkeypatch.setattr("devstack.sample_raster.upload_demo_raster", fake_upload)
    config = resolve_config({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}, {}, {})
    monkeypatch.setattr(cli.stack, "effective_config", lambda paths, environ: config)
    job_type, parameters = cli.demo_job()
    assert job_type == "process_raster"
    assert parameters["blob_name"] == "samples/terrain.tif"
    assert uploaded_to == ["UseDevelopmentStorage=true"]


def test_progress_line_is_compact_and_shows_the_current_stage() -> None:
    line = cli.format_progress(job_document("processing", 2, 50.0, {"queued": 2, "processing": 1}), 3.25)
    assert "\n" not in line
    assert "processing" in line
    assert "stage 2/2" in line
    assert "50.0%" in line
    assert "q=2 p=1 c=0 f=0 s=0" in line
    assert "eta 2s" in line


def test_progress_line_tolerates_a_sparse_document() -> None:
    line = cli.format_progress({"status": "queued"}, 0.0)
    assert "queued" in line
    assert "stage -/-" in line
    assert "q=0 p=0 c=0 f=0 s=0" in line


def test_task_counts_add_up_all_stages_when_the_current_one_is_unknown() -> None:
    job = job_document("processing", 2, 50.0, {"queued": 2})
    job["stage"] = None
    assert cli.task_counts(job) == {"queued": 2, "processing": 0, "completed": 3, "failed": 0, "skipped": 0}


def test_final_summary_keeps_id_status_result_and_any_error() -> None:
    job = job_document("completed", 2, 100.0, {"completed": 3})
    assert cli.final_summary(job) == {
        "job_id": "abc123",
        "job_type": "hello_world",
        "status": "completed",
        "result": {"replies": ["a", "b", "c"]},
    }
    assert cli.final_summary({**job, "status": "failed", "error": "boom"})["error"] == "boom"


@pytest.mark.usefixtures("fast_polls")
def test_follow_job_submits_and_polls_until_the_job_ends(
    finishing_api: FakeJobsApi, capsys: pytest.CaptureFixture[str]
) -> None:
    job = cli.follow_job(finishing_api.config, "hello_world", {"n": 3}, timeout=10)
    assert job["status"] == "completed"
    assert finishing_api.submitted == [("/api/jobs/hello_world", {"n": 3}, "secret")]
    out = capsys.readouterr().out
    assert "Submitted hello_world job abc123" in out
    assert [line.split("]")[1].split()[0] for line in out.splitlines() if line.startswith("[")] == [
        "queued",
        "processing",
        "completed",
    ]


@pytest.mark.usefixtures("fast_polls")
def test_follow_job_gives_up_after_the_timeout() -> None:
    with serve([job_document("processing", 1, 10.0, {"queued": 3})]) as api:
        job = cli.follow_job(api.config, "hello_world", {}, timeout=0.2)
        assert job["status"] == "processing"


def test_follow_job_reports_a_rejected_submission() -> None:
    with serve([job_document("queued", 1, 0.0, {})], submit_status=400) as api, pytest.raises(StackError, match="400"):
        cli.follow_job(api.config, "hello_world", {}, timeout=1)


def test_api_ready(finishing_api: FakeJobsApi) -> None:
    assert api_ready(finishing_api.config)
    port = finishing_api.server.server_address[1]
    finishing_api.server.shutdown()
    finishing_api.server.server_close()
    assert not api_ready(resolve_config({}, {"LocalHttpPort": port}, {}))


def test_http_json_returns_error_statuses(finishing_api: FakeJobsApi) -> None:
    status, body = cli.http_json("GET", f"{finishing_api.config.api_url}/nope")
    assert (status, body) == (404, {"error": "not found"})


def test_cli_rejects_unknown_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["explode"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_output_paths_lists_every_cog_and_stac_document() -> None:
    from devstack.__main__ import output_paths

    job = {
        "result": {
            "outputs": {
                "cogs": [{"container": "silver", "blob": "cogs/a/tile_r0_c0.tif", "bytes": 3, "sha256": "x"}],
                "stac_collection": {"container": "silver", "blob": "stac/a/collection.json"},
                "stac_items": [{"container": "silver", "blob": "stac/a/item.json"}],
            }
        }
    }
    assert output_paths(job) == [
        "COG:              silver/cogs/a/tile_r0_c0.tif (3 bytes)",
        "STAC collection:  silver/stac/a/collection.json",
        "STAC item:        silver/stac/a/item.json",
    ]
    assert output_paths({"result": {"replies": []}}) == []
