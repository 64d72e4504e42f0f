"""A local HTTPS Key Vault (secrets only) that the real ``azure-keyvault-secrets`` client talks to.

It speaks what ``SecretClient.get_secret`` uses: ``GET /secrets/{name}/{version}?api-version=...``
(an empty version: the latest), with Key Vault's challenge-based auth: a request without a valid
bearer token gets 401 and ``WWW-Authenticate: Bearer authorization="https://login.microsoftonline.com/
<tenant>", resource="https://vault.azure.net"``; the client then asks its credential for a token of
that resource's scope and sends ``Authorization: Bearer <token>``. Secrets have versions (a new
``set_secret`` is a rotation), missing ones answer 404 with Key Vault's error body, names in
``forbidden`` answer 403, and ``mode`` makes the vault answer 503 ("unavailable") or drop every
connection without an answer ("drop").

TLS uses a throwaway CA made with ``cryptography``: clients trust it with the SDK's transport option
``connection_verify=server.ca_path``. The vault's host (127.0.0.1) is not under ``vault.azure.net``,
so clients also pass ``verify_challenge_resource=False`` (``client_options``).
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from azure.core.credentials import AccessToken

from tests.support.identity import private_ca_certificates

TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
VAULT_RESOURCE = "https://vault.azure.net"
VAULT_SCOPE = f"{VAULT_RESOURCE}/.default"

Mode = Literal["serve", "unavailable", "drop"]


# --- TLS -----------------------------------------------------------------------------------------


class FakeClock:
    """A settable clock for ``SecretStore`` (its cache ages by this, not by the wall clock)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the fake identity ---------------------------------------------------------------------------


class FakeTokenCredential:
    """A TokenCredential standing in for the identity provider: hands out ``token`` (changeable),
    valid ``lifetime`` seconds, and counts the calls per scope."""

    def __init__(self, token: str | None = None, lifetime: float = 3600.0) -> None:
        self.token = token or secrets.token_urlsafe(24)
        self.lifetime = lifetime
        self.calls: dict[str, int] = {}
        self.fail_with: Exception | None = None
        self._lock = threading.Lock()

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        with self._lock:
            for scope in scopes:
                self.calls[scope] = self.calls.get(scope, 0) + 1
            if self.fail_with is not None:
                raise self.fail_with
            return AccessToken(self.token, int(time.time() + self.lifetime))

    def close(self) -> None:
        pass


# --- the vault -----------------------------------------------------------------------------------


@dataclass
class _Version:
    version: str
    value: str
    created: int


