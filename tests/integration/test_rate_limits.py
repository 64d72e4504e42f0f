"""Per-caller submission limits against real Postgres: burst then 429, refill, isolation between
callers, no over-grant under concurrency (two pools, like two instances), 0 = unlimited, idle rows
pruned, and a 429 with Retry-After through the local host with a required function key."""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.postgres import PostgresDatabase
from repositories.database import Database
from schemas.errors import RateLimitedError
from schemas.settings import Settings
from services.rate_limits import SubmissionLimiter, caller_key
from tests.support.engine import make_settings, sql
from tests.support.host import start_host

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def settings(azurite_connection_string: str, postgres_database: PostgresDatabase) -> Settings:
    return make_settings(azurite_connection_string, postgres_database)


def _database(settings: Settings, max_size: int = 10) -> Database:
    return Database(settings.postgres_conninfo(), schema=settings.postgres_schema, min_size=1, max_size=max_size)


@pytest.fixture(scope="module")
def db(settings: Settings) -> Iterator[Database]:
    database = _database(settings, max_size=16)
    yield database
    database.close()


def caller() -> str:
    return f"test:{secrets.token_hex(6)}"


def take_all(limiter: SubmissionLimiter, key: str, attempts: int) -> tuple[int, list[RateLimitedError]]:
    granted, denied = 0, []
    for _ in range(attempts):
        try:
            limiter.take(key)
            granted += 1
        except RateLimitedError as exc:
            denied.append(exc)
    return granted, denied


def test_burst_then_429_with_retry_after(db: Database) -> None:
    limiter = SubmissionLimiter(db, rate_per_minute=6, burst=3)  # one token every 10 s
    key = caller()
    granted, denied = take_all(limiter, key, 5)
    assert granted == 3
    assert len(denied) == 2
    assert all(9 <= exc.retry_after <= 10 for exc in denied), [exc.retry_after for exc in denied]
    assert "at most 3 at once and 6 per minute" in denied[0].message


def test_refill_over_time(db: Database) -> None:
    limiter = SubmissionLimiter(db, rate_per_minute=120, burst=2)  # a token every 0.5 s
    key = caller()
    assert take_all(limiter, key, 2)[0] == 2
    with pytest.raises(RateLimitedError) as denied:
        limiter.take(key)
    assert denied.value.retry_after == 1, "about 0.5 s to the next token rounds up to 1 s"
    time.sleep(0.6)  # 1.2 tokens
    granted, rest = take_all(limiter, key, 2)
    assert granted == 1 and len(rest) == 1, "one token refilled"
    time.sleep(1.1)  # 2.2 more tokens, capped at the burst of 2
    granted, rest = take_all(limiter, key, 3)
    assert granted == 2 and len(rest) == 1, "refilled, but never past the burst"


def test_callers_have_their_own_buckets(db: Database) -> None:
    limiter = SubmissionLimiter(db, rate_per_minute=1, burst=2)
    first, second = caller(), caller()
    assert take_all(limiter, first, 4)[0] == 2
    assert take_all(limiter, second, 4)[0] == 2, "another caller's empty bucket does not touch this one"


