"""Queue-trigger listener with the Azure host's semantics (WebJobs QueueListener / QueueProcessor)."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from azure.core.exceptions import ResourceNotFoundError
from azure.functions.queue import QueueMessage as FunctionQueueMessage
from azure.storage.queue import QueueClient, QueueMessage

from local_host.function_index import FunctionSpec, QueueTrigger
from local_host.host_config import MIN_POLLING_INTERVAL_SECONDS, QueuesConfig
from local_host.invoker import Invoker
from local_host.polling_backoff import RandomizedExponentialBackoff
from local_host.queue_leases import HeldMessage, VisibilityRenewer
from local_host.queue_storage import MessageDecodeError, QueueClients, decode_message_body, encode_message_body

logger = logging.getLogger("local_host.queues")


POISON_SUFFIX = "-poison"
MAX_QUEUE_NAME_LENGTH = 63


def poison_queue_name(queue_name: str) -> str | None:
    """``<queue>-poison``, or None where the extension gives a queue no poison queue: the queue is
    itself a poison queue, or the name with the suffix would be longer than a queue name may be."""
    if queue_name.endswith(POISON_SUFFIX) or len(queue_name) + len(POISON_SUFFIX) > MAX_QUEUE_NAME_LENGTH:
        return None
    return queue_name + POISON_SUFFIX


class QueueListener:
    """Polls one queue for one function; at most batchSize + newBatchThreshold messages in flight."""

    def __init__(
        self,
        spec: FunctionSpec,
        config: QueuesConfig,
        *,
        lease_seconds: int,
        clients: QueueClients,
        invoker: Invoker,
    ) -> None:
        assert isinstance(spec.trigger, QueueTrigger)
        self.spec = spec
        self.trigger: QueueTrigger = spec.trigger
        self.config = config
        self.lease_seconds = lease_seconds
        self._clients = clients
        self._invoker = invoker
        self.poison_queue = poison_queue_name(self.trigger.queue_name)
        self._in_flight = 0
        self._condition = threading.Condition()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=config.max_in_flight, thread_name_prefix=f"queue-{spec.name}")
        self._renewer = VisibilityRenewer(self._queue_client, lease_seconds, spec.name)
        self._thread = threading.Thread(target=self._run, name=f"listen-{spec.name}", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start polling; like the extension's listener it never creates the queue, it waits for it."""
        self._renewer.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop polling; invocations already running go on."""
        self._stopping.set()
        self._wake.set()
        with self._condition:
            self._condition.notify_all()

    def wake(self) -> None:
        """Poll now (a message was just added to this queue by this process)."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        with self._condition:
            return self._in_flight

    def wait_idle(self, deadline: float) -> bool:
        with self._condition:
            while self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(min(remaining, 0.5))
            return True

    # -- polling ---------------------------------------------------------------------------------

    def _queue_client(self) -> QueueClient:
        return self._clients.client(self.trigger.connection_setting, self.trigger.queue_name)

    def _receive(self) -> list[QueueMessage]:
        pages = (
            self._queue_client()
            .receive_messages(messages_per_page=self.config.batch_size, visibility_timeout=self.lease_seconds)
            .by_page()
        )
        return list(next(pages, []))

    def _sleep(self, delay: float) -> bool:
        """Wait ``delay`` seconds; True if woken early by ``wake``/``stop``."""
        woken = self._wake.wait(delay)
        self._wake.clear()
        return woken

    def _queue_exists(self) -> bool:
        try:
            self._queue_client().get_queue_properties()
        except ResourceNotFoundError:
            return False
        return True

    def _run(self) -> None:
        """WebJobs QueueListener.ExecuteAsync: check the queue exists (again after any error), receive a
        batch, back off (randomized, exponential) while there is nothing to do."""
        backoff = RandomizedExponentialBackoff(MIN_POLLING_INTERVAL_SECONDS, self.config.max_polling_interval)
        extra = {"function": self.spec.name, "queue": self.trigger.queue_name}
        queue = self.trigger.queue_name
        queue_exists: bool | None = None
        reported_missing = False
        while not self._stopping.is_set():
            with self._condition:
                while self._in_flight > self.config.new_batch_threshold and not self._stopping.is_set():
                    self._condition.wait(0.5)
            if self._stopping.is_set():
                break
            messages: list[QueueMessage] = []
            try:
                if not queue_exists:
                    queue_exists = self._queue_exists()
                    if not queue_exists and not reported_missing:
                        logger.warning("Queue %s does not exist; polling until it does", queue, extra=extra)
                    reported_missing = not queue_exists
                if queue_exists:
                    messages = self._receive()
            except Exception:
                queue_exists = None
                logger.warning("Polling queue %s failed; backing off", queue, exc_info=True, extra=extra)
            if messages:
                backoff.next_delay(succeeded=True)
                for message in messages:
                    self._dispatch(message)
                continue
            self._sleep(backoff.next_delay(succeeded=False))
        logger.debug("Stopped polling queue %s", queue, extra=extra)

    def _dispatch(self, message: QueueMessage) -> None:
        with self._condition:
            self._in_flight += 1
        try:
            self._pool.submit(self._process, message)
        except RuntimeError:  # pool shut down: leave the message to reappear after its lease
            self._done()

    def _done(self) -> None:
        with self._condition:
            self._in_flight -= 1
            self._condition.notify_all()

    # -- one message -----------------------------------------------------------------------------

    def _extra(self, message: QueueMessage) -> dict[str, Any]:
        return {
            "function": self.spec.name,
            "queue": self.trigger.queue_name,
            "message_id": message.id,
            "dequeue_count": message.dequeue_count,
        }

    def _process(self, message: QueueMessage) -> None:
        try:
            try:
                body = decode_message_body(message.content, self.config.message_encoding)
            except MessageDecodeError as error:
                # The storage SDK fails to decode it on receive and the extension's handler hands it to the
                # poison queue at once (as the text received, base64-encoded), whatever its dequeue count.
                why = f"it cannot be decoded ({error})"
                self._handle_poison(message, encode_message_body(message.content, "base64"), why)
                return
            dequeue_count = message.dequeue_count or 0
            if dequeue_count > self.config.max_dequeue_count:
                why = f"its dequeue count {dequeue_count} exceeds maxDequeueCount {self.config.max_dequeue_count}"
                self._handle_poison(message, message.content, why)
                return
            held = self._renewer.hold(message.id, message.pop_receipt or "", dequeue_count)
            trigger_value = FunctionQueueMessage(
                id=message.id,
                body=body,
                dequeue_count=message.dequeue_count,
                expiration_time=message.expires_on,
                insertion_time=message.inserted_on,
                time_next_visible=message.next_visible_on,
                pop_receipt=message.pop_receipt,
            )
            try:
                self._invoker.invoke(
                    self.spec,
                    trigger_value,
                    reason=f"New queue message detected on '{self.trigger.queue_name}'.",
                    on_timeout=lambda: self._fail(message, held),
                    log_extra={"message_id": message.id, "dequeue_count": message.dequeue_count},
                )
            except Exception:
                self._fail(message, held)
            else:
                self._complete(message, held)
        except Exception:
            logger.exception("Handling message %s failed", message.id, extra=self._extra(message))
        finally:
            self._done()

    def _handle_poison(self, message: QueueMessage, poison_content: str, why: str) -> None:
        """QueueProcessor.HandlePoisonMessageAsync: copy to the poison queue and delete, without invoking;
        a queue without a poison queue leaves the message invisible until the receive lease lapses."""
        if self.poison_queue is None:
            logger.warning(
                "Message %s of function %s is not processed: %s, and queue %s has no poison queue; it stays "
                "invisible for %ss, then is received again (and skipped again) until it expires",
                message.id,
                self.spec.name,
                why,
                self.trigger.queue_name,
                self.lease_seconds,
                extra=self._extra(message),
            )
            return
        logger.warning(
            "Message %s of function %s is not processed: %s; moving it to %s",
            message.id,
            self.spec.name,
            why,
            self.poison_queue,
            extra=self._extra(message),
        )
        self._move_to_poison(message, message.pop_receipt, poison_content)

    def _complete(self, message: QueueMessage, held: HeldMessage) -> None:
        receipt = self._renewer.release(held)
        if receipt is None:
            return
        try:
            self._queue_client().delete_message(message.id, receipt)
        except ResourceNotFoundError:
            logger.warning(
                "Message %s was already gone when function %s completed (its visibility lease lapsed?)",
                message.id,
                self.spec.name,
                extra=self._extra(message),
            )

    def _fail(self, message: QueueMessage, held: HeldMessage) -> None:
        """QueueProcessor.CompleteProcessingMessageAsync for a failed invocation."""
        receipt = self._renewer.release(held)
        if receipt is None:
            return
        if self.poison_queue is None:
            # The extension does not release it: no fast retry loop on a queue without a poison queue.
            logger.warning(
                "Function %s failed for message %s (dequeue count %s); queue %s has no poison queue, so the "
                "message stays invisible until its lease of %ss lapses",
                self.spec.name,
                message.id,
                message.dequeue_count,
                self.trigger.queue_name,
                self.lease_seconds,
                extra=self._extra(message),
            )
            return
        if (message.dequeue_count or 0) >= self.config.max_dequeue_count:
            logger.warning(
                "Message %s of function %s has reached maxDequeueCount of %s; moving it to %s",
                message.id,
                self.spec.name,
                self.config.max_dequeue_count,
                self.poison_queue,
                extra=self._extra(message),
            )
            self._move_to_poison(message, receipt, message.content)
            return
        logger.warning(
            "Function %s failed for message %s (dequeue count %s); it becomes visible again in %ss",
            self.spec.name,
            message.id,
            message.dequeue_count,
            self.config.visibility_timeout,
            extra=self._extra(message),
        )
        try:
            self._queue_client().update_message(
                message.id, pop_receipt=receipt, visibility_timeout=round(self.config.visibility_timeout)
            )
        except ResourceNotFoundError:
            logger.warning("Message %s was already gone when releasing it", message.id, extra=self._extra(message))

    def _move_to_poison(self, message: QueueMessage, receipt: str | None, content: str) -> None:
        poison = self.poison_queue
        assert poison is not None
        self._clients.send(self.trigger.connection_setting, poison, content)
        try:
            self._queue_client().delete_message(message.id, receipt)
        except ResourceNotFoundError:
            extra = self._extra(message)
            logger.warning("Message %s was already gone after copying it to %s", message.id, poison, extra=extra)
