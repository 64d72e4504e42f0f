"""Standard Webhooks signatures: ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature``
(``v1,`` + base64 HMAC-SHA256 of ``{id}.{timestamp}.{body}`` under the secret), made with the
``standardwebhooks`` package, so receivers verify with any Standard Webhooks library.

The secret (``whsec_`` + base64) is WEBHOOK_SECRET, or the Key Vault secret WEBHOOK_SECRET_NAME,
read through the app's cached ``SecretStore`` on every attempt (a rotated secret is used once the
cache expires).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from standardwebhooks.webhooks import Webhook


class WebhookSecretError(RuntimeError):
    """No usable signing secret (none configured, or not a whsec_/base64 secret)."""


def check_secret(secret: str) -> Webhook:
    try:
        return Webhook(secret)
    except Exception as exc:  # binascii.Error, EmptyWebhookSecretError
        raise WebhookSecretError(f"the webhook secret is not a whsec_ base64 secret: {type(exc).__name__}") from exc


class WebhookSigner:
    """``secret``: a callable returning the current secret (settings value or Key Vault lookup)."""

    def __init__(self, secret: Callable[[], str]) -> None:
        self._secret = secret

    def key(self) -> Webhook:
        """The current secret as a signing key; WebhookSecretError, or the secret store's error
        (Key Vault unavailable), when there is none."""
        return check_secret(self._secret())

    @staticmethod
    def headers(key: Webhook, webhook_id: str, body: str, now: datetime | None = None) -> dict[str, str]:
        moment = (now or datetime.now(UTC)).astimezone(UTC)
        return {
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(moment.timestamp())),
            "webhook-signature": key.sign(webhook_id, moment, body),
        }