def test_concurrent_submissions_never_over_grant(settings: Settings, db: Database) -> None:
    """8 threads x 25 submissions of one caller, spread over two pools (two "instances"), within a
    window where the refill adds well under one token: exactly the burst is granted."""
    other_instance = _database(settings, max_size=8)
    try:
        limiters = [
            SubmissionLimiter(database, rate_per_minute=0.6, burst=40)  # refill: 0.01 token per second
            for database in (db, other_instance)
        ]
        key = caller()
        threads_count, per_thread = 8, 25
        granted = [0] * threads_count
        barrier = threading.Barrier(threads_count)

        def run(index: int) -> None:
            barrier.wait()
            granted[index] = take_all(limiters[index % 2], key, per_thread)[0]

        threads = [threading.Thread(target=run, args=(i,)) for i in range(threads_count)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.monotonic() - started
    finally:
        other_instance.close()
    assert elapsed < 60, "the window stays far below one refilled token"
    assert sum(granted) == 40, granted
    [(tokens,)] = sql(settings, "SELECT tokens FROM rate_limits WHERE caller_key = %s", (key,))
    assert 0 <= tokens < 1


def test_zero_rate_is_unlimited(db: Database, settings: Settings) -> None:
    limiter = SubmissionLimiter(db, rate_per_minute=0, burst=1)
    key = caller()
    assert take_all(limiter, key, 50)[0] == 50
    assert sql(settings, "SELECT 1 FROM rate_limits WHERE caller_key = %s", (key,)) == [], "no Postgres row"


def test_full_idle_buckets_are_pruned(db: Database, settings: Settings) -> None:
    now = [0.0]
    limiter = SubmissionLimiter(db, rate_per_minute=60, burst=5, prune_every_seconds=60, clock=lambda: now[0])
    idle, busy = caller(), caller()
    limiter.take(idle)  # the first take prunes (due at start); nothing old yet
    sql_statement = "UPDATE rate_limits SET updated_at = now() - interval '10 seconds' WHERE caller_key = %s"
    with db.statements() as repo:
        repo._conn.execute(sql_statement, (idle,))  # 10 s idle: refilled past the burst of 5
    limiter.take(busy)  # not due yet: nothing deleted
    assert sql(settings, "SELECT 1 FROM rate_limits WHERE caller_key = %s", (idle,)) == [(1,)]
    now[0] = 61.0
    limiter.take(busy)
    assert sql(settings, "SELECT 1 FROM rate_limits WHERE caller_key = %s", (idle,)) == []
    assert sql(settings, "SELECT 1 FROM rate_limits WHERE caller_key = %s", (busy,)) == [(1,)]


# --- through the local host --------------------------------------------------------------------


def _post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read() or b"null")


def _get(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_429_with_retry_after_through_the_local_host(
    azurite_connection_string: str, postgres_database: PostgresDatabase, tmp_path: Path
) -> None:
    host_settings = make_settings(
        azurite_connection_string, postgres_database, submit_rate_per_minute=6, submit_burst=2
    )
    key = f"k-{secrets.token_urlsafe(24)}"
    extra_env = {"LOCAL_HOST_REQUIRE_FUNCTION_KEY": "true", "LOCAL_HOST_FUNCTION_KEY": key}
    host = start_host(host_settings, workers=1, log_path=tmp_path / "host.log", extra_env=extra_env)
    try:
        url = f"{host.base_url}/jobs/hello_world"
        headers = {"Content-Type": "application/json", "x-functions-key": key}
        body = json.dumps({"n": 1, "message": f"rate {secrets.token_hex(4)}"}).encode()
        first = _post(url, body, headers)
        assert first[0] == 202, first
        again = _post(url, body, headers)  # a resubmission is a submission: it costs a token too
        assert again[0] == 200 and again[2]["job_id"] == first[2]["job_id"], again
        status, response_headers, payload = _post(url, b"{not json", headers)
        assert status == 429, (status, payload)  # checked before the body is read
        retry_after = {k.lower(): v for k, v in response_headers.items()}["retry-after"]
        assert retry_after.isdigit() and 1 <= int(retry_after) <= 10, retry_after
        assert response_headers.get("Content-Type", "").startswith("application/json")
        assert set(payload) == {"error"} and "too many submissions" in payload["error"], payload
        assert _get(f"{host.base_url}/jobs/{first[2]['job_id']}", headers) == 200, "reads are not limited"
        rows = sql(host_settings, "SELECT caller_key FROM rate_limits")
        assert rows == [(caller_key({"x-functions-key": key}, {}),)]
        assert key not in rows[0][0] and rows[0][0].startswith("key:")
        log = (tmp_path / "host.log").read_text(errors="replace")
        assert key not in log, "the function key is never logged"
    finally:
        assert host.stop() == 0
