"""Schemathesis against the local stack: every operation of GET /api/openapi.json, positive and
negative examples, checked for 5xx answers and for answers the document does not describe.

    .venv/bin/python -m bench.openapi_fuzz [--examples 1000] [--negative 1000] [--pinned 200]
                                           [--workers 1] [--only REGEX] [--seed 0]

Starts its own stack (Azurite + throwaway database) and the local Functions host, seeds it
(``seed_stack``: containers with blobs, a completed and a failed job, dead letters), loads the
document from the host and runs each operation's examples (Hypothesis, derandomized: the same
seed gives the same run), plus ``--pinned`` examples per seeded resource with its id fixed, so
200/202/409 answers get checked, not only 404s.
Prints one line per operation (examples, answers by status, failures) and writes
bench/out/openapi-fuzz-<stamp>.json. tests/integration/test_openapi_fuzz.py runs the same
``fuzz_operations`` with 100 examples per operation, in ``make test``.

Checks: not_a_server_error (no 5xx), status_code_conformance (the status is documented),
content_type_conformance and response_schema_conformance (the body matches the documented
schema; every response model forbids undocumented fields).

hello_world submissions are capped (n ≤ 3, sleep_ms ≤ 50) so the jobs the run creates finish at
once instead of fanning out up to 1000 tasks sleeping up to 120 s each (uncapped, the one local
worker soon stopped answering HTTP within the 30 s request timeout); the capped body is still one
the document allows.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import hypothesis
import requests
from hypothesis import HealthCheck, Phase
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
MAX_FAILURES_KEPT = 5
# Submitting these starts real work (listing containers, reading rasters); the bounded run leaves
# them to the bench run.
HEAVY_OPERATIONS = ("submit_job_process_raster", "submit_job_inventory_container", "submit_job_catalog_container",
                    "submit_job_extract_metadata")  # fmt: skip


@dataclass
class OperationStats:
    operation: str
    method: str
    path: str
    examples: dict[str, int] = field(default_factory=dict)  # generation mode -> examples run
    statuses: Counter[int] = field(default_factory=Counter)
    failures: int = 0
    failure_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.examples.values())

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["statuses"] = {str(k): v for k, v in sorted(self.statuses.items())}
        return out


def _whole(value: Any, low: int, high: int) -> int | None:
    """``value`` as an int when it is a whole JSON number in [low, high] (0.0 counts: JSON Schema's
    integer type allows it, and so does pydantic), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value != value or value in (float("inf"), float("-inf")) or value != int(value):
        return None
    return int(value) if low <= value <= high else None


def cap_hello_world(case: Any) -> Any:
    """Keep a generated hello_world job small (see the module doc); other cases pass unchanged."""
    body = case.body
    if case.operation.definition.raw.get("operationId") == "submit_job_hello_world" and isinstance(body, dict):
        if (n := _whole(body.get("n"), 1, 1000)) is not None:
            body["n"] = 1 + n % 3
        if (sleep_ms := _whole(body.get("sleep_ms"), 0, 120_000)) is not None:
            body["sleep_ms"] = sleep_ms % 51
    return case


def _describe(exc: BaseException, case: Any) -> str:
    text = str(exc).strip().replace("\n\n", "\n")
    try:
        curl = case.as_curl_command()
    except Exception:  # the description matters more than the reproduction line
        curl = f"{case.method} {case.formatted_path}"
    return f"{text[:1500]}\n  reproduce: {curl[:600]}"


def operation_id(operation: Any) -> str:
    return str(operation.definition.raw.get("operationId") or operation.label)


