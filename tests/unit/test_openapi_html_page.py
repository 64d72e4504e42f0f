"""The /api/docs page (services/openapi/html_page.py): every operation of the document, escaped."""

from __future__ import annotations

from services.openapi.html_page import render_docs_page

DOCUMENT = {
    "openapi": "3.1.0",
    "info": {"title": "geoetl <API>", "version": "0.1.0"},
    "servers": [{"url": "/api"}],
    "paths": {
        "/stac/search": {
            "get": {
                "operationId": "stac_search",
                "summary": "Item search",
                "tags": ["stac"],
                "parameters": [{"name": "filter-lang", "in": "query", "description": "cql2-text <b>or</b> json"}],
                "responses": {"200": {"description": "A page"}, "400": {"description": "Bad & wrong"}},
            },
            "post": {"operationId": "stac_search_post", "summary": "<script>alert(1)</script>", "tags": ["stac"]},
        },
        "/health": {"get": {"operationId": "health", "summary": "Readiness", "tags": ["health"]}},
    },
}


def test_the_page_lists_every_operation_grouped_by_tag_and_escapes_all_text() -> None:
    page = render_docs_page(DOCUMENT)
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "geoetl &lt;API&gt;" in page
    assert "cql2-text &lt;b&gt;or&lt;/b&gt; json" in page and "Bad &amp; wrong" in page
    assert page.index("<h2>stac</h2>") < page.index("/stac/search") < page.index("<h2>health</h2>")
    assert page.count('<span class="method">') == 3 and '<section id="stac_search_post">' in page
