"""Webhook rules without services: SSRF address rules, URL form, redaction, signing, backoff,
settings, and the sender's connect-time check against a local receiver."""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from schemas.settings import Settings
from services.webhooks.delivery import DeliveryOptions
from services.webhooks.sender import WebhookSender
from services.webhooks.signing import WebhookSecretError, WebhookSigner
from services.webhooks.urls import (
    CallbackUrlError,
    address_refusal,
    check_callback_url,
    redact_url,
    split_callback_url,
)
from tests.support.webhook_receiver import Answer, running_receiver

SECRET = "whsec_" + base64.b64encode(b"unit-test-webhook-secret-0123456789").decode()


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("fd00:ec2::254", "private"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("100.64.0.1", "public"),  # shared address space (CGNAT): not global
        ("168.63.129.16", "Azure platform"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:169.254.169.254", "link-local"),
        ("64:ff9b::a00:1", "private"),  # NAT64 of 10.0.0.1
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
    ],
)
def test_non_public_addresses_are_refused(address: str, why: str) -> None:
    reason = address_refusal(address)
    assert reason is not None and why in reason, reason


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    assert address_refusal(address) is None


@pytest.mark.parametrize(
    ("url", "allow_http", "why"),
    [
        ("http://example.com/hook", False, "https"),
        ("ftp://example.com/hook", True, "http(s)"),
        ("https://user:pw@example.com/hook", False, "credentials"),
        ("https://example.com/hook#frag", False, "fragment"),
        ("https://example.com/a b", False, "spaces"),
        ("https://exämple.com/", False, "ASCII"),
        ("https:///path", False, "no host"),
        ("https://example.com:0/", False, "port 0"),
        ("https://example.com:99999/", False, "not a valid URL"),
        ("https://example.com/" + "x" * 2040, False, "2048"),
    ],
)
def test_malformed_callback_urls_are_refused(url: str, allow_http: bool, why: str) -> None:
    with pytest.raises(CallbackUrlError, match=None) as caught:
        split_callback_url(url, allow_http=allow_http)
    assert why in str(caught.value)


def test_every_resolved_address_is_checked() -> None:
    def resolve(host: str, port: int) -> list[str]:
        return {"mixed.test": ["93.184.216.34", "10.1.2.3"], "public.test": ["93.184.216.34"]}[host]

    check_callback_url("https://public.test/h", allow_http=False, allow_private=False, resolve=resolve)
    with pytest.raises(CallbackUrlError, match=r"'mixed.test' resolves to 10.1.2.3 is a private address"):
        check_callback_url("https://mixed.test/h", allow_http=False, allow_private=False, resolve=resolve)
    check_callback_url("https://mixed.test/h", allow_http=False, allow_private=True, resolve=resolve)
    with pytest.raises(CallbackUrlError, match="does not resolve"):
        check_callback_url("https://no-such-host.invalid/h", allow_http=False, allow_private=True)


def test_redaction_hides_the_query_and_credentials() -> None:
    assert redact_url("https://h.example:8443/p/q?token=abc&x=1") == "https://h.example:8443/p/q?redacted"
    assert redact_url("https://u:p@h.example/p") == "https://h.example/p"
    assert redact_url("http://[::1]:9/hook") == "http://[::1]:9/hook"


def test_signatures_verify_with_standardwebhooks_and_only_unchanged() -> None:
    signer = WebhookSigner(lambda: SECRET)
    body = '{"type":"job.completed"}'
    headers = signer.headers(signer.key(), "msg_1", body)
    assert Webhook(SECRET).verify(body, headers) == {"type": "job.completed"}
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace("completed", "failed"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, {**headers, "webhook-id": "msg_2"})
    old = signer.headers(signer.key(), "msg_1", body, now=datetime.now(UTC) - timedelta(minutes=10))
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(SECRET).verify(body, old)
    with pytest.raises(WebhookSecretError):
        WebhookSigner(lambda: "").key()


def test_backoff_schedule() -> None:
    options = DeliveryOptions((60, 300, 900, 1800, 3600), 10)
    assert options.max_attempts == 6
    assert [options.delay_after(n) for n in range(1, 7)] == [60, 300, 900, 1800, 3600, None]
    assert sum(options.retry_delays_seconds) >= 3600


