"""Invoking user functions: sync/async, output bindings, context, functionTimeout."""

from __future__ import annotations

import threading
import time
from typing import Any

import azure.functions as func
import pytest

from local_host.function_index import FunctionSpec, QueueOutput, index_functions
from local_host.invoker import Invocation, Invoker

ENV = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}


def specs_of(app: func.FunctionApp) -> dict[str, FunctionSpec]:
    return {spec.name: spec for spec in index_functions(app, ENV)}


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, list[str | bytes]]] = []
        self.timeouts: list[Invocation] = []

    def send(self, output: QueueOutput, messages: list[str | bytes]) -> None:
        self.sent.append((output.queue_name, messages))

    def on_timeout(self, invocation: Invocation) -> None:
        self.timeouts.append(invocation)


def make_invoker(recorder: Recorder, timeout: float | None = None) -> Invoker:
    return Invoker(function_timeout=timeout, send_messages=recorder.send, on_function_timeout=recorder.on_timeout)


def app_with_functions() -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="sync")
    def sync_fn(req: func.HttpRequest) -> str:
        return f"sync {threading.current_thread().name}"

    @app.route(route="async")
    async def async_fn(req: func.HttpRequest, context: func.Context) -> str:
        return f"async {context.function_name} {context.invocation_id}"

    @app.queue_trigger(arg_name="msg", queue_name="inbox", connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name="outbox", connection="AzureWebJobsStorage")
    def fan_out(msg: Any, out: func.Out[list[str]]) -> None:
        out.set(["a", "b"])

    @app.queue_trigger(arg_name="msg", queue_name="inbox2", connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name="outbox", connection="AzureWebJobsStorage")
    def fails_after_set(msg: Any, out: func.Out[str]) -> None:
        out.set("never sent")
        raise ValueError("nope")

    @app.queue_trigger(arg_name="msg", queue_name="inbox3", connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="$return", queue_name="returned", connection="AzureWebJobsStorage")
    def returns_message(msg: Any) -> str:
        return "from return"

    @app.route(route="slow")
    def slow(req: func.HttpRequest) -> str:
        time.sleep(0.6)
        return "late"

    return app


def request() -> func.HttpRequest:
    return func.HttpRequest("GET", "http://h/api/x", body=b"")


def test_sync_function_runs_on_the_callers_thread() -> None:
    invoker = make_invoker(Recorder())
    result = invoker.invoke(specs_of(app_with_functions())["sync_fn"], request(), reason="test")
    assert result == f"sync {threading.current_thread().name}"
    assert invoker.active_count == 0


def test_async_function_gets_a_context() -> None:
    invoker = make_invoker(Recorder())
    result = invoker.invoke(specs_of(app_with_functions())["async_fn"], request(), reason="test")
    name, invocation_id = result.split()[1:]
    assert name == "async_fn" and len(invocation_id) == 36


def test_output_binding_sent_after_success_only() -> None:
    recorder = Recorder()
    invoker = make_invoker(recorder)
    specs = specs_of(app_with_functions())
    invoker.invoke(specs["fan_out"], object(), reason="test")
    assert recorder.sent == [("outbox", ["a", "b"])]
    with pytest.raises(ValueError):
        invoker.invoke(specs["fails_after_set"], object(), reason="test")
    assert recorder.sent == [("outbox", ["a", "b"])]


def test_return_value_output_binding() -> None:
    recorder = Recorder()
    result = make_invoker(recorder).invoke(specs_of(app_with_functions())["returns_message"], object(), reason="t")
    assert result == "from return"
    assert recorder.sent == [("returned", ["from return"])]


def test_function_timeout_releases_the_trigger_and_restarts_the_host() -> None:
    recorder = Recorder()
    released = threading.Event()
    invoker = make_invoker(recorder, timeout=0.2)
    with pytest.raises(RuntimeError, match="functionTimeout"):
        invoker.invoke(specs_of(app_with_functions())["slow"], request(), reason="test", on_timeout=released.set)
    assert released.is_set()
    assert [inv.function_name for inv in recorder.timeouts] == ["slow"]


def test_wait_idle() -> None:
    invoker = make_invoker(Recorder())
    spec = specs_of(app_with_functions())["slow"]
    thread = threading.Thread(target=invoker.invoke, args=(spec, request()), kwargs={"reason": "t"})
    thread.start()
    time.sleep(0.1)
    assert invoker.active_count == 1
    assert not invoker.wait_idle(time.monotonic() + 0.05)
    assert invoker.wait_idle(time.monotonic() + 5)
    thread.join()
