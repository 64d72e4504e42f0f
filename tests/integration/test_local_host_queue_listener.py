"""The queue listener and the timer singleton lock, in-process against real Azurite."""

from __future__ import annotations

import base64
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.blob import BlobServiceClient
from azure.storage.queue import QueueClient

from local_host.function_index import FunctionSpec, index_functions
from local_host.host_config import QueuesConfig
from local_host.invoker import Invoker, sync_thread_count
from local_host.queue_listener import QueueListener
from local_host.queue_storage import OutputSender, QueueClients
from local_host.singleton_lock import BlobSingletonLock

pytestmark = pytest.mark.integration


class Probe:
    """What the test function saw, and how many invocations ran at once."""

    def __init__(self, delay: float = 0.0, odd_delay: float | None = None, fail: bool = False) -> None:
        self.delay = delay
        self.odd_delay = delay if odd_delay is None else odd_delay
        self.fail = fail
        self.bodies: list[bytes] = []
        self.dequeue_counts: list[int | None] = []
        self.running = 0
        self.max_running = 0
        self.lock = threading.Lock()

    def __call__(self, msg: func.QueueMessage) -> None:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.bodies.append(msg.get_body())
            self.dequeue_counts.append(msg.dequeue_count)
        odd = msg.get_body()[-1:].isdigit() and int(msg.get_body()[-1:]) % 2 == 1
        try:
            time.sleep(self.odd_delay if odd else self.delay)
        finally:
            with self.lock:
                self.running -= 1
        if self.fail:
            raise RuntimeError("probe fails")


def queue_spec(environ: dict[str, str], probe: Probe, queue_setting: str = "LH_QUEUE") -> FunctionSpec:
    app = func.FunctionApp()

    @app.queue_trigger(arg_name="msg", queue_name=f"%{queue_setting}%", connection="AzureWebJobsStorage")
    def probe_function(msg: func.QueueMessage) -> None:
        probe(msg)

    (spec,) = index_functions(app, environ)
    return spec


@pytest.fixture
def environ(azurite_connection_string: str) -> dict[str, str]:
    return {"AzureWebJobsStorage": azurite_connection_string, "LH_QUEUE": f"lh-unit-{secrets.token_hex(4)}"}


@pytest.fixture
def queue(environ: dict[str, str]) -> QueueClient:
    client = QueueClient.from_connection_string(environ["AzureWebJobsStorage"], environ["LH_QUEUE"])
    client.create_queue()
    return client


class CountingListener(QueueListener):
    receives = 0

    def _receive(self) -> list[Any]:
        self.receives += 1
        return super()._receive()


def make_invoker(clients: QueueClients, sync_threads: int | None = None) -> Invoker:
    return Invoker(
        function_timeout=None,
        send_messages=OutputSender(clients, "base64"),
        on_function_timeout=lambda i: None,
        sync_threads=sync_threads,
    )


def make_listener(
    environ: dict[str, str],
    probe: Probe,
    config: QueuesConfig,
    *,
    lease_seconds: int = 30,
    invoker: Invoker | None = None,
    queue_setting: str = "LH_QUEUE",
) -> CountingListener:
    clients = QueueClients(environ)
    return CountingListener(
        queue_spec(environ, probe, queue_setting),
        config,
        lease_seconds=lease_seconds,
        clients=clients,
        invoker=invoker or make_invoker(clients),
    )


@pytest.fixture
def running() -> Iterator[list[QueueListener]]:
    listeners: list[QueueListener] = []
    yield listeners
    for listener in listeners:
        listener.stop()


