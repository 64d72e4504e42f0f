"""Queue and timer triggers of the engine: decode, hand to a service, nothing else.

A body that is not a valid message can never succeed: it is recorded as a dead letter and
completed (removed) rather than retried into the poison queue.
"""

from __future__ import annotations

import logging

import azure.functions as func

from schemas.messages import JobMessage, TaskMessage
from services.container import ServiceContainer
from services.engine.dead_letters import ReceivedMessage, parse_message

logger = logging.getLogger(__name__)


def received(msg: func.QueueMessage, queue: str) -> ReceivedMessage:
    return ReceivedMessage(queue=queue, body=msg.get_body(), message_id=msg.id, dequeue_count=msg.dequeue_count)


def create_blueprint(container: ServiceContainer) -> func.Blueprint:
    bp = func.Blueprint()
    settings = container.settings

    def run_task(msg: func.QueueMessage, logical_queue: str, queue_name: str) -> None:
        message, problem = parse_message(received(msg, queue_name), TaskMessage)
        if message is None:
            container.dead_letters.record(received(msg, queue_name), problem or "invalid")
            return
        container.work_chain.on_task_message(
            message, message_id=msg.id or "", dequeue_count=msg.dequeue_count or 1, queue=logical_queue
        )

    @bp.function_name("process_job_message")
    @bp.queue_trigger(arg_name="msg", queue_name="%JOB_QUEUE%", connection="AzureWebJobsStorage")
    def process_job_message(msg: func.QueueMessage) -> None:
        message, problem = parse_message(received(msg, settings.job_queue), JobMessage)
        if message is None:
            container.dead_letters.record(received(msg, settings.job_queue), problem or "invalid")
            return
        container.work_chain.on_job_message(message)

    @bp.function_name("process_task_message")
    @bp.queue_trigger(arg_name="msg", queue_name="%TASK_QUEUE%", connection="AzureWebJobsStorage")
    def process_task_message(msg: func.QueueMessage) -> None:
        run_task(msg, "tasks", settings.task_queue)

    @bp.function_name("process_high_priority_task_message")
    @bp.queue_trigger(arg_name="msg", queue_name="%HIGH_PRIORITY_TASK_QUEUE%", connection="AzureWebJobsStorage")
    def process_high_priority_task_message(msg: func.QueueMessage) -> None:
        run_task(msg, "tasks_high", settings.high_priority_task_queue)

    @bp.function_name("reconcile_poisoned_job_message")
    @bp.queue_trigger(arg_name="msg", queue_name="%JOB_QUEUE%-poison", connection="AzureWebJobsStorage")
    def reconcile_poisoned_job_message(msg: func.QueueMessage) -> None:
        container.dead_letters.reconcile_poisoned_job(received(msg, f"{settings.job_queue}-poison"))

    @bp.function_name("reconcile_poisoned_task_message")
    @bp.queue_trigger(arg_name="msg", queue_name="%TASK_QUEUE%-poison", connection="AzureWebJobsStorage")
    def reconcile_poisoned_task_message(msg: func.QueueMessage) -> None:
        container.dead_letters.reconcile_poisoned_task(received(msg, f"{settings.task_queue}-poison"))

    @bp.function_name("reconcile_poisoned_high_priority_task_message")
    @bp.queue_trigger(arg_name="msg", queue_name="%HIGH_PRIORITY_TASK_QUEUE%-poison", connection="AzureWebJobsStorage")
    def reconcile_poisoned_high_priority_task_message(msg: func.QueueMessage) -> None:
        container.dead_letters.reconcile_poisoned_task(received(msg, f"{settings.high_priority_task_queue}-poison"))

    @bp.function_name("janitor")
    @bp.timer_trigger(arg_name="timer", schedule="%JANITOR_SCHEDULE%", run_on_startup=False)
    def janitor(timer: func.TimerRequest) -> None:
        container.janitor.run()

    return bp
