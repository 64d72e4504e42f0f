"""Turning a FunctionApp's declared functions into the local host's typed specs."""

from __future__ import annotations

import azure.functions as func
import pytest

from local_host.function_index import (
    FunctionIndexError,
    HttpTrigger,
    QueueOutput,
    QueueTrigger,
    TimerTrigger,
    describe_functions,
    index_functions,
)

ENV = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "JOB_QUEUE": "Geospatial-Jobs", "TICK": "0 */5 * * * *"}


def sample_app() -> func.FunctionApp:
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

    @app.route(route="jobs/{job_id}", methods=["GET"])
    def get_job(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("x")

    @app.function_name("anonymous_ping")
    @app.route(auth_level=func.AuthLevel.ANONYMOUS)
    async def ping(req: func.HttpRequest, context: func.Context) -> str:
        return "pong"

    @app.queue_trigger(arg_name="msg", queue_name="%JOB_QUEUE%", connection="AzureWebJobsStorage")
    @app.queue_output(arg_name="out", queue_name="results", connection="AzureWebJobsStorage")
    def on_job(msg: func.QueueMessage, out: func.Out[str]) -> None:
        pass

    @app.timer_trigger(arg_name="timer", schedule="%TICK%", run_on_startup=True)
    def tick(timer: func.TimerRequest) -> None:
        pass

    return app


def test_index_sample_app() -> None:
    specs = {spec.name: spec for spec in index_functions(sample_app(), ENV)}
    assert set(specs) == {"get_job", "anonymous_ping", "on_job", "tick"}

    http = specs["get_job"].trigger
    assert isinstance(http, HttpTrigger)
    assert http.param == "req" and http.methods == frozenset({"GET"}) and http.auth_level == "FUNCTION"
    assert http.route.template == "jobs/{job_id}"

    ping = specs["anonymous_ping"]
    assert isinstance(ping.trigger, HttpTrigger)
    assert ping.trigger.methods is None and ping.trigger.auth_level == "ANONYMOUS"
    assert ping.trigger.route.template == "anonymous_ping"  # route defaults to the function name
    assert ping.is_async and ping.wants_context

    queue = specs["on_job"]
    assert queue.trigger == QueueTrigger("msg", "geospatial-jobs", "AzureWebJobsStorage")
    assert queue.queue_outputs == (QueueOutput("out", "results", "AzureWebJobsStorage"),)
    assert not queue.is_async and not queue.wants_context

    timer = specs["tick"].trigger
    assert isinstance(timer, TimerTrigger)
    assert timer.schedule.expression == "0 */5 * * * *" and timer.run_on_startup and timer.use_monitor is None


def test_missing_placeholder_setting_is_a_startup_error() -> None:
    with pytest.raises(FunctionIndexError, match="JOB_QUEUE"):
        index_functions(sample_app(), {"AzureWebJobsStorage": "x", "TICK": "0 * * * * *"})


def test_missing_connection_setting_is_a_startup_error() -> None:
    with pytest.raises(FunctionIndexError, match="AzureWebJobsStorage"):
        index_functions(sample_app(), {"JOB_QUEUE": "q-jobs", "TICK": "0 * * * * *"})


def test_invalid_schedule_is_a_startup_error() -> None:
    with pytest.raises(FunctionIndexError, match="tick"):
        index_functions(sample_app(), {**ENV, "TICK": "*/5 * * * *"})


def test_unsupported_binding_is_a_startup_error() -> None:
    app = func.FunctionApp()

    @app.route(route="r")
    @app.blob_input(arg_name="blob", path="c/b", connection="AzureWebJobsStorage")
    def reads_blob(req: func.HttpRequest, blob: bytes) -> str:
        return "x"

    with pytest.raises(FunctionIndexError, match="not supported"):
        index_functions(app, ENV)


def test_undeclared_parameter_is_a_startup_error() -> None:
    app = func.FunctionApp()

    @app.route(route="r")
    def needs_more(req: func.HttpRequest, other: str) -> str:
        return "x"

    with pytest.raises(FunctionIndexError, match="other"):
        index_functions(app, ENV)


def test_invalid_queue_name_is_a_startup_error() -> None:
    with pytest.raises(FunctionIndexError, match="valid storage queue name"):
        index_functions(sample_app(), {**ENV, "JOB_QUEUE": "bad_name"})


def test_describe_functions_lists_like_core_tools() -> None:
    text = describe_functions(index_functions(sample_app(), ENV), "http://127.0.0.1:7071/api")
    assert "\tget_job: [GET] http://127.0.0.1:7071/api/jobs/{job_id}" in text
    assert "\ton_job: queueTrigger (geospatial-jobs)" in text
    assert "\ttick: timerTrigger (0 */5 * * * *)" in text