def wait_until(condition: Any, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # e.g. a queue not created yet
            pass
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def test_in_flight_is_capped_at_batch_size_plus_threshold(
    environ: dict[str, str], queue: QueueClient, running: list[QueueListener]
) -> None:
    for i in range(12):
        queue.send_message(base64.b64encode(f"m{i}".encode()).decode())
    probe = Probe(delay=0.2, odd_delay=0.6)  # staggered, so a new batch is fetched while others still run
    config = QueuesConfig(batch_size=2, new_batch_threshold=1, max_polling_interval=0.5)
    listener = make_listener(environ, probe, config)
    running.append(listener)
    listener.start()
    wait_until(lambda: len(probe.bodies) == 12 and listener.in_flight == 0)
    assert sorted(probe.bodies) == sorted(f"m{i}".encode() for i in range(12))
    assert probe.max_running == 3
    wait_until(lambda: queue.get_queue_properties().approximate_message_count == 0)


def test_over_dequeued_message_goes_to_poison_without_invoking(
    environ: dict[str, str], queue: QueueClient, running: list[QueueListener]
) -> None:
    queue.send_message("b3Zlci1kZXF1ZXVlZA==")
    for _ in range(4):  # as if instances had crashed while processing it four times
        (message,) = list(queue.receive_messages(visibility_timeout=30, max_messages=1, messages_per_page=1))
        queue.update_message(message.id, pop_receipt=message.pop_receipt, visibility_timeout=0)
    assert message.dequeue_count == 4  # the listener's receive makes it 5 > maxDequeueCount
    probe = Probe()
    listener = make_listener(environ, probe, QueuesConfig(max_dequeue_count=3, max_polling_interval=0.5))
    running.append(listener)
    listener.start()
    poison = QueueClient.from_connection_string(environ["AzureWebJobsStorage"], f"{environ['LH_QUEUE']}-poison")
    wait_until(lambda: listener.in_flight == 0 and poison.get_queue_properties().approximate_message_count == 1)
    assert [m.content for m in poison.peek_messages()] == ["b3Zlci1kZXF1ZXVlZA=="]
    assert probe.bodies == []
    wait_until(lambda: queue.get_queue_properties().approximate_message_count == 0)


def test_empty_queue_polling_backs_off_exponentially(
    environ: dict[str, str], queue: QueueClient, running: list[QueueListener]
) -> None:
    probe = Probe()
    listener = make_listener(environ, probe, QueuesConfig(max_polling_interval=0.8))
    running.append(listener)
    listener.start()
    time.sleep(3.0)
    # delays 0.1, 0.2, 0.4, 0.8, 0.8, ... -> about 7 polls in 3 s (a fixed 100 ms would be ~30)
    assert 5 <= listener.receives <= 9
    queue.send_message(base64.b64encode(b"wake").decode())
    wait_until(lambda: probe.bodies == [b"wake"], timeout=3)


def test_singleton_lock_is_exclusive_and_handed_over(azurite_connection_string: str) -> None:
    service = BlobServiceClient.from_connection_string(azurite_connection_string)
    name = f"locks/local/test-{secrets.token_hex(4)}"
    first = BlobSingletonLock(service, name)
    second = BlobSingletonLock(service, name)
    assert first.try_acquire()
    assert not second.try_acquire()
    first.release()
    assert second.try_acquire()
    assert not first.try_acquire()
    second.release()


def test_functions_of_one_worker_share_its_sync_thread_pool(
    environ: dict[str, str], running: list[QueueListener]
) -> None:
    """PYTHON_THREADPOOL_THREAD_COUNT=2: three busy queue functions of one worker run two invocations at
    most, although each listener holds up to batchSize + newBatchThreshold messages."""
    connection = environ["AzureWebJobsStorage"]
    invoker = make_invoker(QueueClients(environ), sync_thread_count({"PYTHON_THREADPOOL_THREAD_COUNT": "2"}))
    probe = Probe(delay=0.3)
    config = QueuesConfig(batch_size=4, new_batch_threshold=2, max_polling_interval=0.5)
    for index in range(3):
        setting = f"LH_QUEUE_{index}"
        environ[setting] = f"{environ['LH_QUEUE']}-{index}"
        client = QueueClient.from_connection_string(connection, environ[setting])
        client.create_queue()
        for message in range(4):
            client.send_message(base64.b64encode(f"q{index}-m{message}".encode()).decode())
        running.append(make_listener(environ, probe, config, invoker=invoker, queue_setting=setting))
    for listener in running:
        listener.start()
    wait_until(lambda: len(probe.bodies) == 12 and all(listener.in_flight == 0 for listener in running), 30)
    assert probe.max_running == 2


def test_undecodable_message_goes_to_poison_at_once_without_invoking(
    environ: dict[str, str], queue: QueueClient, running: list[QueueListener]
) -> None:
    queue.send_message("not base64!")
    probe = Probe()
    listener = make_listener(environ, probe, QueuesConfig(max_dequeue_count=5, max_polling_interval=0.5))
    running.append(listener)
    listener.start()
    poison = QueueClient.from_connection_string(environ["AzureWebJobsStorage"], f"{environ['LH_QUEUE']}-poison")
    wait_until(lambda: poison.get_queue_properties().approximate_message_count == 1)
    # The extension copies the text it received, base64-encoded by the poison queue's client.
    assert [m.content for m in poison.peek_messages()] == [base64.b64encode(b"not base64!").decode()]
    assert probe.bodies == []
    wait_until(lambda: listener.in_flight == 0 and queue.get_queue_properties().approximate_message_count == 0)


def test_failure_on_a_poison_queue_leaves_the_message_invisible_and_never_repoisons(
    environ: dict[str, str], running: list[QueueListener]
) -> None:
    """A `-poison` queue has no poison queue: a failed message is not released (it stays invisible for the
    listener's lease) and past maxDequeueCount it is not invoked again; it stays in the queue."""
    connection = environ["AzureWebJobsStorage"]
    environ["LH_POISON"] = f"{environ['LH_QUEUE']}-poison"
    queue = QueueClient.from_connection_string(connection, environ["LH_POISON"])
    queue.create_queue()
    queue.send_message(base64.b64encode(b"doomed").decode())
    probe = Probe(fail=True)
    config = QueuesConfig(max_dequeue_count=2, visibility_timeout=0.0, max_polling_interval=0.3)
    listener = make_listener(environ, probe, config, lease_seconds=2, queue_setting="LH_POISON")
    running.append(listener)
    listener.start()
    wait_until(lambda: len(probe.bodies) == 1)
    time.sleep(1.2)  # visibilityTimeout 0 would have retried at once
    assert len(probe.bodies) == 1
    wait_until(lambda: len(probe.bodies) == 2, timeout=5)  # the 2 s lease lapsed: delivered again
    time.sleep(5.0)  # two more lease lapses: dequeue counts 3 and 4 > maxDequeueCount are skipped
    assert probe.dequeue_counts == [1, 2]
    assert queue.get_queue_properties().approximate_message_count == 1
    with pytest.raises(ResourceNotFoundError):
        QueueClient.from_connection_string(connection, f"{environ['LH_POISON']}-poison").get_queue_properties()


def test_listener_does_not_create_its_queue_and_polls_until_it_exists(
    environ: dict[str, str], running: list[QueueListener]
) -> None:
    probe = Probe()
    listener = make_listener(environ, probe, QueuesConfig(max_polling_interval=0.5))
    running.append(listener)
    listener.start()
    time.sleep(1.0)
    queue = QueueClient.from_connection_string(environ["AzureWebJobsStorage"], environ["LH_QUEUE"])
    with pytest.raises(ResourceNotFoundError):
        queue.get_queue_properties()
    queue.create_queue()
    queue.send_message(base64.b64encode(b"late").decode())
    wait_until(lambda: probe.bodies == [b"late"], timeout=5)
