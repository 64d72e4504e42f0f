"""Connection pool and transactions, with driver errors translated at this boundary."""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Self

import psycopg
import pybreaker
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool, PoolTimeout

from repositories.engine_repository import EngineRepository
from schemas.errors import DatabaseUnavailableError, RepositoryDataError, RepositoryError, TransactionConflictError

# SQLSTATEs of an unavailable or overloaded server: lock timeout, too many connections, admin shutdown.
_UNAVAILABLE_SQLSTATES = {"55P03", "53300", "57P01", "57P02", "57P03"}
# A transaction that lost a race (serialization failure, deadlock): retry it, but it is no outage.
_CONFLICT_SQLSTATES = {"40001", "40P01"}


# Set while an HTTP request is handled (``request_acquire_timeout``): how long to wait for a pooled
# connection before answering 503. None elsewhere (queue and timer triggers use the pool timeout).
_request_acquire_timeout: ContextVar[float | None] = ContextVar("geoetl_db_request_acquire_timeout", default=None)


@contextmanager
def request_acquire_timeout(seconds: float) -> Iterator[None]:
    """Within the block (an HTTP request), a pooled connection is awaited at most ``seconds``, and the
    circuit breaker is not consulted: the short wait is the fail-fast, and a request after Postgres
    is back is served as soon as the pool reconnects instead of after the breaker's reset time."""
    token = _request_acquire_timeout.set(seconds)
    try:
        yield
    finally:
        _request_acquire_timeout.reset(token)


def translate_driver_error(exc: Exception) -> RepositoryError:
    """Map a psycopg/pool exception to our repository error types."""
    sqlstate = getattr(exc, "sqlstate", None) or ""
    if sqlstate in _CONFLICT_SQLSTATES:  # before the class check: psycopg files these under OperationalError
        return TransactionConflictError(f"transaction conflict ({type(exc).__name__}, SQLSTATE {sqlstate})")
    if isinstance(exc, PoolTimeout | psycopg.OperationalError | psycopg.InterfaceError):
        return DatabaseUnavailableError(f"database unavailable: {exc}")
    if sqlstate in _UNAVAILABLE_SQLSTATES or sqlstate.startswith("08"):
        return DatabaseUnavailableError(f"database busy ({sqlstate}): {exc}")
    if sqlstate.startswith("22"):  # the value, not the server: said without the server's raw text
        return RepositoryDataError(f"the database refused a value ({type(exc).__name__}, SQLSTATE {sqlstate})")
    return RepositoryError(f"database error ({sqlstate}): {exc}")


def server_closed(conn: psycopg.Connection[Any]) -> bool:
    """Whether an idle connection is dead, without a round trip: its socket is readable only if the
    server sent something unasked, i.e. an error or EOF (backend terminated, server restarted);
    only then is it probed."""
    if conn.closed or conn.broken:
        return True
    readable, _, _ = select.select([conn.fileno()], [], [], 0)
    if not readable:
        return False
    try:
        ConnectionPool.check_connection(conn)
    except psycopg.Error:
        return True
    return False


# How long the reason the pool's last connection attempt failed is quoted to a caller the pool kept waiting.
_CONNECT_FAILURE_MEMORY_SECONDS = 60.0
# SQLSTATEs of a refused login: invalid_password, invalid_authorization_specification.
_LOGIN_REFUSED_SQLSTATES = {"28P01", "28000"}


def login_refused(error: psycopg.OperationalError) -> bool:
    """Whether a failed connection attempt is the server refusing the password. libpq reports no
    SQLSTATE for errors while connecting, so this goes by whether a password was sent and the
    server's (English: Azure's are) "password authentication failed"."""
    if error.sqlstate in _LOGIN_REFUSED_SQLSTATES:
        return True
    pgconn = error.pgconn
    return bool(pgconn is not None and pgconn.used_password and "authentication failed" in str(error).lower())


def _one_line(exc: BaseException) -> str:
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__


