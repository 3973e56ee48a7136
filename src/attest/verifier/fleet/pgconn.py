"""PostgreSQL connections that survive the server going away (an adapter).

A ``Connection`` holds one psycopg connection, serialised by its lock, and re-opens it when it
is found broken: a statement that fails because the connection was lost (the server stopped,
restarted or was unreachable) drops the connection and raises ``DatabaseUnavailable``; the next
use connects again, at most once per backoff step (``RECONNECT_MIN`` doubling to
``RECONNECT_MAX`` seconds) so a server that is away is not hammered and callers fail fast in
between -- and at once when another connection of the store has got through. Errors that
leave the connection usable (a constraint, a serialisation failure) are raised as they are.

``DatabaseHealth`` is shared by a store's connections: it says whether the database answered
the last time it was used, since when, and why not; it logs once per change of state, not per
failed statement.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from attest.errors import DatabaseUnavailable

logger = logging.getLogger(__name__)

RECONNECT_MIN = 0.1  # seconds before the first reconnection attempt
RECONNECT_MAX = 2.0  # the longest wait between two attempts (bounds the recovery time)
CONNECT_TIMEOUT = 3  # seconds, per connection attempt


@dataclass(frozen=True, slots=True)
class DatabaseState:
    up: bool
    detail: str = ""  # why not, when down
    since: float = 0.0  # POSIX seconds of the last change of state

    def to_json(self) -> dict[str, Any]:
        return {"up": self.up, "detail": self.detail or None}


class DatabaseHealth:
    """Whether the database answered when last used (thread-safe; logs state changes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = DatabaseState(True, "", time.time())
        self.outages = 0  # how many times the database went away (a connection's epoch)
        # Whether the database ever answered: a first connection that fails is not an outage
        # to log (the caller's DatabaseUnavailable says it once, e.g. ``attest fleet ls``).
        self._answered = False

    @property
    def state(self) -> DatabaseState:
        return self._state

    def up(self) -> None:
        with self._lock:
            self._answered = True
            if self._state.up:
                return
            down_for = time.time() - self._state.since
            self._state = DatabaseState(True, "", time.time())
        logger.warning("database reachable again", extra={"down_seconds": round(down_for, 3)})

    def down(self, detail: str) -> None:
        with self._lock:
            if not self._state.up:
                return
            self._state = DatabaseState(False, detail, time.time())
            self.outages += 1
            answered = self._answered
        if answered:
            logger.error("database unreachable: retrying with backoff", extra={"error": detail})
        else:
            logger.info("database unreachable at the first connection", extra={"error": detail})


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


class Connection:
    """One psycopg connection, re-opened with backoff after it is lost."""

    def __init__(self, psycopg: Any, dsn: str, *, autocommit: bool, health: DatabaseHealth) -> None:
        self._psycopg = psycopg
        self._dsn = dsn
        self._autocommit = autocommit
        self._health = health
        self._lock = threading.Lock()
        self._conn: Any = None
        self._epoch = 0  # the health's outage count when this connection was opened
        self._delay = RECONNECT_MIN
        self._next_attempt = 0.0
        self._last_error = ""

    def _connection(self) -> Any:
        conn = self._conn
        # A connection opened before an outage its peers saw is dead even if it does not know
        # yet (idle through the restart): re-opened before use, not after losing a statement.
        fresh = self._epoch == self._health.outages
        if conn is not None and not conn.closed and not conn.broken and fresh:
            return conn
        self._drop()
        now = time.monotonic()
        # Backoff while the database is down; once another connection got through, at once.
        if now < self._next_attempt and not self._health.state.up:
            raise DatabaseUnavailable(
                f"{self._last_error} (next connection attempt in {self._next_attempt - now:.1f} s)"
            )
        return self._open()

    def _open(self) -> Any:
        """Connect now; on failure the database is down and the next attempt waits."""
        try:
            self._conn = self._psycopg.connect(
                self._dsn, autocommit=self._autocommit, connect_timeout=CONNECT_TIMEOUT
            )
        except self._psycopg.Error as exc:
            self._last_error = _short(exc)
            self._next_attempt = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, RECONNECT_MAX)
            self._health.down(self._last_error)
            raise DatabaseUnavailable(self._last_error) from exc
        self._delay = RECONNECT_MIN
        self._epoch = self._health.outages
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - already broken; closing is best effort
                logger.debug("closing a broken connection failed", exc_info=True)
            self._conn = None

    @contextmanager
    def cursor(self, *, transaction: bool = False) -> Iterator[Any]:
        """A cursor on a live connection (in a transaction when asked); raises
        ``DatabaseUnavailable`` when the database cannot be reached or the connection is lost
        on the way."""
        with self._lock:
            conn = self._connection()
            try:
                if transaction:
                    with conn.transaction(), conn.cursor() as cur:
                        yield cur
                else:
                    with conn.cursor() as cur:
                        yield cur
            except (self._psycopg.OperationalError, self._psycopg.InterfaceError) as exc:
                if not (conn.closed or conn.broken):
                    raise  # the connection is fine: the statement failed
                # Lost on the way: connect again at once. A connection opened before a restart
                # the server has since come back from is not an outage (the statement is lost
                # all the same: the caller decides whether to repeat it).
                self._last_error = _short(exc)
                self._drop()
                with contextlib.suppress(DatabaseUnavailable):
                    self._open()
                raise DatabaseUnavailable(self._last_error) from exc
            self._health.up()

    def close(self) -> None:
        with self._lock:
            self._drop()
