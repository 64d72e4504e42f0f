"""HTTP triggers of the jobs API: decode the request, call JobService, encode JSON."""

from __future__ import annotations

from urllib.parse import urlsplit

import azure.functions as func

from services.container import ServiceContainer
from services.rate_limits import caller_key
from services.telemetry.spans import annotate
from triggers.http_input import INT4_MAX, optional_int, query_text, read_json_body, route_text
from triggers.http_responses import json_api, json_response

__all__ = ["create_blueprint", "optional_int", "read_json_body", "status_url"]


def api_base(req: func.HttpRequest) -> str:
    parts = urlsplit(req.url)
    return f"{parts.scheme}://{parts.netloc}/api"


def status_url(req: func.HttpRequest, job_id: str) -> str:
    return f"{api_base(req)}/jobs/{job_id}"


def create_blueprint(container: ServiceContainer) -> func.Blueprint:
    bp = func.Blueprint()
    api = json_api(container.settings)

    @bp.function_name("submit_job")
    @bp.route(route="jobs/{job_type}", methods=["POST"])
    @api
    def submit_job(req: func.HttpRequest) -> func.HttpResponse:
        # First: a caller over its budget costs one statement, nothing else (429 + Retry-After).
        container.submission_limiter.take(caller_key(req.headers, req.params))
        job_type = route_text(req, "job_type")
        body = read_json_body(req, container.settings.max_request_bytes)
        submission = container.job_service.submit(job_type, body, api_base=api_base(req))
        job = submission.job
        annotate(job_id=job.job_id)
        payload = {
            "job_id": job.job_id,
            "status": str(job.status),
            "status_url": status_url(req, job.job_id),
            "created": submission.created,
            "restarted": submission.restarted,
            "replaced": submission.replaced,
        }
        return json_response(payload, 202 if submission.created or submission.restarted else 200)

    @bp.function_name("get_job")
    @bp.route(route="jobs/{job_id}", methods=["GET"])
    @api
    def get_job(req: func.HttpRequest) -> func.HttpResponse:
        return json_response(container.job_service.job_status(route_text(req, "job_id")))

    @bp.function_name("list_jobs")
    @bp.route(route="jobs", methods=["GET"])
    @api
    def list_jobs(req: func.HttpRequest) -> func.HttpResponse:
        page = container.job_service.list_jobs(
            status=query_text(req, "status"),
            job_type=query_text(req, "job_type"),
            limit=optional_int(req, "limit"),
            cursor=query_text(req, "cursor"),
        )
        return json_response(page)

    @bp.function_name("list_job_tasks")
    @bp.route(route="jobs/{job_id}/tasks", methods=["GET"])
    @api
    def list_job_tasks(req: func.HttpRequest) -> func.HttpResponse:
        page = container.job_service.list_tasks(
            route_text(req, "job_id"),
            stage=optional_int(req, "stage", minimum=1, maximum=INT4_MAX),
            status=query_text(req, "status"),
            limit=optional_int(req, "limit"),
            cursor=query_text(req, "cursor"),
        )
        return json_response(page)

    @bp.function_name("cancel_job")
    @bp.route(route="jobs/{job_id}/cancel", methods=["POST"])
    @api
    def cancel_job(req: func.HttpRequest) -> func.HttpResponse:
        job = container.job_control.cancel(route_text(req, "job_id"))
        return json_response(
            {"job_id": job.job_id, "status": str(job.status), "status_url": status_url(req, job.job_id)}
        )

    @bp.function_name("retry_job")
    @bp.route(route="jobs/{job_id}/retry", methods=["POST"])
    @api
    def retry_job(req: func.HttpRequest) -> func.HttpResponse:
        job = container.job_control.retry(route_text(req, "job_id"))
        payload = {
            "job_id": job.job_id,
            "status": str(job.status),
            "stage": job.stage,
            "status_url": status_url(req, job.job_id),
        }
        return json_response(payload, 202)

    @bp.function_name("list_job_types")
    @bp.route(route="job-types", methods=["GET"])
    @api
    def list_job_types(req: func.HttpRequest) -> func.HttpResponse:
        return json_response({"job_types": container.job_service.job_types()})

    return bp
