"""Caller keys of the submission limit (never the key itself), the 429 answer, and the settings."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from schemas.errors import RateLimitedError
from schemas.settings import Settings
from services.rate_limits import ANONYMOUS, SubmissionLimiter, caller_key, client_ip
from triggers.http_responses import error_response, status_code_for

KEY = "Yft7x2TbMbDXWgal7zD_908xC2uVovxoT7EOSYhM7ZJxAzFuTz5_vQ=="


def test_function_key_header_is_hashed_never_kept() -> None:
    got = caller_key({"x-functions-key": KEY}, {})
    assert got == f"key:{hashlib.sha256(KEY.encode()).hexdigest()[:32]}"
    assert KEY not in got and KEY[:8] not in got


def test_code_query_parameter_is_the_same_caller_as_the_header() -> None:
    assert caller_key({}, {"code": KEY}) == caller_key({"X-Functions-Key": KEY}, {})
    assert caller_key({"x-functions-key": KEY}, {"code": "other"}) == caller_key({"x-functions-key": KEY}, {})


def test_different_keys_are_different_callers() -> None:
    assert caller_key({"x-functions-key": KEY}, {}) != caller_key({"x-functions-key": KEY + "x"}, {})


def test_easy_auth_principal_counts_without_a_key_and_is_hashed() -> None:
    headers = {
        "X-MS-CLIENT-PRINCIPAL-ID": "00000000-1111-2222-3333-444444444444",
        "X-MS-CLIENT-PRINCIPAL-IDP": "aad",
    }
    got = caller_key(headers, {})
    assert got.startswith("principal:") and "0000" not in got
    # With a key (checked by the host) the key decides: made-up principal headers mint no new bucket.
    keyed = caller_key({**headers, "x-functions-key": KEY}, {})
    assert keyed == caller_key({"x-functions-key": KEY}, {}) and keyed.startswith("key:") and KEY not in keyed
    other_idp = {**headers, "X-MS-CLIENT-PRINCIPAL-IDP": "github"}
    assert caller_key(other_idp, {}) != got, "the same id from another identity provider is another caller"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"client-ip": "203.0.113.7:51234"}, "ip:203.0.113.7"),
        ({"client-ip": "203.0.113.7", "x-forwarded-for": "198.51.100.1"}, "ip:203.0.113.7"),
        ({"X-Forwarded-For": "198.51.100.1:443, 10.0.0.1"}, "ip:198.51.100.1"),
        ({"x-forwarded-for": "[2001:db8:0:0::1]:443"}, "ip:2001:db8::1"),
        ({"x-forwarded-for": "2001:db8::1, 10.0.0.1"}, "ip:2001:db8::1"),
        ({"x-forwarded-for": "not-an-ip"}, ANONYMOUS),
        ({"client-ip": "garbage", "x-forwarded-for": "198.51.100.9"}, "ip:198.51.100.9"),
        ({}, ANONYMOUS),
        ({"x-functions-key": "  "}, ANONYMOUS),
    ],
)
def test_without_a_key_the_client_ip(headers: dict[str, str], expected: str) -> None:
    assert caller_key(headers, {}) == expected


def test_client_ip_parsing() -> None:
    assert client_ip("") is None
    assert client_ip("1.2.3.4:5:6") is None
    assert client_ip("::1") == "::1"


def test_caller_keys_are_short_and_plain_text() -> None:
    for headers, params in (
        ({"x-functions-key": "k" * 10_000}, {}),
        ({"x-ms-client-principal-id": "\ud800" + "p" * 5000}, {}),
        ({}, {"code": "\x00"}),
    ):
        got = caller_key(headers, params)
        assert len(got) <= 64 and got.isprintable() and got.isascii()


def test_rate_limited_error_is_429_with_retry_after() -> None:
    exc = RateLimitedError("too many submissions", retry_after=7)
    assert status_code_for(exc) == 429
    response = error_response(exc)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert json.loads(response.get_body()) == {"error": "too many submissions"}
    assert RateLimitedError("x", retry_after=0).retry_after == 1, "Retry-After is at least 1 s"


class _NoDatabase:
    def statements(self) -> Any:
        raise AssertionError("an unlimited limiter does not touch Postgres")


def test_zero_rate_needs_no_database() -> None:
    limiter = SubmissionLimiter(_NoDatabase(), rate_per_minute=0, burst=1)  # type: ignore[arg-type]
    assert not limiter.enabled
    for _ in range(100):
        limiter.take("anyone")


def test_settings_defaults_and_bounds() -> None:
    base = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    settings = Settings.model_validate(base)
    assert (settings.submit_rate_per_minute, settings.submit_burst) == (120, 60)
    custom = Settings.model_validate({**base, "SUBMIT_RATE_PER_MINUTE": "0", "SUBMIT_BURST": "5"})
    assert (custom.submit_rate_per_minute, custom.submit_burst) == (0, 5)
    with pytest.raises(ValueError):
        Settings.model_validate({**base, "SUBMIT_BURST": "0"})
    with pytest.raises(ValueError):
        Settings.model_validate({**base, "SUBMIT_RATE_PER_MINUTE": "-1"})


def test_the_rate_limit_sql_file_names_its_statements() -> None:
    from repositories.rate_limit_queries import rate_limit_queries

    assert set(rate_limit_queries()) == {"take_token", "prune_full_buckets"}
