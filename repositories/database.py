"""Connection pool and transactions, with driver errors translated at this boundary."""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pybreaker
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from repositories.engine_repository import EngineRepository
from schemas.errors import DatabaseUnavailableError, RepositoryError

# SQLSTATE classes worth retrying: connection exceptions, serialization failure, deadlock,
# lock timeout, too many connections, admin shutdown.
_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03", "53300", "57P01", "57P02", "57P03"}


def translate_driver_error(exc: Exception) -> RepositoryError:
    """Map a psycopg/pool exception to our repository error types."""
    if isinstance(exc, PoolTimeout | psycopg.OperationalError | psycopg.InterfaceError):
        return DatabaseUnavailableError(f"database unavailable: {exc}")
    sqlstate = getattr(exc, "sqlstate", None)
    if sqlstate in _TRANSIENT_SQLSTATES or (sqlstate or "").startswith("08"):
        return DatabaseUnavailableError(f"database busy ({sqlstate}): {exc}")
    return RepositoryError(f"database error ({sqlstate}): {exc}")


def check_idle_connection(conn: psycopg.Connection[Any]) -> None:
    """Pool checkout check without a round trip: an idle connection whose socket is readable has
    been closed or terminated by the server (it sent an error or EOF), so only then probe it
    (the probe raises and the pool replaces the connection)."""
    if conn.closed or conn.broken:
        raise psycopg.OperationalError("connection is closed")
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if readable:
        ConnectionPool.check_connection(conn)


class Database:
    """A lazily opened psycopg pool whose connections use the app's schema."""

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str,
        min_size: int = 1,
        max_size: int = 10,
        timeout_seconds: float = 30.0,
        breaker: pybreaker.CircuitBreaker | None = None,
    ) -> None:
        self._conninfo = conninfo
        self.schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout_seconds
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()
        # Counts DatabaseUnavailableError only; while open, transactions fail fast.
        self._breaker = breaker

    def _configure(self, conn: psycopg.Connection) -> None:
        conn.execute(psycopg.sql.SQL("SET search_path TO {}, public").format(psycopg.sql.Identifier(self.schema)))
        conn.commit()

    @property
    def pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self._conninfo,
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=self._timeout,
                    kwargs={"row_factory": dict_row},
                    configure=self._configure,
                    check=check_idle_connection,
                    name=f"geoetl-{self.schema}",
                    open=False,
                )
                self._pool.open(wait=False)
            return self._pool

    @contextmanager
    def transaction(self) -> Iterator[EngineRepository]:
        """One transaction: commits on success, rolls back on error. Driver errors are translated;
        with a circuit breaker, an open circuit raises DatabaseUnavailableError without trying."""
        if self._breaker is None:
            with self._translated_transaction() as repo:
                yield repo
            return
        try:
            with self._breaker.calling(), self._translated_transaction() as repo:
                yield repo
        except pybreaker.CircuitBreakerError as exc:
            raise DatabaseUnavailableError(f"postgres circuit open: {exc}") from exc

    @contextmanager
    def _translated_transaction(self, autocommit: bool = False) -> Iterator[EngineRepository]:
        try:
            with self.pool.connection() as conn:
                if autocommit:
                    conn.autocommit = True
                    try:
                        yield EngineRepository(conn)
                    finally:
                        conn.autocommit = False
                else:
                    with conn.transaction():
                        yield EngineRepository(conn)
        except (psycopg.Error, PoolTimeout) as exc:
            raise translate_driver_error(exc) from exc

    @contextmanager
    def statements(self) -> Iterator[EngineRepository]:
        """Autocommit: each statement is its own transaction (one round trip instead of three).
        For single guarded statements (claims) and reads that need no common snapshot."""
        if self._breaker is None:
            with self._translated_transaction(autocommit=True) as repo:
                yield repo
            return
        try:
            with self._breaker.calling(), self._translated_transaction(autocommit=True) as repo:
                yield repo
        except pybreaker.CircuitBreakerError as exc:
            raise DatabaseUnavailableError(f"postgres circuit open: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
