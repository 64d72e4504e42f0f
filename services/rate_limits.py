"""Per-caller submission limits: a token bucket per caller, kept in Postgres (table ``rate_limits``).

Every instance takes tokens from the same rows with one atomic statement
(repositories/sql/rate_limits.sql), so however many instances serve a burst, one caller is granted
at most SUBMIT_BURST submissions at once and SUBMIT_RATE_PER_MINUTE per minute after that. An empty
bucket raises ``RateLimitedError`` (429, Retry-After = seconds until the next token).

Who the caller is (``caller_key``). What Azure Functions hands a Python HTTP function is the request's
method, URL, headers, query, route values and body; ``azure.functions.HttpRequest`` carries no
claims. The host does know which function key authorised a request (claim
``http://schemas.microsoft.com/2017/07/functions/claims/keyid`` on its ClaimsPrincipal; undocumented,
MicrosoftDocs/azure-docs#60198), but the Python worker does not expose it, so the key's *name* is not
available. In order:

1. The function key presented (``x-functions-key`` header, else the ``code`` query parameter): a
   SHA-256 prefix of it; the key itself is never stored or logged. Function keys are long random
   strings, so the prefix cannot be turned back into a key. The host has checked the key before the
   function runs, so a caller cannot choose it; it comes first for that reason.
2. ``X-MS-CLIENT-PRINCIPAL-ID`` (with ``-IDP``), only when no key was presented: set by App Service
   authentication (Easy Auth); App Service does not let external requests set these headers when
   it is enabled (learn.microsoft.com, "Work with user identities in Azure App Service
   authentication"). Not first, so that a key holder cannot mint fresh buckets by sending made-up
   principal headers where authentication is off. Stored hashed (no PII at rest).
3. No key (anonymous routes, or the local host without LOCAL_HOST_REQUIRE_FUNCTION_KEY): the client
   IP. App Service's front end sets ``client-ip`` and overwrites any value a client sent
   (Azure/app-service-linux-docs, "Headers on Azure App Service"); otherwise the first hop of
   ``X-Forwarded-For`` (``ip:port`` as Azure's front ends write it; a client can put its own first
   hop there, so behind other proxies it is only as good as they are). Neither: ``anonymous``.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import threading
import time
from collections.abc import Callable, Mapping

from repositories.database import Database
from repositories.rate_limit_queries import RateLimitQueries
from schemas.errors import RateLimitedError

PRINCIPAL_ID_HEADER = "x-ms-client-principal-id"
PRINCIPAL_IDP_HEADER = "x-ms-client-principal-idp"
FUNCTION_KEY_HEADER = "x-functions-key"
FUNCTION_KEY_QUERY = "code"
CLIENT_IP_HEADER = "client-ip"
FORWARDED_FOR_HEADER = "x-forwarded-for"
ANONYMOUS = "anonymous"
_DIGEST_CHARS = 32  # hex characters of SHA-256 kept (128 bits)
PRUNE_EVERY_SECONDS = 60.0  # each process deletes full (idle) buckets at most this often


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_CHARS]


def _first(values: Mapping[str, str], name: str) -> str:
    """The value of ``name`` (case-insensitive), stripped; empty when absent."""
    for key, value in values.items():
        if key.lower() == name:
            return (value or "").strip()
    return ""


def client_ip(text: str) -> str | None:
    """The address in one hop of ``client-ip`` / ``X-Forwarded-For`` (``ip``, ``ip:port``,
    ``[v6]:port``), normalised; None when it is not an IP address."""
    hop = text.split(",", 1)[0].strip()
    if hop.startswith("["):  # [v6]:port
        hop = hop[1:].split("]", 1)[0]
    elif hop.count(":") == 1:  # v4:port
        hop = hop.split(":", 1)[0]
    try:
        return ipaddress.ip_address(hop).compressed
    except ValueError:
        return None


def caller_key(headers: Mapping[str, str], params: Mapping[str, str]) -> str:
    """Whose budget a request spends: ``key:<hash>``, ``principal:<hash>``, ``ip:<address>`` or
    ``anonymous`` (see the module's docstring). Never contains a key or a principal's id."""
    key = _first(headers, FUNCTION_KEY_HEADER) or _first(params, FUNCTION_KEY_QUERY)
    if key:
        return f"key:{_digest(key)}"
    principal = _first(headers, PRINCIPAL_ID_HEADER)
    if principal:
        return f"principal:{_digest(_first(headers, PRINCIPAL_IDP_HEADER), principal)}"
    for header in (CLIENT_IP_HEADER, FORWARDED_FOR_HEADER):
        address = client_ip(_first(headers, header))
        if address is not None:
            return f"ip:{address}"
    return ANONYMOUS


class SubmissionLimiter:
    """Takes one token of the caller's bucket per submission, or raises ``RateLimitedError``.
    ``rate_per_minute`` 0: unlimited (no Postgres round trip)."""

    def __init__(
        self,
        db: Database,
        *,
        rate_per_minute: float,
        burst: int,
        prune_every_seconds: float = PRUNE_EVERY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_minute < 0 or burst < 1:
            raise ValueError("rate_per_minute must be >= 0 and burst >= 1")
        self._db = db
        self.rate_per_minute = rate_per_minute
        self.burst = burst
        self._prune_every = prune_every_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._next_prune = clock()

    @property
    def enabled(self) -> bool:
        return self.rate_per_minute > 0

    def _prune_due(self) -> bool:
        with self._lock:
            now = self._clock()
            if now < self._next_prune:
                return False
            self._next_prune = now + self._prune_every
            return True

    def take(self, caller: str) -> None:
        if not self.enabled:
            return
        per_second = self.rate_per_minute / 60.0
        with self._db.statements() as repo:
            queries = RateLimitQueries.within(repo)
            result = queries.take_token(caller, per_second=per_second, burst=self.burst)
            if self._prune_due():
                # A bucket idle for burst / rate seconds is full again, the same as no row.
                queries.prune_full_buckets(self.burst / per_second + 1.0)
        if not result.granted:
            wait = max(1, math.ceil(result.retry_after_seconds))
            raise RateLimitedError(
                f"too many submissions: at most {self.burst} at once and {self.rate_per_minute:g} per minute "
                f"per caller; retry in {wait} s",
                retry_after=wait,
            )
