"""GET /api/docs: the OpenAPI document rendered as one human-readable HTML page (the STAC API's
``service-doc``), generated on the server from the same document as /api/openapi.json. Every text
taken from the document is HTML-escaped; the page has no script and loads nothing from elsewhere."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from typing import Any

METHODS = ("get", "post", "put", "patch", "delete")
STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:60rem;padding:0 1rem;color:#222}"
    "h2{margin-top:2rem;border-bottom:1px solid #ccc}section{margin:1rem 0 1.5rem}"
    ".method{display:inline-block;min-width:4.5rem;font-weight:bold;font-family:monospace}"
    "code{font-size:1rem}table{border-collapse:collapse;margin:.5rem 0}"
    "td,th{border:1px solid #ddd;padding:.2rem .5rem;text-align:left;vertical-align:top}"
)


def _parameters(parameters: list[Mapping[str, Any]]) -> str:
    if not parameters:
        return ""
    rows = "".join(
        "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>".format(
            escape(str(p.get("name", ""))),
            escape(str(p.get("in", ""))),
            "yes" if p.get("required") else "no",
            escape(str(p.get("description", ""))),
        )
        for p in parameters
    )
    return f"<table><tr><th>parameter</th><th>in</th><th>required</th><th>description</th></tr>{rows}</table>"


def _responses(responses: Mapping[str, Any]) -> str:
    items = "".join(
        f"<li><code>{escape(str(code))}</code> {escape(str((body or {}).get('description', '')))}</li>"
        for code, body in responses.items()
    )
    return f"<ul>{items}</ul>" if items else ""


def _operation(path: str, method: str, operation: Mapping[str, Any]) -> str:
    description = operation.get("description")
    return (
        f'<section id="{escape(str(operation.get("operationId", f"{method} {path}")))}">'
        f'<div><span class="method">{method.upper()}</span><code>{escape(path)}</code></div>'
        f"<p>{escape(str(operation.get('summary', '')))}</p>"
        + (f"<p>{escape(str(description))}</p>" if description else "")
        + _parameters(list(operation.get("parameters") or []))
        + _responses(operation.get("responses") or {})
        + "</section>"
    )


def render_docs_page(document: Mapping[str, Any]) -> str:
    """The page of an OpenAPI document: its operations grouped by their first tag."""
    info = document.get("info") or {}
    title = escape(str(info.get("title", "API")))
    base = escape(str(((document.get("servers") or [{}])[0]).get("url", "")))
    by_tag: dict[str, list[str]] = {}
    for path, item in (document.get("paths") or {}).items():
        for method in METHODS:
            operation = item.get(method)
            if isinstance(operation, Mapping):
                tag = str((operation.get("tags") or ["other"])[0])
                by_tag.setdefault(tag, []).append(_operation(str(path), method, operation))
    sections = "".join(f"<h2>{escape(tag)}</h2>{''.join(ops)}" for tag, ops in by_tag.items())
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{title}</title><style>{STYLE}</style></head><body>"
        f"<h1>{title}</h1><p>Version {escape(str(info.get('version', '')))}. Paths are relative to "
        f'<code>{base}</code>. Machine-readable: <a href="openapi.json">openapi.json</a> (OpenAPI '
        f"{escape(str(document.get('openapi', '')))}).</p>{sections}</body></html>"
    )