@dataclass
class VaultState:
    """What the server holds and has seen; change it from the test while the server runs."""

    accepted_tokens: set[str]
    secrets: dict[str, list[_Version]] = field(default_factory=dict)
    forbidden: set[str] = field(default_factory=set)
    mode: Mode = "serve"
    challenges: int = 0  # 401 answers
    secret_reads: int = 0  # authorised GETs of a secret (found or not)
    requests: list[tuple[str, str, bool]] = field(default_factory=list)  # (method, path, authorised)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _VaultHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        self._send_json(status, {"error": {"code": code, "message": message}}, headers)

    def do_GET(self) -> None:
        state = self.server.state
        url = urlsplit(self.path)
        auth = self.headers.get("Authorization", "")
        authorised = auth.startswith("Bearer ") and auth.removeprefix("Bearer ") in state.accepted_tokens
        with state.lock:
            state.requests.append(("GET", url.path, authorised))
            mode = state.mode
        if mode == "drop":  # no answer: the server closes the connection
            self.close_connection = True
            return
        if mode == "unavailable":
            self._error(503, "ServiceUnavailable", "The service is temporarily unavailable.")
            return
        if "api-version" not in parse_qs(url.query):
            self._error(400, "BadParameter", "The api-version query parameter is required.")
            return
        if not authorised:
            with state.lock:
                state.challenges += 1
            challenge = (
                f'Bearer authorization="https://login.microsoftonline.com/{TENANT_ID}", resource="{VAULT_RESOURCE}"'
            )
            self._error(
                401,
                "Unauthorized",
                "AKV10000: Request is missing a Bearer or PoP token.",
                {"WWW-Authenticate": challenge},
            )
            return
        parts = [unquote(part) for part in url.path.strip("/").split("/")]
        if len(parts) not in (2, 3) or parts[0] != "secrets":
            self._error(404, "NotFound", "Not found.")
            return
        name, version = parts[1], parts[2] if len(parts) == 3 else ""
        self._secret(state, name, version)

    def _secret(self, state: VaultState, name: str, version: str) -> None:
        with state.lock:
            state.secret_reads += 1
            forbidden = name in state.forbidden
            versions = list(state.secrets.get(name, ()))
        if forbidden:
            self._send_json(
                403,
                {
                    "error": {
                        "code": "Forbidden",
                        "message": f"Caller is not authorized to perform action on resource. Secret: {name}",
                        "innererror": {"code": "ForbiddenByRbac"},
                    }
                },
            )
            return
        found = versions[-1] if versions and not version else next((v for v in versions if v.version == version), None)
        if found is None:
            shown = f"{name}/{version}" if version else name
            self._error(
                404,
                "SecretNotFound",
                f"A secret with (name/id) {shown} was not found in this key vault. If you recently deleted this "
                "secret you may be able to recover it using the correct recovery command.",
            )
            return
        self._send_json(
            200,
            {
                "value": found.value,
                "id": f"{self.server.vault_url}/secrets/{name}/{found.version}",
                "attributes": {
                    "enabled": True,
                    "created": found.created,
                    "updated": found.created,
                    "recoveryLevel": "Recoverable+Purgeable",
                    "recoverableDays": 90,
                },
                "tags": {},
            },
        )


class _VaultHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: VaultState, tls: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.state = state
        self._tls = tls
        self.vault_url = f"https://127.0.0.1:{self.server_address[1]}"

    def get_request(self) -> tuple[Any, Any]:
        sock, address = self.socket.accept()
        # The handshake happens on the handler's thread (first read), not on the accepting one.
        return self._tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), address


class KeyVaultServer:
    """A running local vault: ``vault_url``, ``ca_path``, ``client_options`` for the SDK, and its state."""

    def __init__(self, tls_dir: Path, credential: FakeTokenCredential) -> None:
        self.ca_path, cert_path, key_path = private_ca_certificates(tls_dir)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        self.credential = credential
        self.state = VaultState(accepted_tokens={credential.token})
        self._server = _VaultHTTPServer(self.state, context)
        self.vault_url = self._server.vault_url
        self._thread = threading.Thread(target=self._server.serve_forever, name="key-vault-server", daemon=True)
        self._thread.start()

    @property
    def client_options(self) -> dict[str, Any]:
        """SecretClient options to reach this vault: trust its CA; its host is not a vault.azure.net one;
        no retries, so an outage is reported at once."""
        return {"connection_verify": str(self.ca_path), "verify_challenge_resource": False, "retry_total": 0}

    def set_secret(self, name: str, value: str) -> str:
        """A new (latest) version of ``name``; returns its version id."""
        version = secrets.token_hex(16)
        with self.state.lock:
            self.state.secrets.setdefault(name, []).append(_Version(version, value, int(time.time())))
        return version

    def delete_secret(self, name: str) -> None:
        with self.state.lock:
            self.state.secrets.pop(name, None)

    def set_mode(self, mode: Mode) -> None:
        with self.state.lock:
            self.state.mode = mode

    @property
    def secret_reads(self) -> int:
        with self.state.lock:
            return self.state.secret_reads

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def key_vault_server(tls_dir: Path, credential: FakeTokenCredential | None = None) -> Iterator[KeyVaultServer]:
    server = KeyVaultServer(tls_dir, credential or FakeTokenCredential())
    try:
        yield server
    finally:
        server.stop()