def fuzz_operations(
    schema: Any,
    base_url: str,
    *,
    positive: int,
    negative: int,
    include: Callable[[str], bool] = lambda _: True,
    seed: int = 0,
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
    pins: Mapping[str, Sequence[Any]] | None = None,
    pinned: int = 0,
    on_result: Callable[[OperationStats], None] | None = None,
) -> list[OperationStats]:
    """Run every included operation of ``schema`` (a schemathesis OpenAPI schema) against
    ``base_url``: ``positive`` and ``negative`` examples each (Hypothesis may stop early when an
    operation's inputs are exhausted, e.g. an operation without parameters has one input).

    ``pins`` maps a path parameter to values that exist (a seeded job's id, a dashboard file): an
    operation with that parameter also runs ``pinned`` positive examples per value with it fixed
    (the rest generated), so the answers of existing resources are checked too, not only 404s."""
    session = requests.Session()
    results = []
    operations = [result.ok() for result in schema.get_all_operations()]
    # Deletions last: the seeded dead letters are requeued before they are deleted.
    operations.sort(key=lambda op: op.method.upper() == "DELETE")
    for operation in operations:
        name = operation_id(operation)
        if not include(name):
            continue
        stats = OperationStats(name, operation.method.upper(), operation.path)
        started = time.perf_counter()
        runs: list[tuple[str, GenerationMode, int, dict[str, Any] | None]] = [
            ("positive", GenerationMode.POSITIVE, positive, None),
            ("negative", GenerationMode.NEGATIVE, negative, None),
        ]
        for param in re.findall(r"\{(\w+)\}", operation.path):
            for value in (pins or {}).get(param, ()):
                runs.append(("pinned", GenerationMode.POSITIVE, pinned, {param: value}))
        for label, mode, count, fixed in runs:
            if count > 0:
                ran = _run(operation, mode, count, seed, base_url, session, headers, stats, timeout, fixed)
                stats.examples[label] = stats.examples.get(label, 0) + ran
        stats.seconds = round(time.perf_counter() - started, 2)
        results.append(stats)
        if on_result is not None:
            on_result(stats)
    session.close()
    return results


def _run(
    operation: Any,
    mode: GenerationMode,
    count: int,
    seed: int,
    base_url: str,
    session: requests.Session,
    headers: dict[str, str] | None,
    stats: OperationStats,
    timeout: float,
    path_parameters: dict[str, Any] | None = None,
) -> int:
    ran = 0
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @hypothesis.settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @hypothesis.seed(seed)
    @hypothesis.given(case=strategy.map(cap_hello_world))
    def run(case: Any) -> None:
        nonlocal ran
        ran += 1
        try:
            response = case.call(base_url=base_url, session=session, headers=headers, timeout=timeout)
            stats.statuses[response.status_code] += 1
            case.validate_response(response, checks=CHECKS)
        except (Exception, BaseExceptionGroup) as exc:  # recorded, not raised: every example runs
            stats.failures += 1
            if len(stats.failure_samples) < MAX_FAILURES_KEPT:
                stats.failure_samples.append(_describe(exc, case))

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):
        run()
    return ran


def format_table(results: Sequence[OperationStats]) -> str:
    lines = [f"{'operation':<32} {'method':<6} {'pos':>5} {'neg':>5} {'pin':>4} {'fail':>4} {'s':>5}  statuses"]
    for r in results:
        statuses = " ".join(f"{k}:{v}" for k, v in sorted(r.statuses.items()))
        counts = " ".join(f"{r.examples.get(k, 0):>{w}}" for k, w in (("positive", 5), ("negative", 5), ("pinned", 4)))
        lines.append(f"{r.operation:<32} {r.method:<6} {counts} {r.failures:>4} {r.seconds:>5.1f}  {statuses}")
    total = sum(r.total for r in results)
    failures = sum(r.failures for r in results)
    lines.append(f"{len(results)} operations, {total} examples, {failures} failures")
    return "\n".join(lines)


def failure_report(results: Iterable[OperationStats]) -> str:
    return "\n".join(
        f"--- {r.operation} ({r.failures} failures)\n" + "\n".join(r.failure_samples) for r in results if r.failures
    )


# --- seeding the stack so reads find something ---------------------------------------------------


@dataclass(frozen=True)
class Seeded:
    """What ``seed_stack`` made: values of path parameters that name existing resources."""

    completed_job: str
    failed_job: str
    dead_letters: tuple[int, ...]
    assets: tuple[str, ...]
    containers: tuple[str, ...]

    def pins(self) -> dict[str, list[Any]]:
        return {
            "job_id": [self.completed_job, self.failed_job],
            "container": list(self.containers),
            "id": list(self.dead_letters),
            "name": list(self.assets),
        }


def _wait(what: str, probe: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := probe()) is not None:
            return value
        time.sleep(0.2)
    raise TimeoutError(f"{what}: not within {timeout} s")


def _terminal_job(api: str, body: dict[str, Any], timeout: float) -> str:
    answer = requests.post(f"{api}/jobs/hello_world", json=body, timeout=30)
    answer.raise_for_status()
    job_id = str(answer.json()["job_id"])

    def ended() -> str | None:
        status = requests.get(f"{api}/jobs/{job_id}", timeout=30).json()["status"]
        return job_id if status in ("completed", "failed", "cancelled", "completed_with_errors") else None

    return str(_wait(f"job {job_id} terminal", ended, timeout))


