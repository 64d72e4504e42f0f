"""The operator dashboard: one server-rendered HTML page plus static JS/CSS, no build step, no CDN.

The page carries no data: its scripts fetch the JSON API with the function key taken from the
page's own ``?code=`` (sent as ``x-functions-key``) and render everything through ``textContent``.
Only ``api_base`` and an optional job id reach the HTML, escaped.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
STATIC_DIR = PACKAGE_DIR / "static"
TEMPLATE = PACKAGE_DIR / "page.html"

CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
_ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(js|css|svg)$")
_JOB_ID = re.compile(r"^[0-9a-f]{64}$")

# Self only: scripts, styles, images and fetches come from this app; nothing inline, no frames.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def security_headers(*, cache_seconds: int = 0) -> dict[str, str]:
    return {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        # The page URL holds ?code=<function key>: never send it on as a Referer.
        "Referrer-Policy": "no-referrer",
        "Cache-Control": f"private, max-age={cache_seconds}" if cache_seconds else "no-store",
    }


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


@cache
def _assets() -> dict[str, Asset]:
    """Every servable file, read once: only names listed here are served (no paths, no traversal)."""
    found: dict[str, Asset] = {}
    for path in sorted(STATIC_DIR.iterdir()):
        if path.is_file() and _ASSET_NAME.match(path.name):
            found[path.name] = Asset(path.read_bytes(), CONTENT_TYPES[path.suffix])
    return found


def static_asset(name: str) -> Asset | None:
    return _assets().get(name)


def asset_names() -> list[str]:
    return list(_assets())


def api_base_for(path: str) -> str:
    """The API's route prefix as seen by the browser: the request path up to ``/dashboard``."""
    index = path.lower().find("/dashboard")
    prefix = path[:index] if index >= 0 else "/api"
    return prefix.rstrip("/")


def valid_job_id(job_id: str | None) -> str | None:
    return job_id if job_id and _JOB_ID.match(job_id) else None


@cache
def _template() -> str:
    return TEMPLATE.read_text(encoding="utf-8")


def render_page(api_base: str, job_id: str | None = None) -> str:
    """The dashboard page; every value placed into it is HTML-escaped."""
    values = {
        "api_base": html.escape(api_base, quote=True),
        "job_id": html.escape(valid_job_id(job_id) or "", quote=True),
    }
    return re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], _template())
