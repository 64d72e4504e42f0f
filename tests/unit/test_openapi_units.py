"""The OpenAPI document (GET /api/openapi.json, services/openapi/), checked offline.

function_app is imported in a fresh interpreter (as the Functions host does; no socket is opened at
import), which reports its HTTP functions, its job types, the strict build's problems and the body
the ``openapi_document`` function serves. The document must validate with openapi-spec-validator,
describe every HTTP function of the app (a route added without documentation fails here), and carry
every job type's parameter schema.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError
from pydantic import BaseModel

from schemas import api
from services.engine.job_service import OPTION_KEYS
from services.openapi import (
    ApiLimits,
    HttpRoute,
    JobTypeDoc,
    UndocumentedRouteError,
    build_document,
    operation_docs,
)
from triggers.http_responses import STATUS_CODES

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SECRET_KEY = "c2VjcmV0LWtleS1vZi10aGUtdGVzdA=="
SECRET_PASSWORD = "pw-not-in-the-document-9f3e"
ANONYMOUS = {"health", "health_live", "openapi_document", "api_docs", "dashboard_static"}

PROBE = """
import json, sys
import azure.functions as func
import function_app
from services.openapi import ApiLimits, build_document, http_routes, job_type_docs, undocumented, operation_docs

functions = function_app.app.get_functions()
routes = http_routes(functions)
limits = ApiLimits.from_settings(function_app.settings)
served = next(f for f in functions if f.get_function_name() == "openapi_document").get_user_function()
response = served(func.HttpRequest("GET", "http://127.0.0.1:7071/api/openapi.json", body=b""))
json.dump({
    "routes": [r.__dict__ for r in routes],
    "job_types": [c.job_type for c in function_app.container.registry.all()],
    "parameter_models": {c.job_type: c.parameters_model.__name__ for c in function_app.container.registry.all()},
    "problems": undocumented(routes, operation_docs(limits)),
    "status": response.status_code,
    "mimetype": response.mimetype,
    "served": response.get_body().decode("utf-8"),
}, sys.stdout)
"""


@pytest.fixture(scope="module")
def probe() -> dict[str, Any]:
    env = {
        "PATH": "/usr/bin:/bin",
        "AzureWebJobsStorage": (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={SECRET_KEY};BlobEndpoint=http://127.0.0.1:1/devstoreaccount1;"
            "QueueEndpoint=http://127.0.0.1:1/devstoreaccount1"
        ),
        "POSTGRES_HOST": "db.internal.example",
        "POSTGRES_PASSWORD": SECRET_PASSWORD,
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        check=False,
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def document(probe: dict[str, Any]) -> dict[str, Any]:
    assert probe["status"] == 200 and probe["mimetype"] == "application/json"
    served: dict[str, Any] = json.loads(probe["served"])
    return served


def operations(document: dict[str, Any]) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """operationId -> (path, method, operation)."""
    return {
        op["operationId"]: (path, method, op) for path, item in document["paths"].items() for method, op in item.items()
    }


def test_the_served_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    assert document["openapi"].startswith("3.1.")
    assert document["jsonSchemaDialect"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["servers"] == [{"url": "/api"}]


def test_an_invalid_document_is_rejected_by_the_validator(document: dict[str, Any]) -> None:
    """The validator really checks: a response without its required description is an error."""
    broken = json.loads(json.dumps(document))
    del broken["paths"]["/jobs"]["get"]["responses"]["200"]["description"]
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def test_every_http_function_of_the_app_is_documented(probe: dict[str, Any], document: dict[str, Any]) -> None:
    assert probe["problems"] == [], "document these routes in services/openapi/operations.py:\n" + "\n".join(
        probe["problems"]
    )
    ops = operations(document)
    for route in probe["routes"]:
        if route["name"] == "submit_job":
            continue  # one concrete path per job type: the next test
        path, method, _ = ops[route["name"]]
        assert method.upper() in route["methods"]
        assert path.strip("/") == route["route"]
    assert len(probe["routes"]) >= 12  # jobs, containers, health, the document itself at least


def test_a_route_without_documentation_fails_the_strict_build() -> None:
    routes = [
        HttpRoute("list_jobs", "jobs", ("GET",), False),
        HttpRoute("brand_new", "brand/new", ("GET",), False),
        HttpRoute("get_job", "jobs/{job_id}", ("DELETE",), False),
    ]
    with pytest.raises(UndocumentedRouteError) as caught:
        build_document(routes, [], ApiLimits(), strict=True)
    assert len(caught.value.problems) == 2
    assert "brand_new" in caught.value.problems[0] and "get_job" in caught.value.problems[1]
    lenient = build_document(routes, [], ApiLimits())
    assert list(lenient["paths"]) == ["/jobs"]  # served anyway, without the undocumented ones


def test_every_job_type_has_its_submission_path_and_parameter_schema(
    probe: dict[str, Any], document: dict[str, Any]
) -> None:
    schemas = document["components"]["schemas"]
    assert set(probe["job_types"]) >= {"hello_world", "process_raster", "inventory_container"}
    for job_type in probe["job_types"]:
        model_name = probe["parameter_models"][job_type]
        assert model_name in schemas, job_type
        post = document["paths"][f"/jobs/{job_type}"]["post"]
        assert post["operationId"] == f"submit_job_{job_type}"
        ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        body = schemas[ref.rsplit("/", 1)[1]]
        assert set(body["properties"]) == set(schemas[model_name]["properties"]) | set(OPTION_KEYS)
        assert body.get("additionalProperties") is False
        assert {"202", "200", "400", "413", "503"} <= set(post["responses"])


def test_job_types_schema_matches_the_registry(document: dict[str, Any]) -> None:
    """The hello_world parameter schema in the document is the model's own."""
    from controllers.hello_world import HelloWorldParameters

    schema = HelloWorldParameters.model_json_schema(ref_template="#/components/schemas/{model}")
    assert document["components"]["schemas"]["HelloWorldParameters"] == schema


