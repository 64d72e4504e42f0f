"""Queue triggers of job-completion webhooks: decode, hand to the deliverer, nothing else.

``%WEBHOOK_QUEUE%``: one delivery attempt per message (services/webhooks/delivery.py). Its poison
queue: a message the host gave up on (the attempt raised maxDequeueCount times, e.g. Postgres or
Key Vault down) fails its delivery with the reason and is recorded as a dead letter.
"""

from __future__ import annotations

import azure.functions as func

from services.container import ServiceContainer
from services.engine.dead_letters import ReceivedMessage, parse_message
from services.webhooks.events import WebhookMessage


def received(msg: func.QueueMessage, queue: str) -> ReceivedMessage:
    return ReceivedMessage(queue=queue, body=msg.get_body(), message_id=msg.id, dequeue_count=msg.dequeue_count)


def create_blueprint(container: ServiceContainer) -> func.Blueprint:
    bp = func.Blueprint()
    settings = container.settings

    @bp.function_name("deliver_webhook")
    @bp.queue_trigger(arg_name="msg", queue_name="%WEBHOOK_QUEUE%", connection="AzureWebJobsStorage")
    def deliver_webhook(msg: func.QueueMessage) -> None:
        message, problem = parse_message(received(msg, settings.webhook_queue), WebhookMessage)
        if message is None:
            container.dead_letters.record(received(msg, settings.webhook_queue), problem or "invalid")
            return
        container.webhook_deliverer.deliver(message.delivery_id)

    @bp.function_name("reconcile_poisoned_webhook_message")
    @bp.queue_trigger(arg_name="msg", queue_name="%WEBHOOK_QUEUE%-poison", connection="AzureWebJobsStorage")
    def reconcile_poisoned_webhook_message(msg: func.QueueMessage) -> None:
        container.dead_letters.reconcile_poisoned_webhook(received(msg, f"{settings.webhook_queue}-poison"))

    return bp
