"""Raw Azurite queue round-trip rate: send + receive + delete of small base64 JSON messages.

``raw_concurrent`` runs ``workers`` processes shaped like one host worker's task-queue path
(publish pool for the sends, one poller receiving batches, a pool deleting each message);
``raw_single`` does the same work sequentially in one thread. Both use a fresh queue.
"""

from __future__ import annotations

import base64
import json
import multiprocessing as mp
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from azure.storage.queue import QueueClient

from bench.common import unique_token

CLIENT_OPTIONS: dict[str, Any] = {"retry_total": 2, "connection_timeout": 10, "read_timeout": 30}


@dataclass(frozen=True)
class RawShape:
    """One worker process of the host's task-queue path, as the raw loop reproduces it."""

    publish_concurrency: int = 16  # PUBLISH_CONCURRENCY: the engine's fan-out sends
    batch_size: int = 16  # host.json queues.batchSize
    new_batch_threshold: int = 8  # host.json queues.newBatchThreshold: poll again at <= 8 in flight
    visibility_timeout: int = 600  # local_host --message-lease-seconds default

    @property
    def max_in_flight(self) -> int:
        return self.batch_size + self.new_batch_threshold

    def describe(self) -> str:
        return (
            f"sends its share with {self.publish_concurrency} threads, then one poller receives batches of "
            f"{self.batch_size} (visibility {self.visibility_timeout}s), polls again once "
            f"<= {self.new_batch_threshold} are in flight, and base64+JSON-decodes and deletes each message "
            f"in a pool of {self.max_in_flight} threads"
        )


def raw_body(index: int) -> str:
    """A base64 JSON body the size and shape of a geoetl TaskMessage."""
    job_id = f"{index:064x}"
    body = json.dumps({"job_id": job_id, "task_id": f"{job_id}-s1-item_{index % 10000:04d}"}, separators=(",", ":"))
    return base64.b64encode(body.encode()).decode("ascii")


def _thread_local_client(connection_string: str, queue_name: str) -> Callable[[], QueueClient]:
    local = threading.local()

    def client() -> QueueClient:
        found: QueueClient | None = getattr(local, "client", None)
        if found is None:
            found = QueueClient.from_connection_string(connection_string, queue_name, **CLIENT_OPTIONS)
            local.client = found
        return found

    return client


def _receive_batch(client: QueueClient, batch_size: int, visibility_timeout: int) -> list[Any]:
    pages = client.receive_messages(messages_per_page=batch_size, visibility_timeout=visibility_timeout).by_page()
    return list(next(pages, []))


class _Drain:
    """In-flight accounting of one worker's listener (the host's QueueListener, minus the function)."""

    def __init__(self, client: Callable[[], QueueClient]) -> None:
        self.client = client
        self.cond = threading.Condition()
        self.in_flight = 0
        self.deleted = 0

    def wait_below(self, threshold: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.in_flight <= threshold)

    def add(self, count: int) -> None:
        with self.cond:
            self.in_flight += count

    def delete(self, message: Any) -> None:
        try:
            json.loads(base64.b64decode(message.content))
            self.client().delete_message(message.id, message.pop_receipt)
        finally:
            with self.cond:
                self.in_flight -= 1
                self.deleted += 1
                self.cond.notify_all()


def raw_worker(
    connection_string: str, queue_name: str, share: int, offset: int, workers: int, shape: RawShape,
    barrier: Any, senders_done: Any, results: Any,
) -> None:  # fmt: skip
    """Process body: send ``share`` messages, then drain until all senders are done and the queue is empty."""
    client = _thread_local_client(connection_string, queue_name)
    client().get_queue_properties()  # connect before the clock starts
    drain = _Drain(client)
    receives = empty_receives = 0
    barrier.wait()
    t0, cpu0 = time.time(), time.process_time()
    with ThreadPoolExecutor(shape.publish_concurrency) as publish:
        list(publish.map(lambda i: client().send_message(raw_body(i)), range(offset, offset + share)))
    t_sent = time.time()
    with senders_done.get_lock():
        senders_done.value += 1
    with ThreadPoolExecutor(shape.max_in_flight) as pool:
        while True:
            drain.wait_below(shape.new_batch_threshold)
            batch = _receive_batch(client(), shape.batch_size, shape.visibility_timeout)
            receives += 1
            if not batch:
                empty_receives += 1
                if senders_done.value >= workers:
                    break  # all sent and nothing visible: the rest is in flight (here or elsewhere)
                time.sleep(0.01)
                continue
            drain.add(len(batch))
            for message in batch:
                pool.submit(drain.delete, message)
    results.put({"deleted": drain.deleted, "receives": receives, "empty_receives": empty_receives,
                 "t0": t0, "t_sent": t_sent, "t_end": time.time(), "cpu_s": time.process_time() - cpu0})  # fmt: skip


