"""The job engine: Job -> Stage -> Task over Storage queues, with state and fan-in in Postgres.

Job types (controllers/) and domain libraries (services/raster, stac, inventory) depend on the
contract re-exported here and never on the engine's other modules; the engine imports no job
type. The composition root (services/container.py) builds the registry and wires the two.
"""

from services.engine.contract import (
    JobController,
    JobOutcome,
    StageDefinition,
    StageResults,
    TaskContext,
    TaskHandler,
    TaskSpec,
)
from services.engine.registry import JobTypeRegistry
from services.engine.retry_policy import RetryPolicy

__all__ = [
    "JobController",
    "JobOutcome",
    "JobTypeRegistry",
    "RetryPolicy",
    "StageDefinition",
    "StageResults",
    "TaskContext",
    "TaskHandler",
    "TaskSpec",
]
