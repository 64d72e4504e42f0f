"""Call user functions the way the Python worker does: sync ones on one thread pool of
PYTHON_THREADPOOL_THREAD_COUNT threads shared by every function of the process, async ones on one
shared event loop; fill output bindings; enforce host.json ``functionTimeout``."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func

from local_host.function_index import FunctionSpec, QueueOutput

logger = logging.getLogger("local_host.invoker")

SendMessages = Callable[[QueueOutput, list[str | bytes]], None]

THREAD_COUNT_SETTING = "PYTHON_THREADPOOL_THREAD_COUNT"


def default_sync_thread_count() -> int:
    """The worker leaves max_workers unset (Python 3.9+): ThreadPoolExecutor's own default."""
    cpus = getattr(os, "process_cpu_count", os.cpu_count)()  # what ThreadPoolExecutor counts on 3.13+
    return min(32, (cpus or 1) + 4)


def sync_thread_count(environ: Mapping[str, str]) -> int:
    """Threads for sync functions: the PYTHON_THREADPOOL_THREAD_COUNT app setting if it is an integer
    of at least 1 (the worker's validator), else the default, with the worker's warning."""
    raw = environ.get(THREAD_COUNT_SETTING)
    if raw is None:
        return default_sync_thread_count()
    try:
        value = int(raw)
    except ValueError:
        logger.warning("%s must be an integer; using the default", THREAD_COUNT_SETTING)
        return default_sync_thread_count()
    if value < 1:
        logger.warning("%s must be at least 1; using the default", THREAD_COUNT_SETTING)
        return default_sync_thread_count()
    return value


class FunctionTimeoutError(RuntimeError):
    pass


class OutputValue(func.Out[Any]):
    """What an ``func.Out[...]`` parameter is during an invocation."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


class _TraceContext:
    def __init__(self, trace_parent: str) -> None:
        self._parent = trace_parent

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RetryContext:
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> Any:
        return None


class InvocationContext(func.Context):
    """The ``context`` argument a function may declare."""

    _thread_local = threading.local

    def __init__(self, invocation_id: str, spec: FunctionSpec) -> None:
        self._invocation_id = invocation_id
        self._spec = spec
        trace = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
        self._trace = _TraceContext(trace)

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> type[threading.local]:
        return self._thread_local

    @property
    def function_name(self) -> str:
        return self._spec.name

    @property
    def function_directory(self) -> str:
        return self._spec.directory

    @property
    def trace_context(self) -> Any:
        return self._trace

    @property
    def retry_context(self) -> Any:
        return _RetryContext()


@dataclass
class Invocation:
    id: str
    function_name: str
    started: float
    on_timeout: Callable[[], None] | None = None
    timed_out: bool = field(default=False)


def output_messages(value: Any) -> list[str | bytes]:
    """Messages an output value stands for: a str/bytes, or a list of them; None sends nothing."""
    if value is None:
        return []
    if isinstance(value, str | bytes):
        return [value]
    if isinstance(value, list | tuple) and all(isinstance(item, str | bytes) for item in value):
        return list(value)
    raise TypeError(f"queue output must be str, bytes or a list of them, got {type(value).__name__}")


class Invoker:
    """Runs invocations; one per worker process. Callers (HTTP, queue, timer threads) wait for the
    result while a sync function waits for, then runs on, a thread of the shared pool."""

    def __init__(
        self,
        *,
        function_timeout: float | None,
        send_messages: SendMessages,
        on_function_timeout: Callable[[Invocation], None],
        sync_threads: int | None = None,
    ) -> None:
        self.sync_threads = sync_threads if sync_threads is not None else default_sync_thread_count()
        self._sync_pool = ThreadPoolExecutor(max_workers=self.sync_threads, thread_name_prefix="function-sync")
        self._function_timeout = function_timeout
        self._send_messages = send_messages
        self._on_function_timeout = on_function_timeout
        self._active: dict[str, Invocation] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name="function-event-loop", daemon=True).start()
        if function_timeout is not None:
            threading.Thread(target=self._watch_timeouts, name="function-timeout-watch", daemon=True).start()

    @property
    def active_count(self) -> int:
        with self._lock:
            return len(self._active)

    def wait_idle(self, deadline: float) -> bool:
        """Wait until no invocation runs or the monotonic ``deadline`` passes; True when idle."""
        with self._idle:
            while self._active:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._idle.wait(min(remaining, 0.5))
            return True

    def invoke(
        self,
        spec: FunctionSpec,
        trigger_value: Any,
        *,
        reason: str,
        on_timeout: Callable[[], None] | None = None,
        log_extra: dict[str, Any] | None = None,
    ) -> Any:
        """Run the function; returns its return value, raises what it raised."""
        invocation = Invocation(str(uuid.uuid4()), spec.name, time.monotonic(), on_timeout)
        extra = {"function": spec.name, "invocation_id": invocation.id, **(log_extra or {})}
        kwargs: dict[str, Any] = {spec.trigger.param: trigger_value}
        outputs = {output.param: OutputValue() for output in spec.queue_outputs if output.param != "$return"}
        kwargs.update(outputs)
        if spec.wants_context:
            kwargs["context"] = InvocationContext(invocation.id, spec)
        with self._lock:
            self._active[invocation.id] = invocation
        logger.debug("Executing 'Functions.%s' (Reason='%s', Id=%s)", spec.name, reason, invocation.id, extra=extra)
        try:
            if spec.is_async:
                future = asyncio.run_coroutine_threadsafe(spec.user_function(**kwargs), self._loop)
                result = future.result()
            else:
                result = self._sync_pool.submit(spec.user_function, **kwargs).result()
            if invocation.timed_out:
                raise FunctionTimeoutError(f"function {spec.name} exceeded functionTimeout")
            for output in spec.queue_outputs:
                value = result if output.param == "$return" else outputs[output.param].get()
                messages = output_messages(value)
                if messages:
                    self._send_messages(output, messages)
        except BaseException:
            elapsed = (time.monotonic() - invocation.started) * 1000
            logger.error(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)",
                spec.name,
                invocation.id,
                elapsed,
                exc_info=True,
                extra={**extra, "duration_ms": round(elapsed, 1)},
            )
            raise
        finally:
            with self._lock:
                self._active.pop(invocation.id, None)
                self._idle.notify_all()
        elapsed = (time.monotonic() - invocation.started) * 1000
        logger.info(
            "Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)",
            spec.name,
            invocation.id,
            elapsed,
            extra={**extra, "duration_ms": round(elapsed, 1)},
        )
        return result

    def _watch_timeouts(self) -> None:
        assert self._function_timeout is not None
        while True:
            time.sleep(min(1.0, self._function_timeout / 4))
            now = time.monotonic()
            with self._lock:
                late = [
                    inv
                    for inv in self._active.values()
                    if not inv.timed_out and now - inv.started > self._function_timeout
                ]
                for invocation in late:
                    invocation.timed_out = True
            for invocation in late:
                logger.error(
                    "Timeout value of %ss exceeded by function 'Functions.%s' (Id: '%s'). Initiating cancellation.",
                    self._function_timeout,
                    invocation.function_name,
                    invocation.id,
                    extra={"function": invocation.function_name, "invocation_id": invocation.id},
                )
                if invocation.on_timeout is not None:
                    try:
                        invocation.on_timeout()
                    except Exception:
                        logger.exception("Releasing the trigger of a timed-out invocation failed")
                self._on_function_timeout(invocation)
