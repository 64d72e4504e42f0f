"""The local host's HTTP trigger server, in-process on a free port (no storage needed)."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import statistics
import time
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest

from local_host.function_index import index_functions
from local_host.http_server import FunctionKeyPolicy, FunctionsHttpHost
from local_host.invoker import Invoker
from local_host.json_logging import JsonLineFormatter


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def build_app() -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="items/{item_id:int}/{name?}", methods=["GET", "POST"])
    def echo(req: func.HttpRequest) -> func.HttpResponse:
        payload = {
            "method": req.method,
            "url": req.url,
            "route": dict(req.route_params),
            "params": dict(req.params),
            "body": req.get_body().decode(),
            "header": req.headers.get("x-test"),
        }
        return func.HttpResponse(json.dumps(payload), mimetype="application/json", headers={"X-Echo": "1"})

    @app.route(route="cookies")
    def cookies(req: func.HttpRequest) -> func.HttpResponse:
        response = func.HttpResponse("hi", status_code=201)
        response.headers.add_header("Set-Cookie", "a=1")
        response.headers.add_header("Set-Cookie", "b=2")
        return response

    @app.route(route="text")
    def text(req: func.HttpRequest) -> str:
        return "plain"

    @app.route(route="nothing")
    def nothing(req: func.HttpRequest) -> None:
        return None

    @app.route(route="boom")
    def boom(req: func.HttpRequest) -> func.HttpResponse:
        raise RuntimeError("boom")

    @app.route(route="secret", auth_level=func.AuthLevel.FUNCTION)
    def secret(req: func.HttpRequest) -> str:
        return "secret"

    @app.route(route="admin-only", auth_level=func.AuthLevel.ADMIN)
    def admin_only(req: func.HttpRequest) -> str:
        return "admin"

    return app


def start_host(port: int, environ: dict[str, str]) -> FunctionsHttpHost:
    invoker = Invoker(function_timeout=None, send_messages=lambda o, m: None, on_function_timeout=lambda i: None)
    specs = index_functions(build_app(), {})
    host = FunctionsHttpHost(specs, host="127.0.0.1", port=port, route_prefix="api", invoker=invoker, environ=environ)
    host.start()
    return host


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    port = free_port()
    host = start_host(port, {"LOCAL_HOST_REQUIRE_FUNCTION_KEY": "true", "LOCAL_HOST_FUNCTION_KEY": "k1"})
    yield port
    host.stop()


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], bytes, http.client.HTTPResponse]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), data, response


def test_route_params_query_headers_and_body(port: int) -> None:
    status, headers, data, _ = call(port, "POST", "/api/items/42/bob?x=1&x=2&y=", b"payload", {"X-Test": "t"})
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Echo"] == "1"
    payload = json.loads(data)
    assert payload["method"] == "POST"
    assert payload["url"] == f"http://127.0.0.1:{port}/api/items/42/bob?x=1&x=2&y="
    assert payload["route"] == {"item_id": "42", "name": "bob"}
    assert payload["params"] == {"x": "1", "y": ""}
    assert payload["body"] == "payload" and payload["header"] == "t"


def test_chunked_request_body(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request(
        "POST",
        "/api/items/1",
        body=iter([b"chunk-one ", b"chunk-two"]),
        encode_chunked=True,
        headers={"Transfer-Encoding": "chunked"},
    )
    response = connection.getresponse()
    assert response.status == 200
    assert json.loads(response.read())["body"] == "chunk-one chunk-two"
    # the connection stays usable (keep-alive) after a chunked request
    connection.request("GET", "/api/items/2")
    assert json.loads(connection.getresponse().read())["route"] == {"item_id": "2"}
    connection.close()


def test_not_found_and_method_not_allowed_are_json(port: int) -> None:
    for path in ("/api/items/abc", "/api/unknown", "/items/1", "/api"):
        status, headers, data, _ = call(port, "GET", path)
        assert status == 404, path
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(data) == {"error": "not found"}
    status, headers, data, _ = call(port, "DELETE", "/api/items/1")
    assert status == 405 and headers["Allow"] == "GET, POST"
    assert json.loads(data) == {"error": "method not allowed"}


def test_multiple_set_cookie_headers_and_status(port: int) -> None:
    status, _, data, response = call(port, "GET", "/api/cookies")
    assert status == 201 and data == b"hi"
    assert response.msg.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert response.getheader("Content-Type") == "text/plain; charset=utf-8"


def test_string_return_and_none_return(port: int) -> None:
    status, headers, data, _ = call(port, "GET", "/api/text")
    assert (status, data) == (200, b"plain")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    status, _, data, _ = call(port, "GET", "/api/nothing")
    assert status == 500 and json.loads(data) == {"error": "internal server error"}


def test_exception_is_a_json_500(port: int, caplog: pytest.LogCaptureFixture) -> None:
    status, _, data, _ = call(port, "GET", "/api/boom")
    assert status == 500 and json.loads(data) == {"error": "internal server error"}
    assert "RuntimeError: boom" in caplog.text


def test_function_key_required_for_function_and_admin_levels(port: int) -> None:
    assert call(port, "GET", "/api/secret")[0] == 401
    assert call(port, "GET", "/api/admin-only")[0] == 401
    assert call(port, "GET", "/api/secret", headers={"x-functions-key": "wrong"})[0] == 401
    assert call(port, "GET", "/api/secret", headers={"x-functions-key": "k1"})[0] == 200
    assert call(port, "GET", "/api/admin-only?code=k1")[0] == 200
    assert call(port, "GET", "/api/text")[0] == 200  # anonymous


def test_two_servers_share_a_port() -> None:
    port = free_port()
    first = start_host(port, {})
    second = start_host(port, {})
    try:
        assert call(port, "GET", "/api/secret")[0] == 200  # keys not checked by default
    finally:
        first.stop()
        second.stop()


def test_function_key_policy_defaults_off() -> None:
    assert not FunctionKeyPolicy({}).required
    assert not FunctionKeyPolicy({"LOCAL_HOST_REQUIRE_FUNCTION_KEY": "false"}).required
    with pytest.raises(ValueError):
        FunctionKeyPolicy({"LOCAL_HOST_REQUIRE_FUNCTION_KEY": "1"})


def test_keep_alive_requests_are_not_stalled_by_delayed_ack(port: int) -> None:
    """Headers and body written separately met Nagle + delayed ACK: ~44 ms per request on a reused
    connection. A correctness bound for that stall, not a benchmark."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        durations = []
        for index in range(50):
            started = time.perf_counter()
            if index % 2:
                connection.request("POST", "/api/items/7", body=b"x" * 300)
            else:
                connection.request("GET", "/api/text")
            response = connection.getresponse()
            assert response.status == 200 and response.read()
            durations.append(time.perf_counter() - started)
    finally:
        connection.close()
    assert statistics.median(durations) < 0.015, sorted(durations)


