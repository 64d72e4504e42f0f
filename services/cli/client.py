"""A small JSON client of the geoetl HTTP API (standard library only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

DEFAULT_URL = "http://127.0.0.1:7071"
DEFAULT_TIMEOUT_SECONDS = 30.0


@dataclass
class ApiError(Exception):
    """An HTTP error answer (``status`` ≥ 400) or no answer at all (``status`` 0)."""

    status: int
    message: str
    details: Any = None
    body: Any = None

    def __str__(self) -> str:
        text = self.message if self.status == 0 else f"HTTP {self.status}: {self.message}"
        if isinstance(self.details, list):
            fields = [f"{d.get('field')}: {d.get('message')}" for d in self.details if isinstance(d, dict)]
            if fields:
                text += " (" + "; ".join(fields) + ")"
        return text


def api_base(url: str) -> str:
    """The API root of a host URL: ``http://host:7071`` and ``http://host:7071/api`` both give ``…/api``."""
    base = url.rstrip("/")
    return base if base.endswith("/api") else f"{base}/api"


def quoted(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


class ApiClient:
    def __init__(self, url: str = DEFAULT_URL, key: str | None = None, timeout: float = DEFAULT_TIMEOUT_SECONDS):
        self.base = api_base(url)
        self._key = key or None
        self._timeout = timeout

    def request(
        self, method: str, path: str, body: Any = None, params: dict[str, Any] | None = None
    ) -> tuple[int, Any]:
        """(status, decoded JSON or None). HTTP errors raise ``ApiError`` with the server's message."""
        query = {k: v for k, v in (params or {}).items() if v is not None and v != ""}
        url = self.base + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise ApiError(0, f"not an http(s) URL: {self.base}")
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - scheme checked above
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self._key:
            req.add_header("x-functions-key", self._key)
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:  # noqa: S310 - scheme checked above
                return resp.status, _decode(resp.read())
        except urllib.error.HTTPError as err:
            payload = _decode(err.read())
            message = payload.get("error") if isinstance(payload, dict) else None
            details = payload.get("details") if isinstance(payload, dict) else None
            raise ApiError(err.code, str(message or err.reason or "request failed"), details, payload) from err
        except (urllib.error.URLError, ConnectionError, TimeoutError) as err:
            reason = getattr(err, "reason", err)
            raise ApiError(0, f"cannot reach {self.base}: {reason}") from err

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)[1]

    def post(self, path: str, body: Any = None) -> Any:
        return self.request("POST", path, body)[1]

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)[1]

    # --- the API --------------------------------------------------------------------------------

    def submit(self, job_type: str, parameters: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.post(f"/jobs/{quoted(job_type)}", parameters)
        return result

    def job(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.get(f"/jobs/{quoted(job_id)}")
        return result

    def jobs(self, *, status: str | None, job_type: str | None, limit: int | None) -> dict[str, Any]:
        result: dict[str, Any] = self.get("/jobs", status=status, job_type=job_type, limit=limit)
        return result

    def tasks(
        self, job_id: str, *, stage: int | None, status: str | None, limit: int | None, cursor: str | None = None
    ) -> dict[str, Any]:
        params = {"stage": stage, "status": status, "limit": limit, "cursor": cursor}
        result: dict[str, Any] = self.get(f"/jobs/{quoted(job_id)}/tasks", **params)
        return result

    def cancel(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.post(f"/jobs/{quoted(job_id)}/cancel")
        return result

    def retry(self, job_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self.post(f"/jobs/{quoted(job_id)}/retry")
        return result

    def queues(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/queues")["queues"]
        return result

    def dead_letters(self, *, status: str | None, limit: int | None) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/dead-letters", status=status, limit=limit)["dead_letters"]
        return result

    def requeue_dead_letter(self, dead_letter_id: int) -> dict[str, Any]:
        result: dict[str, Any] = self.post(f"/dead-letters/{dead_letter_id}/requeue")
        return result

    def delete_dead_letter(self, dead_letter_id: int) -> None:
        self.delete(f"/dead-letters/{dead_letter_id}")

    def poison_messages(self, queue: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get(f"/poison/{quoted(queue)}")["messages"]
        return result

    def requeue_poison(self, queue: str) -> dict[str, Any]:
        result: dict[str, Any] = self.post(f"/poison/{quoted(queue)}/requeue")
        return result

    def purge_poison(self, queue: str) -> dict[str, Any]:
        result: dict[str, Any] = self.delete(f"/poison/{quoted(queue)}")
        return result

    def health(self) -> tuple[bool, dict[str, Any]]:
        """(ready, report): a 503 answer is a report too (not ready), not an error."""
        try:
            return True, self.get("/health")
        except ApiError as err:
            if err.status == 503 and isinstance(err.body, dict) and "dependencies" in err.body:
                return False, err.body
            raise


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return {"error": raw.decode("utf-8", "replace")[:500]}
