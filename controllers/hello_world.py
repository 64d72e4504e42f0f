"""hello_world: the engine's demo and test job. Stage 1 "greet" fans out n tasks; stage 2 "reply"
makes n lineage tasks that each read their own greeting; the finalizer returns the replies."""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import TransientTaskError
from services.engine import JobController, JobOutcome, StageDefinition, StageResults, TaskContext, TaskSpec


class HelloWorldParameters(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(default=3, ge=1, le=1000, description="Number of greet tasks (and replies).")
    message: str | None = Field(default=None, max_length=500, description="Optional text added to each greeting.")
    fail_ratio: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Share of greet tasks that raise on every attempt (for tests)."
    )
    max_failure_ratio: float | None = Field(
        default=None, ge=0.0, le=1.0, description="Override of the stage failure policy (default 0)."
    )
    sleep_ms: int = Field(default=0, ge=0, le=120_000, description="Time each task spends working (load tests).")

    @property
    def failing_greetings(self) -> int:
        return round(self.n * self.fail_ratio)


class InjectedFailureError(TransientTaskError):
    """Raised by greet tasks chosen by fail_ratio: a transient failure, retried up to the attempt limit."""


def item_key(index: int) -> str:
    return f"item_{index:04d}"


def greet(ctx: TaskContext[HelloWorldParameters]) -> dict[str, Any]:
    index = int(ctx.parameters["index"])
    time.sleep(ctx.job_parameters.sleep_ms / 1000)
    if index < ctx.job_parameters.failing_greetings:
        raise InjectedFailureError(f"greeting {index} fails on purpose (fail_ratio={ctx.job_parameters.fail_ratio})")
    text = f"Hello #{index} from geoetl"
    if ctx.job_parameters.message:
        text += f": {ctx.job_parameters.message}"
    return {"index": index, "greeting": text}


def reply(ctx: TaskContext[HelloWorldParameters]) -> dict[str, Any]:
    if ctx.predecessor_result is None or "greeting" not in ctx.predecessor_result:
        raise ValueError(f"task {ctx.task_id} has no greeting from its predecessor")
    greeting = ctx.predecessor_result["greeting"]
    time.sleep(ctx.job_parameters.sleep_ms / 1000)
    return {"index": ctx.predecessor_result["index"], "reply": f"Reply to '{greeting}'"}


class HelloWorldController(JobController[HelloWorldParameters]):
    job_type = "hello_world"
    description = "Demo job: n greetings fanned out, n lineage replies fanned in."
    parameters_model = HelloWorldParameters
    stages = (
        StageDefinition(name="greet", handler=greet),
        StageDefinition(name="reply", handler=reply),
    )

    def failure_ratio_limit(self, params: HelloWorldParameters) -> float:
        return self.max_failure_ratio if params.max_failure_ratio is None else params.max_failure_ratio

    def create_tasks(self, stage: int, params: HelloWorldParameters, previous_results: StageResults) -> list[TaskSpec]:
        if stage == 1:
            return [TaskSpec(key=item_key(i), parameters={"index": i}) for i in range(params.n)]
        return [TaskSpec(key=key, depends_on_predecessor=True) for key in sorted(previous_results)]

    def finalize(self, params: HelloWorldParameters, outcome: JobOutcome) -> dict[str, Any]:
        replies = outcome.results_by_stage.get("reply", {})
        return {"replies": [replies[key]["reply"] for key in sorted(replies)]}