def _fresh_queue(connection_string: str, prefix: str) -> QueueClient:
    client = QueueClient.from_connection_string(connection_string, f"{prefix}-{unique_token()}", **CLIENT_OPTIONS)
    client.create_queue()
    return client


def raw_concurrent(
    connection_string: str, messages: int, workers: int, shape: RawShape, on_start: Callable[[], None] | None = None
) -> dict[str, Any]:
    """``workers`` spawned processes released together; rate = messages / (last delete - common start).

    ``on_start`` runs in this process when the workers are released (after their start-up)."""
    queue = _fresh_queue(connection_string, "bench-raw")
    ctx = mp.get_context("spawn")
    barrier, senders_done, results = ctx.Barrier(workers + 1), ctx.Value("i", 0), ctx.Queue()
    shares = [messages // workers + (1 if i < messages % workers else 0) for i in range(workers)]
    procs = [
        ctx.Process(
            target=raw_worker,
            args=(connection_string, queue.queue_name, shares[i], sum(shares[:i]), workers, shape,
                  barrier, senders_done, results),
            daemon=True,
        )
        for i in range(workers)
    ]  # fmt: skip
    for proc in procs:
        proc.start()
    try:
        barrier.wait(timeout=120)
        if on_start is not None:
            on_start()
        rows = [results.get(timeout=600) for _ in procs]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
        queue.delete_queue()
    t0, t_end = min(r["t0"] for r in rows), max(r["t_end"] for r in rows)
    deleted = sum(r["deleted"] for r in rows)
    if deleted != messages:
        raise RuntimeError(f"raw loop deleted {deleted} of {messages} messages")
    return {
        "workers": workers,
        "messages": messages,
        "seconds": t_end - t0,
        "rate": messages / (t_end - t0),
        "send_phase_seconds": max(r["t_sent"] for r in rows) - t0,
        "receives": sum(r["receives"] for r in rows),
        "empty_receives": sum(r["empty_receives"] for r in rows),
        "per_worker_deleted": [r["deleted"] for r in rows],
        "client_cpu_s": sum(r["cpu_s"] for r in rows),
        "shape": asdict(shape),
        "loop": f"{workers} processes; each {shape.describe()}",
    }


def raw_single(
    connection_string: str, messages: int, batch_size: int = 16, on_start: Callable[[], None] | None = None
) -> dict[str, Any]:
    """One thread: send each message, then receive batches and delete each, all sequentially."""
    queue = _fresh_queue(connection_string, "bench-raw1")
    try:
        queue.get_queue_properties()
        if on_start is not None:
            on_start()
        t0, cpu0 = time.time(), time.process_time()
        for i in range(messages):
            queue.send_message(raw_body(i))
        t_sent = time.time()
        deleted = 0
        while batch := _receive_batch(queue, batch_size, 600):
            for message in batch:
                json.loads(base64.b64decode(message.content))
                queue.delete_message(message.id, message.pop_receipt)
                deleted += 1
        t_end, cpu = time.time(), time.process_time() - cpu0
    finally:
        queue.delete_queue()
    if deleted != messages:
        raise RuntimeError(f"single-threaded raw loop deleted {deleted} of {messages}")
    return {
        "workers": 1,
        "messages": messages,
        "seconds": t_end - t0,
        "rate": messages / (t_end - t0),
        "send_phase_seconds": t_sent - t0,
        "client_cpu_s": cpu,
        "loop": f"1 thread: send each, then receive batches of {batch_size} and decode+delete each, sequentially",
    }
