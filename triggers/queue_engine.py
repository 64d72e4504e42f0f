"""Queue and timer triggers of the engine: decode, hand to a service, nothing else.

A body that is not a valid message can never succeed: it is recorded as a dead letter and
completed (removed) rather than retried into the poison queue. Each invocation is one span
(services/telemetry/spans.py), parented under the host's invocation trace (``context``).
"""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager

import azure.functions as func

from schemas.messages import JobMessage, TaskMessage
from services.container import ServiceContainer
from services.engine.dead_letters import ReceivedMessage, parse_message
from services.telemetry.spans import message_span

logger = logging.getLogger(__name__)


def received(msg: func.QueueMessage, queue: str) -> ReceivedMessage:
    return ReceivedMessage(queue=queue, body=msg.get_body(), message_id=msg.id, dequeue_count=msg.dequeue_count)


def create_blueprint(container: ServiceContainer) -> func.Blueprint:
    bp = func.Blueprint()
    settings = container.settings

    def span(
        name: str, msg: func.QueueMessage, queue: str, context: func.Context | None, **job: object
    ) -> AbstractContextManager[object]:
        return message_span(
            name, queue=queue, message_id=msg.id, dequeue_count=msg.dequeue_count, context=context, **job
        )

    def run_task(msg: func.QueueMessage, logical_queue: str, queue_name: str, context: func.Context) -> None:
        message, problem = parse_message(received(msg, queue_name), TaskMessage)
        if message is None:
            with span("process_task_message", msg, queue_name, context):
                container.dead_letters.record(received(msg, queue_name), problem or "invalid")
            return
        with span("process_task_message", msg, queue_name, context, job_id=message.job_id, task_id=message.task_id):
            container.work_chain.on_task_message(
                message, message_id=msg.id or "", dequeue_count=msg.dequeue_count or 1, queue=logical_queue
            )

    @bp.function_name("process_job_message")
    @bp.queue_trigger(arg_name="msg", queue_name="%JOB_QUEUE%", connection="AzureWebJobsStorage")
    def process_job_message(msg: func.QueueMessage, context: func.Context) -> None:
        message, problem = parse_message(received(msg, settings.job_queue), JobMessage)
        if message is None:
            with span("process_job_message", msg, settings.job_queue, context):
                container.dead_letters.record(received(msg, settings.job_queue), problem or "invalid")
            return
        with span("process_job_message", msg, settings.job_queue, context, job_id=message.job_id, stage=message.stage):
            container.work_chain.on_job_message(message)

    @bp.function_name("process_task_message")
    @bp.queue_trigger(arg_name="msg", queue_name="%TASK_QUEUE%", connection="AzureWebJobsStorage")
    def process_task_message(msg: func.QueueMessage, context: func.Context) -> None:
        run_task(msg, "tasks", settings.task_queue, context)

    @bp.function_name("process_high_priority_task_message")
    @bp.queue_trigger(arg_name="msg", queue_name="%HIGH_PRIORITY_TASK_QUEUE%", connection="AzureWebJobsStorage")
    def process_high_priority_task_message(msg: func.QueueMessage, context: func.Context) -> None:
        run_task(msg, "tasks_high", settings.high_priority_task_queue, context)

    @bp.function_name("reconcile_poisoned_job_message")
    @bp.queue_trigger(arg_name="msg", queue_name="%JOB_QUEUE%-poison", connection="AzureWebJobsStorage")
    def reconcile_poisoned_job_message(msg: func.QueueMessage, context: func.Context) -> None:
        queue = f"{settings.job_queue}-poison"
        with span("reconcile_poisoned_job_message", msg, queue, context):
            container.dead_letters.reconcile_poisoned_job(received(msg, queue))

    @bp.function_name("reconcile_poisoned_task_message")
    @bp.queue_trigger(arg_name="msg", queue_name="%TASK_QUEUE%-poison", connection="AzureWebJobsStorage")
    def reconcile_poisoned_task_message(msg: func.QueueMessage, context: func.Context) -> None:
        queue = f"{settings.task_queue}-poison"
        with span("reconcile_poisoned_task_message", msg, queue, context):
            container.dead_letters.reconcile_poisoned_task(received(msg, queue))

    @bp.function_name("reconcile_poisoned_high_priority_task_message")
    @bp.queue_trigger(arg_name="msg", queue_name="%HIGH_PRIORITY_TASK_QUEUE%-poison", connection="AzureWebJobsStorage")
    def reconcile_poisoned_high_priority_task_message(msg: func.QueueMessage, context: func.Context) -> None:
        queue = f"{settings.high_priority_task_queue}-poison"
        with span("reconcile_poisoned_high_priority_task_message", msg, queue, context):
            container.dead_letters.reconcile_poisoned_task(received(msg, queue))

    @bp.function_name("janitor")
    @bp.timer_trigger(arg_name="timer", schedule="%JANITOR_SCHEDULE%", run_on_startup=False)
    def janitor(timer: func.TimerRequest) -> None:
        container.janitor.run()

    return bp
