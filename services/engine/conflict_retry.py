"""A transaction that lost a race (serialization failure, deadlock: TransactionConflictError) is run
again at once, a few times, by the service that owns it. The whole transaction runs again, so only
methods that open and commit their own transactions, and publish after commit, are decorated."""

from __future__ import annotations

from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random

from schemas.errors import TransactionConflictError

retry_on_conflict = retry(
    retry=retry_if_exception_type(TransactionConflictError),
    stop=stop_after_attempt(5),
    wait=wait_random(0.01, 0.2),
    reraise=True,
)
