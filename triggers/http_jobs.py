"""HTTP triggers of the jobs API: decode the request, call JobService, encode JSON."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import azure.functions as func

from schemas.errors import InvalidRequestError, PayloadTooLargeError
from services.container import ServiceContainer
from triggers.http_responses import json_errors, json_response


def read_json_body(req: func.HttpRequest, max_bytes: int) -> Any:
    declared = req.headers.get("content-length")
    body = req.get_body() or b""
    if len(body) > max_bytes or (declared and declared.isdigit() and int(declared) > max_bytes):
        raise PayloadTooLargeError(f"request body over the {max_bytes}-byte limit")
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequestError(
            "request body is not valid JSON", details=[{"field": "body", "message": str(exc)}]
        ) from exc


def optional_int(req: func.HttpRequest, name: str) -> int | None:
    raw = req.params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise InvalidRequestError(
            f"query parameter {name!r} must be an integer", details=[{"field": name, "message": "not an integer"}]
        ) from exc


def status_url(req: func.HttpRequest, job_id: str) -> str:
    parts = urlsplit(req.url)
    return f"{parts.scheme}://{parts.netloc}/api/jobs/{job_id}"


def create_blueprint(container: ServiceContainer) -> func.Blueprint:
    bp = func.Blueprint()

    @bp.function_name("submit_job")
    @bp.route(route="jobs/{job_type}", methods=["POST"])
    @json_errors
    def submit_job(req: func.HttpRequest) -> func.HttpResponse:
        body = read_json_body(req, container.settings.max_request_bytes)
        submission = container.job_service.submit(req.route_params["job_type"], body)
        job = submission.job
        payload = {
            "job_id": job.job_id,
            "status": str(job.status),
            "status_url": status_url(req, job.job_id),
            "created": submission.created,
            "restarted": submission.restarted,
        }
        return json_response(payload, 202 if submission.created or submission.restarted else 200)

    @bp.function_name("get_job")
    @bp.route(route="jobs/{job_id}", methods=["GET"])
    @json_errors
    def get_job(req: func.HttpRequest) -> func.HttpResponse:
        return json_response(container.job_service.job_status(req.route_params["job_id"]))

    @bp.function_name("list_jobs")
    @bp.route(route="jobs", methods=["GET"])
    @json_errors
    def list_jobs(req: func.HttpRequest) -> func.HttpResponse:
        page = container.job_service.list_jobs(
            status=req.params.get("status") or None,
            job_type=req.params.get("job_type") or None,
            limit=optional_int(req, "limit"),
            cursor=req.params.get("cursor") or None,
        )
        return json_response(page)

    @bp.function_name("list_job_tasks")
    @bp.route(route="jobs/{job_id}/tasks", methods=["GET"])
    @json_errors
    def list_job_tasks(req: func.HttpRequest) -> func.HttpResponse:
        page = container.job_service.list_tasks(
            req.route_params["job_id"],
            stage=optional_int(req, "stage"),
            status=req.params.get("status") or None,
            limit=optional_int(req, "limit"),
            cursor=req.params.get("cursor") or None,
        )
        return json_response(page)

    @bp.function_name("cancel_job")
    @bp.route(route="jobs/{job_id}/cancel", methods=["POST"])
    @json_errors
    def cancel_job(req: func.HttpRequest) -> func.HttpResponse:
        job = container.job_control.cancel(req.route_params["job_id"])
        return json_response(
            {"job_id": job.job_id, "status": str(job.status), "status_url": status_url(req, job.job_id)}
        )

    @bp.function_name("retry_job")
    @bp.route(route="jobs/{job_id}/retry", methods=["POST"])
    @json_errors
    def retry_job(req: func.HttpRequest) -> func.HttpResponse:
        job = container.job_control.retry(req.route_params["job_id"])
        payload = {
            "job_id": job.job_id,
            "status": str(job.status),
            "stage": job.stage,
            "status_url": status_url(req, job.job_id),
        }
        return json_response(payload, 202)

    @bp.function_name("list_job_types")
    @bp.route(route="job-types", methods=["GET"])
    @json_errors
    def list_job_types(req: func.HttpRequest) -> func.HttpResponse:
        return json_response({"job_types": container.job_service.job_types()})

    return bp
