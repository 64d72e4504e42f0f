"""One host instance: load the app, serve HTTP, listen to queues and timers, shut down gracefully."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import NoReturn

from azure.storage.blob import BlobServiceClient, LinearRetry

from local_host.app_settings import SettingsError, load_settings_into_environment
from local_host.function_index import (
    DEFAULT_CONNECTION,
    FunctionIndexError,
    FunctionSpec,
    QueueTrigger,
    TimerTrigger,
    describe_functions,
    index_functions,
    load_function_app,
)
from local_host.host_config import HostConfig, HostConfigError, load_host_config
from local_host.http_server import FunctionsHttpHost
from local_host.invoker import Invocation, Invoker, sync_thread_count
from local_host.json_logging import LinePrefixingStream, configure_logging
from local_host.options import HostOptions
from local_host.queue_listener import QueueListener
from local_host.queue_storage import (
    CONNECTION_TIMEOUT_SECONDS,
    READ_TIMEOUT_SECONDS,
    RETRY_BACKOFF_SECONDS,
    RETRY_TOTAL,
    OutputSender,
    QueueClients,
)
from local_host.timer_listener import TimerListener

logger = logging.getLogger("local_host.worker")

EXIT_STARTUP_FAILED = 1
EXIT_FUNCTION_TIMEOUT = 3
WORKER_INDEX_VARIABLE = "LOCAL_HOST_WORKER_INDEX"


def base_url(options: HostOptions, config: HostConfig) -> str:
    root = f"http://{options.host}:{options.port}"
    return f"{root}/{config.http.route_prefix}" if config.http.route_prefix else root


def _flush_telemetry() -> None:
    """Send what the app's OpenTelemetry exporters still buffer (only if the app configured them):
    the exit below skips their atexit hooks."""
    if "opentelemetry.sdk" not in sys.modules:
        return
    from opentelemetry import _logs, metrics, trace

    for provider in (trace.get_tracer_provider(), metrics.get_meter_provider(), _logs.get_logger_provider()):
        force_flush = getattr(provider, "force_flush", None)
        if callable(force_flush):
            with contextlib.suppress(Exception):  # exiting anyway
                force_flush(timeout_millis=2000)


def _flush_and_exit(code: int) -> NoReturn:
    _flush_telemetry()
    for stream in (sys.stdout, sys.stderr):
        finish = getattr(stream, "finish", None)
        with contextlib.suppress(Exception):  # exiting anyway
            finish() if finish else stream.flush()
    logging.shutdown()
    os._exit(code)  # skip joining pool threads that may still run a user function


@dataclass
class WorkerHost:
    options: HostOptions
    index: int
    config: HostConfig
    specs: list[FunctionSpec]
    stop_requested: threading.Event = field(default_factory=threading.Event)
    http: FunctionsHttpHost | None = None
    queue_listeners: list[QueueListener] = field(default_factory=list)
    timer_listeners: list[TimerListener] = field(default_factory=list)
    invoker: Invoker | None = None

    def build(self) -> None:
        clients = QueueClients()
        sender = OutputSender(clients, self.config.queues.message_encoding)
        self.invoker = Invoker(
            function_timeout=self.config.function_timeout,
            send_messages=sender,
            on_function_timeout=self._on_function_timeout,
            sync_threads=sync_thread_count(os.environ),  # local.settings.json Values are in os.environ by now
        )
        self.http = FunctionsHttpHost(
            self.specs,
            host=self.options.host,
            port=self.options.port,
            route_prefix=self.config.http.route_prefix,
            invoker=self.invoker,
        )
        for spec in self.specs:
            if isinstance(spec.trigger, QueueTrigger):
                listener = QueueListener(
                    spec,
                    self.config.queues,
                    lease_seconds=self.options.message_lease_seconds,
                    clients=clients,
                    invoker=self.invoker,
                )
                sender.watch(spec.trigger.queue_name, listener.wake)
                self.queue_listeners.append(listener)
        timers = [spec for spec in self.specs if isinstance(spec.trigger, TimerTrigger)]
        if timers:
            connection = os.environ.get(DEFAULT_CONNECTION)
            if not connection:
                raise FunctionIndexError(f"timer triggers need the {DEFAULT_CONNECTION} setting (for their locks)")
            service = BlobServiceClient.from_connection_string(
                connection,
                retry_policy=LinearRetry(backoff=RETRY_BACKOFF_SECONDS, retry_total=RETRY_TOTAL),
                connection_timeout=CONNECTION_TIMEOUT_SECONDS,
                read_timeout=READ_TIMEOUT_SECONDS,
            )
            self.timer_listeners = [TimerListener(spec, blob_service=service, invoker=self.invoker) for spec in timers]

    def start(self) -> None:
        assert self.http is not None
        self.http.start()
        for listener in self.queue_listeners:
            listener.start()
        for timer in self.timer_listeners:
            timer.start()

    def _on_function_timeout(self, invocation: Invocation) -> None:
        logger.error(
            "A function timeout has occurred (%s). Host is shutting down; the supervisor restarts it.",
            invocation.function_name,
            extra={"function": invocation.function_name, "invocation_id": invocation.id},
        )
        _flush_and_exit(EXIT_FUNCTION_TIMEOUT)

    def shutdown(self) -> bool:
        """Stop taking work, let in-flight invocations finish within the grace period; True if all did."""
        started = time.monotonic()
        deadline = started + max(0.0, self.options.grace_seconds - 0.5)
        logger.info("Worker %d stopping: draining in-flight invocations", self.index)
        if self.http is not None:
            self.http.stop()
        for listener in self.queue_listeners:
            listener.stop()
        for timer in self.timer_listeners:
            timer.stop()
        drained = all([listener.wait_idle(deadline) for listener in self.queue_listeners])
        for timer in self.timer_listeners:
            drained = timer.wait_idle(max(0.0, deadline - time.monotonic())) and drained
        drained = (self.invoker.wait_idle(deadline) if self.invoker else True) and drained
        for timer in self.timer_listeners:
            timer.release()
        if drained:
            logger.info("Worker %d stopped after %.1fs", self.index, time.monotonic() - started)
        else:
            logger.warning("Worker %d stopping with invocations still running after the grace period", self.index)
        return drained


def _load(options: HostOptions, index: int) -> tuple[HostConfig, list[FunctionSpec]]:
    load_settings_into_environment(options.settings_path, os.environ)
    configure_logging(index)  # again: LOG_LEVEL may come from the settings file
    config = load_host_config(options.app_dir)
    app = load_function_app(options.app_dir)
    return config, index_functions(app, os.environ)


def _watch_parent(parent_pid: int, stop: threading.Event) -> None:
    while not stop.wait(0.5):
        if os.getppid() != parent_pid:
            logger.warning("Supervisor (pid %d) is gone; stopping", parent_pid)
            stop.set()
            return


def _signal_ready(ready_fd: int | None) -> None:
    if ready_fd is None:
        return
    try:
        os.write(ready_fd, b"ready\n")
        os.close(ready_fd)
    except OSError:
        logger.warning("Could not signal readiness to the supervisor")


def _exit_at_once(signum: int, frame: FrameType | None) -> None:
    os._exit(0)  # still starting: nothing is in flight


def run_worker(options: HostOptions, index: int, *, ready_fd: int | None = None, parent_pid: int | None = None) -> int:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _exit_at_once)
    configure_logging(index)
    sys.stdout = LinePrefixingStream(sys.stdout, f"[worker {index}] ")
    os.environ[WORKER_INDEX_VARIABLE] = str(index)
    try:
        config, specs = _load(options, index)
        worker = WorkerHost(options, index, config, specs)
        worker.build()
    except (SettingsError, HostConfigError, FunctionIndexError, ValueError) as error:
        logger.error("Worker %d cannot start: %s", index, error)
        return EXIT_STARTUP_FAILED
    except OSError as error:
        logger.error("Worker %d cannot start: %s", index, error, exc_info=True)
        return EXIT_STARTUP_FAILED
    except Exception:
        logger.exception("Worker %d cannot start: loading the function app failed", index)
        return EXIT_STARTUP_FAILED
    try:
        worker.start()
    except Exception:
        logger.exception("Worker %d cannot start its listeners", index)
        return EXIT_STARTUP_FAILED
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop_handler(worker.stop_requested))
    if index == 0 or ready_fd is None:
        print(describe_functions(specs, base_url(options, config)), flush=True)
    threads = worker.invoker.sync_threads if worker.invoker else None
    logger.info(
        "Worker %d (pid %d) listening on %s; sync functions share %s threads",
        index,
        os.getpid(),
        base_url(options, config),
        threads,
        extra={"sync_threads": threads},
    )
    _signal_ready(ready_fd)
    if parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(parent_pid, worker.stop_requested), daemon=True).start()
    while not worker.stop_requested.wait(0.5):
        pass
    logger.info("Worker %d received a stop request", index)
    worker.shutdown()
    _flush_and_exit(0)


def _stop_handler(stop: threading.Event) -> Callable[[int, FrameType | None], None]:
    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()  # no logging here: a signal handler must not take the logging locks

    return handle
