"""The operator dashboard in a real browser (headless Debian Chromium through Playwright) against the
local Functions host, Azurite and Postgres, with function keys required as in Azure.

The page takes the key from ?code= and sends it as x-functions-key on every fetch; a fetch without it
would be a 401, which Chromium logs as a console error, and every test ends asserting there is none.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from controllers.process_raster_parameters import collection_id_for
from devstack.postgres import PostgresDatabase
from devstack.sample_raster import upload_demo_raster
from schemas.messages import TaskMessage
from schemas.settings import Settings
from tests.support.browser import BrowserSession, chromium_session
from tests.support.engine import make_settings, queue_client, sql
from tests.support.host import PROJECT_ROOT, RunningHost, start_host

pytestmark = pytest.mark.integration

KEY = f"dash-key-{secrets.token_hex(12)}"
ARTIFACTS = PROJECT_ROOT / ".stack" / "artifacts"
WAIT_MS = 60_000
TERMINAL = ("completed", "completed_with_errors", "failed", "cancelled")


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database, task_max_attempts=2)


@pytest.fixture(scope="module")
def host(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    keyed = {"LOCAL_HOST_REQUIRE_FUNCTION_KEY": "true", "LOCAL_HOST_FUNCTION_KEY": KEY}
    running = start_host(settings, workers=2, log_path=tmp_path_factory.mktemp("host") / "host.log", extra_env=keyed)
    yield running
    assert running.stop() == 0


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserSession]:
    with chromium_session(tmp_path_factory.mktemp("chromium") / "profile") as session:
        yield session


@pytest.fixture
def page(browser: BrowserSession, host: RunningHost) -> Iterator[Page]:
    opened = browser.new_page()
    opened.goto(f"{host.base_url}/dashboard?code={KEY}")
    expect(opened.locator("#last-refresh")).to_contain_text("updated", timeout=WAIT_MS)
    yield opened
    opened.close()
    browser.assert_no_console_errors()


def raw(host: RunningHost, method: str, path: str, key: str | None = KEY, body: Any = None) -> tuple[int, Any, bytes]:
    """(status, headers, body) of one request, the key sent as x-functions-key when given."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(host.base_url + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("x-functions-key", key)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def call(host: RunningHost, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    code, _, payload = raw(host, method, path, body=body)
    return code, json.loads(payload or b"null")


def submit(host: RunningHost, params: dict[str, Any]) -> str:
    code, body = call(host, "POST", "/jobs/hello_world", params)
    assert code == 202, body
    return str(body["job_id"])


def wait_until(check: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what} not reached after {timeout}s")


def job_status(host: RunningHost, job_id: str) -> dict[str, Any]:
    code, body = call(host, "GET", f"/jobs/{job_id}")
    assert code == 200, body
    return dict(body)


def job_row(page: Page, job_id: str) -> Any:
    return page.locator(f'#jobs tr[data-job-id="{job_id}"]')


def test_page_and_assets_are_served_with_their_types_and_a_strict_csp(host: RunningHost) -> None:
    assert raw(host, "GET", "/dashboard", key=None)[0] == 401, "the page needs the function key"
    code, headers, body = raw(host, "GET", f"/dashboard?code={KEY}", key=None)
    assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert headers["Referrer-Policy"] == "no-referrer" and headers["X-Content-Type-Options"] == "nosniff"
    html = body.decode()
    assert 'data-api-base="/api"' in html and KEY not in html, "the key is never rendered into the page"
    assert "<script>" not in html and "style=" not in html, "nothing inline (CSP)"

    for name, content_type in (
        ("core.js", "text/javascript; charset=utf-8"),
        ("dashboard.css", "text/css; charset=utf-8"),
        ("favicon.svg", "image/svg+xml"),
    ):
        code, headers, body = raw(host, "GET", f"/dashboard/static/{name}", key=None)
        assert code == 200 and headers["Content-Type"] == content_type and body, name
    for missing in ("nope.js", "..%2Fpage.html", "page.html", "%2e%2e%2f__init__.py"):
        assert raw(host, "GET", f"/dashboard/static/{missing}", key=None)[0] == 404, missing

    code, _, body = raw(host, "GET", f"/dashboard/jobs/{'a' * 64}")
    assert code == 200 and f'data-job-id="{"a" * 64}"' in body.decode()
    assert raw(host, "GET", "/dashboard/jobs/not-a-job-id")[0] == 404


