"""Queue triggers of the engine: decode the message, hand it to the orchestrator or task runner.

A body that is not a valid message can never succeed: it is logged with its content and
completed (removed) rather than retried into the poison queue.
"""

from __future__ import annotations

import logging
from typing import TypeVar

import azure.functions as func
from pydantic import BaseModel, ValidationError

from schemas.messages import JobMessage, TaskMessage
from services.container import ServiceContainer

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def decode_message(msg: func.QueueMessage, model: type[M]) -> M | None:
    body = msg.get_body()
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        logger.error(
            "invalid %s removed: %s",
            model.__name__,
            exc.errors(include_url=False)[:3],
            extra={"message_id": msg.id, "body": body[:500].decode("utf-8", "replace")},
        )
        return None


def create_blueprint(container: ServiceContainer) -> func.Blueprint:
    bp = func.Blueprint()

    @bp.function_name("process_job_message")
    @bp.queue_trigger(arg_name="msg", queue_name="%JOB_QUEUE%", connection="AzureWebJobsStorage")
    def process_job_message(msg: func.QueueMessage) -> None:
        message = decode_message(msg, JobMessage)
        if message is not None:
            container.orchestrator.handle(message)

    @bp.function_name("process_task_message")
    @bp.queue_trigger(arg_name="msg", queue_name="%TASK_QUEUE%", connection="AzureWebJobsStorage")
    def process_task_message(msg: func.QueueMessage) -> None:
        message = decode_message(msg, TaskMessage)
        if message is not None:
            container.task_runner.handle(message, message_id=msg.id or "", dequeue_count=msg.dequeue_count or 1)

    return bp
