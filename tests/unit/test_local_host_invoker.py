"""Invoking user functions: sync/async, output bindings, context, functionTimeout."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from local_host.app_settings import load_settings_into_environment
from local_host.function_index import FunctionSpec, QueueOutput, index_functions
from local_host.host_config import HostConfig
from local_host.invoker import Invocation, Invoker, default_sync_thread_count, sync_thread_count
from local_host.options import HostOptions
from local_host.worker import WorkerHost

ENV = {"AzureWebJobsStorage": "UseDevelopmentStorage=true"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def test_sync_function_runs_on_the_shared_thread_pool() -> None:
    invoker = make_invoker(Recorder())
    result = invoker.invoke(specs_of(app_with_functions())["sync_fn"], request(), reason="test")
    assert result.startswith("sync function-sync")
    assert result != f"sync {threading.current_thread().name}"
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


def test_thread_count_setting_and_default(tmp_path: Path) -> None:
    default = min(32, (os.cpu_count() or 1) + 4)
    assert default_sync_thread_count() == default
    assert sync_thread_count({}) == default
    assert sync_thread_count({"PYTHON_THREADPOOL_THREAD_COUNT": "2"}) == 2
    for invalid in ("0", "-3", "many", ""):  # the worker's validator rejects these and keeps the default
        assert sync_thread_count({"PYTHON_THREADPOOL_THREAD_COUNT": invalid}) == default
    settings = tmp_path / "local.settings.json"
    settings.write_text(json.dumps({"Values": {"PYTHON_THREADPOOL_THREAD_COUNT": "3"}}))
    environ: dict[str, str] = {}
    load_settings_into_environment(settings, environ)
    assert sync_thread_count(environ) == 3
    assert make_invoker(Recorder()).sync_threads == default


def test_worker_sizes_its_invoker_pool_from_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHON_THREADPOOL_THREAD_COUNT", "2")
    options = HostOptions(app_dir=Path.cwd(), port=free_port())
    worker = WorkerHost(options, 0, HostConfig(), specs=[])
    worker.build()
    assert worker.http is not None and worker.invoker is not None
    worker.http.server.server_close()
    assert worker.invoker.sync_threads == 2


def busy_app(probe: ConcurrencyProbe) -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="one")
    def one(req: func.HttpRequest) -> None:
        probe.run()

    @app.queue_trigger(arg_name="msg", queue_name="two", connection="AzureWebJobsStorage")
    def two(msg: Any) -> None:
        probe.run()

    @app.timer_trigger(arg_name="timer", schedule="0 */5 * * * *")
    def three(timer: Any) -> None:
        probe.run()

    return app


class ConcurrencyProbe:
    def __init__(self) -> None:
        self.running = 0
        self.max_running = 0
        self.calls = 0
        self.lock = threading.Lock()

    def run(self) -> None:
        with self.lock:
            self.running += 1
            self.calls += 1
            self.max_running = max(self.max_running, self.running)
        time.sleep(0.1)
        with self.lock:
            self.running -= 1


def test_sync_functions_of_a_worker_share_one_pool_of_the_configured_size() -> None:
    probe = ConcurrencyProbe()
    specs = list(specs_of(busy_app(probe)).values())
    threads = sync_thread_count({"PYTHON_THREADPOOL_THREAD_COUNT": "2"})
    invoker = Invoker(
        function_timeout=None,
        send_messages=Recorder().send,
        on_function_timeout=Recorder().on_timeout,
        sync_threads=threads,
    )
    callers = [  # three functions busy at once, several invocations of each (as HTTP/queue/timer callers would)
        threading.Thread(target=invoker.invoke, args=(spec, object()), kwargs={"reason": "t"})
        for spec in specs
        for _ in range(3)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert probe.calls == 9
    assert probe.max_running == 2
