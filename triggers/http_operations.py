"""HTTP triggers of the operator endpoints: queue depths, dead letters, poison queues, statistics.

Thin adapter over ``services.operations.Operations``; function-key protected like the rest of the
API (the app's default auth level). Errors map to status codes through triggers/http_responses.py.
"""

from __future__ import annotations

import azure.functions as func

from services.container import ServiceContainer
from services.operations.service import parse_dead_letter_id
from triggers.http_input import optional_int, query_text, route_text
from triggers.http_responses import json_api, json_response

__all__ = ["create_blueprint"]


def create_blueprint(container: ServiceContainer) -> func.Blueprint:
    bp = func.Blueprint()
    api = json_api(container.settings)

    @bp.function_name("list_queues")
    @bp.route(route="queues", methods=["GET"])
    @api
    def list_queues(req: func.HttpRequest) -> func.HttpResponse:
        return json_response(container.operations.queues())

    @bp.function_name("list_dead_letters")
    @bp.route(route="dead-letters", methods=["GET"])
    @api
    def list_dead_letters(req: func.HttpRequest) -> func.HttpResponse:
        page = container.operations.dead_letters(
            limit=optional_int(req, "limit", minimum=1, maximum=10_000), status=query_text(req, "status")
        )
        return json_response(page)

    @bp.function_name("requeue_dead_letter")
    @bp.route(route="dead-letters/{id}/requeue", methods=["POST"])
    @api
    def requeue_dead_letter(req: func.HttpRequest) -> func.HttpResponse:
        dead_letter_id = parse_dead_letter_id(route_text(req, "id"))
        return json_response(container.operations.requeue_dead_letter(dead_letter_id), 202)

    @bp.function_name("delete_dead_letter")
    @bp.route(route="dead-letters/{id}", methods=["DELETE"])
    @api
    def delete_dead_letter(req: func.HttpRequest) -> func.HttpResponse:
        container.operations.delete_dead_letter(parse_dead_letter_id(route_text(req, "id")))
        return func.HttpResponse(status_code=204)

    @bp.function_name("peek_poison_queue")
    @bp.route(route="poison/{queue}", methods=["GET"])
    @api
    def peek_poison_queue(req: func.HttpRequest) -> func.HttpResponse:
        return json_response(container.operations.poison_messages(route_text(req, "queue")))

    @bp.function_name("requeue_poison_queue")
    @bp.route(route="poison/{queue}/requeue", methods=["POST"])
    @api
    def requeue_poison_queue(req: func.HttpRequest) -> func.HttpResponse:
        return json_response(container.operations.requeue_poison(route_text(req, "queue")))

    @bp.function_name("purge_poison_queue")
    @bp.route(route="poison/{queue}", methods=["DELETE"])
    @api
    def purge_poison_queue(req: func.HttpRequest) -> func.HttpResponse:
        return json_response(container.operations.purge_poison(route_text(req, "queue")))

    @bp.function_name("failure_stats")
    @bp.route(route="stats/failures", methods=["GET"])
    @api
    def failure_stats(req: func.HttpRequest) -> func.HttpResponse:
        return json_response(container.operations.failure_stats(optional_int(req, "hours")))

    @bp.function_name("throughput_stats")
    @bp.route(route="stats/throughput", methods=["GET"])
    @api
    def throughput_stats(req: func.HttpRequest) -> func.HttpResponse:
        return json_response(container.operations.throughput(optional_int(req, "minutes")))

    return bp
