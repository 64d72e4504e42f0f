"""Task retry policy: attempts, exponential backoff with jitter, and Retry-After for throttling."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from services.engine.error_classification import ClassifiedError, ErrorCategory


def backoff_seconds(attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: uniform in [half, full] of min(cap, base * 2**(attempt-1))."""
    full = min(cap, base * (2 ** max(0, attempt - 1)))
    return full * (0.5 + 0.5 * rng())


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int
    base_seconds: float
    max_seconds: float

    def should_retry(self, error: ClassifiedError, attempts: int) -> bool:
        return error.retryable and attempts < self.max_attempts

    def delay_seconds(self, error: ClassifiedError, attempts: int, rng: Callable[[], float] = random.random) -> float:
        delay = backoff_seconds(attempts, self.base_seconds, self.max_seconds, rng)
        if error.category is ErrorCategory.THROTTLING and error.retry_after is not None:
            delay = max(delay, error.retry_after)
        return delay