def seed_stack(
    api: str,
    connection_string: str,
    *,
    containers: Sequence[str] = ("bronze", "silver"),
    job_queue: str = "geospatial-jobs",
    timeout: float = 90.0,
) -> Seeded:
    """Something for every read to find: the input and output ``containers`` (a few blobs in the
    first, one nested); a completed and a failed hello_world job; two dead letters (the poison
    queue's reconciler records what lands there: a job message of the failed job, and one that is
    not JSON), so requeue answers 202 once and 409 after."""
    import base64

    from azure.storage.blob import BlobServiceClient
    from azure.storage.queue import QueueClient

    service = BlobServiceClient.from_connection_string(connection_string)
    for name in containers:
        client = service.get_container_client(name)
        if not client.exists():
            client.create_container()
    first = service.get_container_client(containers[0])
    for blob in ("a.tif", "b.txt", "dir/c.tif", "dir/sub/d.json"):
        first.upload_blob(blob, b"x" * 16, overwrite=True)
    completed = _terminal_job(api, {"n": 2, "message": "seed"}, timeout)
    failed = _terminal_job(api, {"n": 1, "message": "seed-failed", "fail_ratio": 1.0}, timeout)
    poison = QueueClient.from_connection_string(connection_string, f"{job_queue}-poison")
    with contextlib.suppress(Exception):  # exists already
        poison.create_queue()
    for text in (f'{{"job_id": "{failed}", "stage": 1}}', "not a job message"):
        poison.send_message(base64.b64encode(text.encode()).decode())

    def dead_letters() -> tuple[int, ...] | None:
        listed = requests.get(f"{api}/dead-letters", timeout=30).json()["dead_letters"]
        return tuple(int(d["id"]) for d in listed) if len(listed) >= 2 else None

    ids = _wait("two dead letters", dead_letters, timeout)
    try:
        from services.dashboard import asset_names

        assets = tuple(asset_names())
    except ImportError:
        assets = ()
    return Seeded(completed, failed, ids, assets, tuple(containers))


def load_schema(api: str) -> Any:
    """The host's document as a schemathesis schema. Loaded as a dict: ``from_url`` leaves out the
    operation that serves the document itself, and that one is fuzzed too."""
    import schemathesis

    answer = requests.get(f"{api}/openapi.json", timeout=30)
    answer.raise_for_status()
    return schemathesis.openapi.from_dict(answer.json())


def main(argv: Sequence[str] | None = None) -> int:
    from bench.common import OUT_DIR, log, running_host, running_stack, sigterm_as_keyboard_interrupt, utc_stamp
    from bench.measure import write_report

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--examples", type=int, default=1000, help="positive examples per operation")
    parser.add_argument("--negative", type=int, default=1000, help="negative examples per operation")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--only", default="", help="regex: only operations whose id matches")
    parser.add_argument("--pinned", type=int, default=200, help="examples per existing resource (job, file…)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sigterm_as_keyboard_interrupt()
    stamp = utc_stamp()
    only = re.compile(args.only) if args.only else None
    with (
        running_stack(OUT_DIR / f"openapi-fuzz-{stamp}", db_prefix="geoetl_fuzz") as stack,
        running_host(stack, workers=args.workers, log_file=OUT_DIR / f"host-openapi-fuzz-{stamp}.log") as host,
    ):
        api = f"{host.base_url}/api"
        seeded = seed_stack(api, stack.storage_connection_string, job_queue=stack.job_queue)
        schema = load_schema(api)
        started = time.perf_counter()
        results = fuzz_operations(
            schema,
            api,
            positive=args.examples,
            negative=args.negative,
            include=lambda name: only is None or only.search(name) is not None,
            seed=args.seed,
            pins=seeded.pins(),
            pinned=args.pinned,
            on_result=lambda r: log(f"{r.operation}: {r.examples} examples, {r.failures} failures, {r.seconds} s"),
        )
        elapsed = time.perf_counter() - started
    print(format_table(results))
    print(f"runtime {elapsed:.1f} s")
    if any(r.failures for r in results):
        print(failure_report(results))
    path = write_report(
        "openapi-fuzz",
        {"args": vars(args), "seconds": round(elapsed, 1), "operations": [r.as_json() for r in results]},
    )
    log(f"report: {path}")
    return 1 if any(r.failures for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