class Database:
    """A lazily opened psycopg pool whose connections use the app's schema.

    ``password_provider`` (see ``repositories/postgres_credentials.py``) is called for every new
    connection and its result, when not None, is the connection's password (over the conninfo's):
    a rotated Key Vault secret or a fresh Entra token reaches new connections without a restart.
    When the server refuses the login (wrong password), ``on_password_rejected`` is called, e.g.
    to drop a cached secret so the pool's next attempt reads the rotated one.
    ``prepare_threshold`` is psycopg's (None: no server-side prepared statements, for PgBouncer).
    A caller the pool keeps waiting because connections fail is told why the last attempt failed.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str,
        min_size: int = 1,
        max_size: int = 10,
        timeout_seconds: float = 30.0,
        reconnect_timeout_seconds: float = 5.0,
        breaker: pybreaker.CircuitBreaker | None = None,
        password_provider: Callable[[], str | None] | None = None,
        on_password_rejected: Callable[[], None] | None = None,
        prepare_threshold: int | None = 5,
    ) -> None:
        self._conninfo = conninfo
        self._password_provider = password_provider
        self._on_password_rejected = on_password_rejected
        self._prepare_threshold = prepare_threshold
        # (when, why) the pool's last connection attempt failed; cleared by its next success.
        self._connect_failure: tuple[float, str] | None = None
        self.schema = schema
        self._min_size = min_size
        self._max_size = max_size
        self._timeout = timeout_seconds
        self._reconnect_timeout = reconnect_timeout_seconds
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()
        # Counts DatabaseUnavailableError only; while open, transactions fail fast.
        self._breaker = breaker

    def login_password(self) -> str | None:
        """The password a new connection logs in with now: the provider's (a fresh Entra token or
        the Key Vault secret), or None when the conninfo's own is used. For clients that open
        connections of their own (ADBC)."""
        return self._password_provider() if self._password_provider is not None else None

    def _connection_kwargs(self) -> dict[str, Any]:
        """Arguments of each new connection, evaluated by the pool when it connects."""
        kwargs: dict[str, Any] = {"row_factory": dict_row, "prepare_threshold": self._prepare_threshold}
        if self._password_provider is not None:
            try:
                password = self._password_provider()
            except Exception as exc:
                self._connect_failure = (time.monotonic(), f"no password: {_one_line(exc)}")
                raise
            if password is not None:
                kwargs["password"] = password
        return kwargs

    def _connected(self, error: psycopg.OperationalError | None) -> None:
        """Told by the pool's connections how each attempt ended (None: connected)."""
        if error is None:
            self._connect_failure = None
            return
        self._connect_failure = (time.monotonic(), _one_line(error))
        if self._on_password_rejected is not None and login_refused(error):
            self._on_password_rejected()

    def _connection_class(self) -> type[psycopg.Connection[Any]]:
        """The pool's connection class: psycopg's, reporting each connection attempt to ``_connected``."""
        report = self._connected

        class _PoolConnection(psycopg.Connection[Any]):
            @classmethod
            def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
                try:
                    conn = super().connect(conninfo, **kwargs)
                except psycopg.OperationalError as error:
                    report(error)
                    raise
                report(None)
                return conn

        return _PoolConnection

    def _unavailable(self, exc: PoolTimeout) -> RepositoryError:
        """A pool timeout, with why the pool's last connection attempt failed, if it did lately."""
        failure = self._connect_failure
        if failure is None or time.monotonic() - failure[0] > _CONNECT_FAILURE_MEMORY_SECONDS:
            return translate_driver_error(exc)
        return DatabaseUnavailableError(f"database unavailable: {exc}; last connection attempt: {failure[1]}")

    def _configure(self, conn: psycopg.Connection) -> None:
        conn.execute(psycopg.sql.SQL("SET search_path TO {}, public").format(psycopg.sql.Identifier(self.schema)))
        conn.commit()

    @property
    def pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                self._pool = ConnectionPool(
                    self._conninfo,
                    connection_class=self._connection_class(),
                    min_size=self._min_size,
                    max_size=self._max_size,
                    timeout=self._timeout,
                    # A failed connection attempt is retried with doubling delays, and while it is,
                    # the pool adds no other connection for waiting clients: with the library's
                    # 5-minute default one unlucky attempt (server restarting, connection killed
                    # while being configured) can make every caller wait the full pool timeout.
                    reconnect_timeout=self._reconnect_timeout,
                    kwargs=self._connection_kwargs,
                    configure=self._configure,
                    name=f"geoetl-{self.schema}",
                    open=False,
                )
                self._pool.open(wait=False)
            return self._pool

    @contextmanager
    def transaction(self) -> Iterator[EngineRepository]:
        """One transaction: commits on success, rolls back on error. Driver errors are translated;
        with a circuit breaker, an open circuit raises DatabaseUnavailableError without trying
        (outside HTTP requests, see ``request_acquire_timeout``)."""
        if self._breaker is None or _request_acquire_timeout.get() is not None:
            with self._translated_transaction() as repo:
                yield repo
            return
        try:
            with self._breaker.calling(), self._translated_transaction() as repo:
                yield repo
        except pybreaker.CircuitBreakerError as exc:
            raise DatabaseUnavailableError(f"postgres circuit open: {exc}") from exc

    @contextmanager
    def _live_connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection from the pool, like ``pool.connection()``, skipping dead idle ones.

        Dead connections are closed (the pool replaces them) and the next one is taken at once.
        The pool's own ``check`` would sleep between failed checks with a doubling delay (1, 2, 4,
        8, 16 s), so after a burst of killed connections one caller could wait out the whole pool
        timeout although live connections were back within a second.
        """
        pool = self.pool
        request_timeout = _request_acquire_timeout.get()
        timeout = self._timeout if request_timeout is None else min(request_timeout, self._timeout)
        deadline = time.monotonic() + timeout
        while True:
            conn = pool.getconn(timeout=max(0.001, deadline - time.monotonic()))
            if not server_closed(conn):
                break
            conn.close()
            pool.putconn(conn)  # closed: the pool discards it and connects a replacement
        try:
            with conn:  # commit on success, roll back on error (the pool keeps it open)
                yield conn
        finally:
            pool.putconn(conn)

    @contextmanager
    def _translated_transaction(self, autocommit: bool = False) -> Iterator[EngineRepository]:
        try:
            with self._live_connection() as conn:
                if autocommit:
                    conn.autocommit = True
                    try:
                        yield EngineRepository(conn)
                    finally:
                        conn.autocommit = False
                else:
                    with conn.transaction():
                        yield EngineRepository(conn)
        except PoolTimeout as exc:
            raise self._unavailable(exc) from exc
        except psycopg.Error as exc:
            raise translate_driver_error(exc) from exc

    @contextmanager
    def statements(self) -> Iterator[EngineRepository]:
        """Autocommit: each statement is its own transaction (one round trip instead of three).
        For single guarded statements (claims) and reads that need no common snapshot."""
        if self._breaker is None or _request_acquire_timeout.get() is not None:
            with self._translated_transaction(autocommit=True) as repo:
                yield repo
            return
        try:
            with self._breaker.calling(), self._translated_transaction(autocommit=True) as repo:
                yield repo
        except pybreaker.CircuitBreakerError as exc:
            raise DatabaseUnavailableError(f"postgres circuit open: {exc}") from exc

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for bulk work outside the engine's queries (stage_vector's COPY and
        swap): the caller opens its own transactions (``conn.transaction()``); whatever is left open
        commits on success. Driver errors the caller lets through are translated."""
        try:
            with self._live_connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise self._unavailable(exc) from exc
        except psycopg.Error as exc:
            raise translate_driver_error(exc) from exc

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