def test_a_submitted_job_progresses_to_completed_on_the_page(
    page: Page, host: RunningHost, browser: BrowserSession
) -> None:
    hostile = f"<img src=x id=injected-{secrets.token_hex(3)}>&amp;</td>"
    job_id = submit(host, {"n": 4, "message": hostile, "sleep_ms": 400})
    row = job_row(page, job_id)
    expect(row.locator(".status-cell")).to_have_text("completed", timeout=WAIT_MS)
    expect(row.locator("td").nth(1)).to_have_text("hello_world")
    expect(row.locator("td").nth(3)).to_have_text("2/2")

    row.locator("a.job-link").click()
    expect(page.locator("#job-view")).to_be_visible()
    expect(page.locator("#job-title")).to_have_text(job_id)
    expect(page.locator("#job-summary")).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    stages = page.locator("#job-stages .stage")
    expect(stages).to_have_count(2)
    expect(stages.nth(0)).to_contain_text("1. greet — completed")
    expect(stages.nth(1)).to_contain_text("4 completed of 4")
    expect(stages.nth(0).locator(".fill-completed")).to_have_count(1)
    tasks = page.locator("#tasks tbody tr")
    expect(tasks).to_have_count(8)
    expect(tasks.first.locator(".attempts")).to_have_text("1")
    expect(page.locator("#job-outputs")).to_contain_text("No blob outputs in the result.")

    # User-controlled text is shown as text, never parsed as HTML.
    expect(page.locator("#job-parameters")).to_contain_text(hostile)
    expect(page.locator("#job-result")).to_contain_text(hostile)
    assert page.locator("img[id^=injected]").count() == 0

    page.locator("#filter-task-stage").select_option("2")
    expect(tasks).to_have_count(4)
    page.locator("#back-to-jobs").click()
    expect(page.locator("#overview")).to_be_visible()

    # The server-side job page shows the same view.
    direct = browser.new_page()
    direct.goto(f"{host.base_url}/dashboard/jobs/{job_id}?code={KEY}")
    expect(direct.locator("#job-summary")).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    expect(direct.locator("#tasks tbody tr")).to_have_count(8)
    direct.close()


def test_a_failed_job_is_retried_and_a_running_one_cancelled_from_the_page(page: Page, host: RunningHost) -> None:
    failing = submit(host, {"n": 1, "fail_ratio": 1.0, "sleep_ms": 1500, "message": secrets.token_hex(4)})
    row = job_row(page, failing)
    expect(row.locator(".status-cell")).to_have_text("failed", timeout=WAIT_MS)
    expect(row.locator("td.error")).to_contain_text("fails on purpose")
    expect(page.locator("#failures tbody")).to_contain_text("fails on purpose", timeout=WAIT_MS)

    row.locator('button[data-action="retry"]').click()
    expect(page.locator("#flash")).to_contain_text(f"Job {failing[:12]}… re-queued: processing")
    assert job_status(host, failing)["status"] in ("queued", "processing"), "the retry re-queued the job"
    code, tasks = call(host, "GET", f"/jobs/{failing}/tasks?stage=1")
    assert code == 200 and tasks["tasks"][0]["status"] in ("queued", "processing")
    wait_until(lambda: job_status(host, failing)["status"] in TERMINAL, "the retried job ending")

    slow = submit(host, {"n": 1, "sleep_ms": 4000, "message": secrets.token_hex(4)})
    row = job_row(page, slow)
    expect(row.locator('button[data-action="cancel"]')).to_be_visible(timeout=WAIT_MS)
    row.locator('button[data-action="cancel"]').click()
    expect(page.locator("#flash")).to_contain_text(f"Job {slow[:12]}… is cancelled")
    assert job_status(host, slow)["status"] == "cancelled"
    expect(row.locator(".status-cell")).to_have_text("cancelled", timeout=WAIT_MS)


def test_a_raster_jobs_outputs_are_listed_with_links(page: Page, host: RunningHost, settings: Settings) -> None:
    parameters = upload_demo_raster(settings.storage_connection_string.get_secret_value(), size=600)
    code, body = call(host, "POST", "/jobs/process_raster", parameters)
    assert code == 202, body
    job_id = body["job_id"]
    page.goto(f"{host.base_url}/dashboard?code={KEY}#/jobs/{job_id}")
    expect(page.locator("#job-summary")).to_have_attribute("data-status", "completed", timeout=WAIT_MS)
    outputs = page.locator("#job-outputs a.output-link")
    cog = "cogs/samples/terrain.tif/tile_r0_c0.tif"
    expect(outputs.filter(has_text=cog)).to_have_count(1)
    collection = f"stac/{collection_id_for(parameters['blob_name'])}/collection.json"
    expect(outputs.filter(has_text=collection)).to_have_count(1)
    expect(page.locator("#job-outputs")).to_contain_text("outputs.cogs[0]: ")
    outputs.filter(has_text=cog).click()
    detail = page.locator("#output-detail")
    expect(detail).to_be_visible()
    expect(detail).to_contain_text(f'"name": "{cog}"')
    expect(detail).to_contain_text('"size": ')


