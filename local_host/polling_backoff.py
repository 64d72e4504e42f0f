"""The queue listener's polling delay: WebJobs' RandomizedExponentialBackoffStrategy.

After a poll that found messages the delay is the minimum; each empty (or failed) poll adds a
randomized (±20 %) doubling increment to the minimum until the maximum, which then stays exact.
"""

from __future__ import annotations

import random

RANDOMIZATION_FACTOR = 0.2


class RandomizedExponentialBackoff:
    def __init__(self, minimum: float, maximum: float, rng: random.Random | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self._delta = minimum
        self._current = 0.0
        self._exponent = 0
        self._random = rng or random.Random()

    def next_delay(self, succeeded: bool) -> float:
        """Seconds to wait before the next poll, after a poll that found messages (``succeeded``) or not."""
        if succeeded:
            self._current = self.minimum
            self._exponent = 1
        elif self._current != self.maximum:
            interval = self.minimum
            if self._exponent > 0:
                factor = self._random.uniform(1.0 - RANDOMIZATION_FACTOR, 1.0 + RANDOMIZATION_FACTOR)
                interval += factor * 2.0 ** (self._exponent - 1) * self._delta
            if interval < self.maximum:
                self._current = interval
                self._exponent += 1
            else:
                self._current = self.maximum
        return self._current