def test_webhook_settings() -> None:
    base = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    s = Settings.model_validate(base)
    assert (s.webhook_queue, s.webhook_allow_http, s.webhook_allow_private_networks) == (
        "geospatial-webhooks", False, False
    )  # fmt: skip
    assert 1 + len(s.webhook_retry_delays_seconds) >= 5 and sum(s.webhook_retry_delays_seconds) >= 3600
    assert Settings.model_validate({**base, "WEBHOOK_RETRY_DELAYS_SECONDS": "0, 2.5"}).webhook_retry_delays_seconds == (
        0.0, 2.5
    )  # fmt: skip
    for bad in (
        {"WEBHOOK_RETRY_DELAYS_SECONDS": "-1"},
        {"WEBHOOK_RETRY_DELAYS_SECONDS": "700000"},
        {"WEBHOOK_SECRET": "not-a-whsec"},
        {"WEBHOOK_SECRET": "whsec_c2hvcnQ="},
        {"WEBHOOK_SECRET_NAME": "webhook-secret"},  # needs KEY_VAULT_URL
        {"WEBHOOK_QUEUE": "Bad_Queue"},
    ):
        with pytest.raises(ValidationError):
            Settings.model_validate({**base, **bad})


def test_sender_connects_only_to_checked_addresses_and_keeps_the_host_header() -> None:
    """A name that resolves to loopback at connect time (DNS rebinding) is refused before any byte
    is sent; allowed, the request goes to the resolved address with the URL's Host header."""
    with running_receiver() as receiver:
        receiver.default = Answer(204, b"")

        def rebinding(host: str, port: int) -> list[str]:
            assert host == "hooks.example.test"
            return ["127.0.0.1"]

        url = f"http://hooks.example.test:{receiver.port}/hook"
        strict = WebhookSender(allow_private=False, allow_http=True, timeout_seconds=2, resolve=rebinding)
        refused = strict.post(url, b"{}", {"webhook-id": "msg_x"})
        assert not refused.delivered and "127.0.0.1 is a loopback address" in (refused.error or "")
        assert receiver.requests == []
        lenient = WebhookSender(allow_private=True, allow_http=True, timeout_seconds=2, resolve=rebinding)
        ok = lenient.post(url, b"{}", {"webhook-id": "msg_x"})
        assert (ok.delivered, ok.status_code) == (True, 204)
        [request] = receiver.requests
        assert request.headers["host"] == f"hooks.example.test:{receiver.port}"
        assert request.headers["webhook-id"] == "msg_x"
        assert WebhookSender(allow_private=True, allow_http=False, timeout_seconds=2).post(url, b"{}", {}).error
        strict.close()
        lenient.close()


def test_sender_reads_a_bounded_part_of_the_answer() -> None:
    with running_receiver() as receiver:
        receiver.default = Answer(500, b"x" * (1024 * 1024))
        sender = WebhookSender(allow_private=True, allow_http=True, timeout_seconds=2)
        result = sender.post(receiver.url(), b"{}", {})
        sender.close()
    assert result.status_code == 500 and result.error == "HTTP 500: " + "x" * 200


def test_an_attempt_has_one_time_limit() -> None:
    with running_receiver() as receiver:
        receiver.default = Answer(200, b"x" * 30, drip=0.2)  # 6 s in all, each byte well within 1 s
        sender = WebhookSender(allow_private=True, allow_http=True, timeout_seconds=1.0)
        started = time.monotonic()
        result = sender.post(receiver.url(), b"{}", {})
        elapsed = time.monotonic() - started
        sender.close()
    assert not result.delivered and "timed out" in (result.error or "")
    assert elapsed < 2.5, elapsed


def test_a_receiver_not_listening_is_a_failed_attempt() -> None:
    from devstack.azurite import free_port

    sender = WebhookSender(allow_private=True, allow_http=True, timeout_seconds=2)
    result = sender.post(f"http://127.0.0.1:{free_port()}/hook", b"{}", {})
    sender.close()
    assert not result.delivered and result.status_code is None
    assert (result.error or "").startswith("could not connect"), result.error