def test_unknown_methods_get_404_or_405_like_the_functions_host(port: int) -> None:
    status, headers, data, _ = call(port, "PROPFIND", "/api/items/1")
    assert status == 405 and headers["Allow"] == "GET, POST"
    assert json.loads(data) == {"error": "method not allowed"}
    assert call(port, "PROPFIND", "/api/unknown")[0] == 404
    assert call(port, "BREW", "/nowhere")[0] == 404
    status, _, data, _ = call(port, "PURGE", "/api/text")  # a route without methods takes any method
    assert (status, data) == (200, b"plain")


SECRET_KEY = "k-9f3Zq7LxW2-secret"


def test_function_keys_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = free_port()
    host = start_host(port, {"LOCAL_HOST_REQUIRE_FUNCTION_KEY": "1", "LOCAL_HOST_FUNCTION_KEY": SECRET_KEY})
    try:
        assert call(port, "GET", f"/api/boom?code={SECRET_KEY}")[0] == 500  # keyed, and the function fails
        assert call(port, "GET", "/api/boom", headers={"x-functions-key": SECRET_KEY})[0] == 500
        assert call(port, "GET", f"/api/secret?x=1&code={SECRET_KEY}-wrong")[0] == 401
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:  # a request line the server rejects
            sock.sendall(f"GET /api/boom?code={SECRET_KEY} extra HTTP/1.1\r\n\r\n".encode())
            assert sock.recv(65536).startswith(b"HTTP/1.1 400")
    finally:
        host.stop()
    formatter = JsonLineFormatter(0)
    lines = [formatter.format(record) for record in caplog.records]
    assert any("/api/boom" in line for line in lines)  # the route path is logged ...
    assert any("RuntimeError: boom" in line for line in lines)
    assert not [line for line in lines if SECRET_KEY in line]  # ... never the key