def test_security_function_key_except_anonymous_routes(probe: dict[str, Any], document: dict[str, Any]) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["functionKeyHeader"] == {**schemes["functionKeyHeader"], "in": "header", "name": "x-functions-key"}
    assert schemes["functionKeyQuery"] == {**schemes["functionKeyQuery"], "in": "query", "name": "code"}
    anonymous = {r["name"] for r in probe["routes"] if r["anonymous"]}
    assert anonymous == ANONYMOUS & {r["name"] for r in probe["routes"]}
    for op_id, (_, _, op) in operations(document).items():
        name = "submit_job" if op_id.startswith("submit_job_") else op_id
        if name in anonymous:
            assert op["security"] == [] and "401" not in op["responses"], op_id
        else:
            assert op["security"] and "401" in op["responses"], op_id


def test_error_responses_follow_the_error_table(document: dict[str, Any]) -> None:
    mapped = {code for _, code in STATUS_CODES}
    for op_id, (_, _, op) in operations(document).items():
        for status, response in op["responses"].items():
            code = int(status)
            if code >= 400 and code != 401 and "application/json" in response.get("content", {}):
                assert code in mapped, (op_id, code)
                schema = response["content"]["application/json"]["schema"]
                refs = json.dumps(schema)
                assert "#/components/schemas/ErrorBody" in refs, (op_id, code)


def test_query_bounds_match_what_the_api_accepts() -> None:
    limits = ApiLimits(job_list_max_limit=7, blob_list_max_limit=9, poison_queues=("jobs-poison",))
    docs = operation_docs(limits)
    params = {p.name: p.schema for p in docs["list_jobs"].params}
    assert params["limit"] == {"type": "integer", "minimum": 1, "maximum": 7}
    assert params["status"]["enum"] == [
        "queued",
        "processing",
        "completed",
        "completed_with_errors",
        "failed",
        "cancelled",
    ]
    params = {p.name: p.schema for p in docs["list_container_blobs"].params}
    assert params["limit"]["maximum"] == 9
    assert {p.name: p.schema for p in docs["peek_poison_queue"].params}["queue"]["enum"] == ["jobs-poison"]
    assert {p.name: p.schema for p in docs["list_job_tasks"].params}["stage"]["maximum"] == 2**31 - 1


def test_every_schema_reference_resolves(document: dict[str, Any]) -> None:
    text = json.dumps(document)
    schemas = document["components"]["schemas"]
    for ref in {part.split('"', 1)[0] for part in text.split('"$ref": "')[1:]}:
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref
    assert "$defs" not in text


@pytest.mark.parametrize("model", api.RESPONSE_MODELS, ids=lambda m: m.__name__)
def test_every_response_model_is_in_the_document(document: dict[str, Any], model: type[BaseModel]) -> None:
    assert model.__name__ in document["components"]["schemas"]


def test_the_document_holds_no_secret_or_host(probe: dict[str, Any]) -> None:
    served = probe["served"]
    for secret in (SECRET_KEY, SECRET_PASSWORD, "db.internal.example", "devstoreaccount1", "127.0.0.1"):
        assert secret not in served


def test_job_type_docs_of_a_custom_registry() -> None:
    class Params(BaseModel):
        size: int = 1

    doc = build_document(
        [HttpRoute("submit_job", "jobs/{job_type}", ("POST",), False)], [JobTypeDoc("custom", "A test type.", Params)]
    )
    assert list(doc["paths"]) == ["/jobs/custom"]
    assert doc["components"]["schemas"]["Submit_custom"]["properties"]["size"]["type"] == "integer"
    validate(doc)
