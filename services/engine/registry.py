"""The engine's lookup of job types by name; who is in it is decided at the composition root."""

from __future__ import annotations

from typing import Any

from services.engine.contract import JobController


class JobTypeRegistry:
    def __init__(self, controllers: list[JobController[Any]]) -> None:
        self._by_type: dict[str, JobController[Any]] = {}
        for controller in controllers:
            if controller.job_type in self._by_type:
                raise ValueError(f"job type {controller.job_type!r} registered twice")
            if not controller.stages:
                raise ValueError(f"job type {controller.job_type!r} declares no stages")
            self._by_type[controller.job_type] = controller

    def get(self, job_type: str) -> JobController[Any] | None:
        return self._by_type.get(job_type)

    def all(self) -> list[JobController[Any]]:
        return [self._by_type[name] for name in sorted(self._by_type)]