def test_dead_letters_are_requeued_and_deleted_from_the_page(
    page: Page, host: RunningHost, settings: Settings, browser: BrowserSession
) -> None:
    # A requeueable dead letter: the host gave up on a task's message (as if after maxDequeueCount).
    job_id = submit(host, {"n": 2, "sleep_ms": 2500, "message": secrets.token_hex(4)})
    wait_until(
        lambda: sql(settings, "SELECT count(*) FROM tasks WHERE job_id = %s", (job_id,))[0][0] == 2, "tasks created"
    )
    poison = queue_client(settings, f"{settings.task_queue}-poison")
    message = TaskMessage(task_id=f"{job_id}-s1-item_0001", job_id=job_id).model_dump_json()
    poison.send_message(base64.b64encode(message.encode()).decode())
    # One that cannot be requeued (its body never parses): deleted.
    junk = f"not json {secrets.token_hex(4)}"
    queue_client(settings, settings.job_queue).send_message(base64.b64encode(junk.encode()).decode())

    poisoned = page.locator("#dead-letters tbody tr", has=page.locator(f'a[href="#/jobs/{job_id}"]'))
    expect(poisoned).to_have_count(1, timeout=WAIT_MS)
    expect(poisoned.locator("td.reason")).to_contain_text("poison")
    letter_id = int(poisoned.get_attribute("data-dead-letter-id") or 0)
    assert job_status(host, job_id)["status"] == "failed"

    poisoned.locator('button[data-action="requeue"]').click()
    expect(page.locator("#flash")).to_contain_text(f"Dead letter {letter_id} requeued: job {job_id[:12]}… retried")
    expect(poisoned).to_have_count(0, timeout=WAIT_MS)  # the list shows open dead letters
    code, listing = call(host, "GET", "/dead-letters?status=requeued")
    assert code == 200 and letter_id in {d["id"] for d in listing["dead_letters"]}
    assert job_status(host, job_id)["status"] in ("queued", "processing")
    wait_until(lambda: job_status(host, job_id)["status"] == "completed", "the requeued job completing")

    invalid = page.locator("#dead-letters tbody tr", has_text=junk)
    expect(invalid).to_have_count(1, timeout=WAIT_MS)
    expect(invalid.locator("td.reason")).to_have_text("message body is not valid JSON")
    invalid_id = int(invalid.get_attribute("data-dead-letter-id") or 0)
    invalid.locator('button[data-action="delete"]').click()
    expect(page.locator("#flash")).to_contain_text(f"Dead letter {invalid_id} deleted")
    expect(invalid).to_have_count(0, timeout=WAIT_MS)
    assert browser.dialogs[-1] == f"Delete dead letter {invalid_id}? This cannot be undone."
    code, listing = call(host, "GET", "/dead-letters")
    assert code == 200 and invalid_id not in {d["id"] for d in listing["dead_letters"]}


def test_operations_overview_and_screenshot(page: Page, host: RunningHost, settings: Settings) -> None:
    queues = page.locator("#queues tbody tr")
    expect(queues).to_have_count(8)  # jobs, tasks, tasks_high, webhooks and their poison queues
    expect(page.locator(f'#queues tr[data-queue="{settings.webhook_queue}-poison"]')).to_contain_text(
        "webhooks (poison)"
    )
    expect(page.locator(f'#queues tr[data-queue="{settings.task_queue}-poison"]')).to_contain_text("tasks (poison)")
    chart = page.locator("#throughput-chart")
    expect(chart.locator("svg rect.bar-completed").first).to_be_attached(timeout=WAIT_MS)
    expect(chart.locator("svg rect.bar-failed").first).to_be_attached()
    assert int(chart.get_attribute("data-completed") or 0) >= 8
    expect(page.locator("#throughput-summary")).to_contain_text("completed")
    expect(page.locator("#failures tbody tr").first).to_be_visible()

    page.locator("#filter-status").select_option("completed")
    expect(page.locator("#jobs tbody tr").first).to_be_visible()
    expect(page.locator('#jobs tbody tr:not([data-status="completed"]):not(.empty)')).to_have_count(0)
    page.locator("#filter-status").select_option("")
    page.locator("#filter-type").select_option("hello_world")
    expect(page.locator("#jobs tbody tr[data-job-id]").first).to_be_visible()

    page.locator("#filter-dead-letter-status").select_option("")
    requeued = page.locator('#dead-letters tbody tr[data-status="requeued"]')
    expect(requeued).to_have_count(1, timeout=WAIT_MS)
    expect(requeued.locator("td.reason")).to_contain_text("requeued")
    expect(requeued.locator('button[data-action="requeue"]')).to_have_count(0)

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000

    page.locator('#jobs tr[data-status="failed"] a.job-link').first.click()
    expect(page.locator("#job-summary")).to_have_attribute("data-status", "failed", timeout=WAIT_MS)
    expect(page.locator("#tasks tbody tr").first).to_contain_text("fails on purpose")
    expect(page.locator("#tasks tbody tr .attempts").first).to_have_text("2")
    page.screenshot(path=str(ARTIFACTS / "dashboard-job.png"), full_page=True)


def test_the_function_key_is_never_logged(host: RunningHost) -> None:
    assert KEY not in Path(host.log_path).read_text(errors="replace")
