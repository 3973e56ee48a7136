"""The webhook outbox: undelivered webhook events in the fleet's database (an adapter; no ORM).

One table on both back ends (created with the store's schema, added to older databases on
start)::

    webhook_outbox (id          serial: the order events were stored in,
                    event_id    the event's unique ``id``: the receivers' idempotency key,
                    created_at  POSIX seconds,
                    body        the event as JSON: the exact bytes that are signed and sent,
                    attempts    failed deliveries so far, last_error the last one's reason,
                    next_attempt  not before (backoff after a failure),
                    claimed_by, claimed_until  the sender delivering it now, and until when)

A verdict change's event is inserted in the transaction that stores the result and the change
(``Outcome.event``; ``store.SqliteStore.complete`` and ``store.PostgresStore._COMPLETE``): a
verdict change is stored with its event or not at all, and a result fenced off (its lease
lost) enqueues nothing. ``node-stale`` / ``node-fresh`` events are inserted by the sender
right after it builds them (``add``).

Claims: a sender takes due rows (``next_attempt`` passed, no live claim) in one statement that
marks them ``claimed_by`` / ``claimed_until``: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL
(concurrent senders skip each other's rows; one that read a row before another's claim
committed re-checks it and drops it), inside the single-writer ``BEGIN IMMEDIATE`` transaction
on SQLite. A row is deleted only after the receiver answered 2xx; a failed attempt is counted,
pushes ``next_attempt`` back and lets the claim go. A sender that dies keeps its claims until
``claimed_until``; then another sender takes them (and delivers again what the receiver may
already have had: at least once).

The bound: ``trim`` deletes the oldest undelivered events beyond ``max_events`` and says how
many (the sender counts and logs them).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

OUTBOX_TABLE = "webhook_outbox"


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """One event to deliver: its unique id, its JSON body, when it was made (POSIX s)."""

    id: str
    body: str
    at: float


@dataclass(frozen=True, slots=True)
class ClaimedEvent:
    """A row this sender holds a claim on until ``claimed_until``."""

    seq: int
    id: str
    body: str
    attempts: int
    claimed_until: float


def outbox_schema(*, real: str, serial: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (
            id {serial}, event_id TEXT NOT NULL UNIQUE, created_at {real} NOT NULL,
            body TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT,
            next_attempt {real} NOT NULL, claimed_by TEXT, claimed_until {real})"""
    ]


INSERT = (
    f"INSERT INTO {OUTBOX_TABLE} (event_id, created_at, next_attempt, body) "
    "VALUES (?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING"
)


def insert_rows(events: Sequence[OutboxEvent]) -> list[tuple[str, float, float, str]]:
    """The parameters of ``INSERT`` (due at once)."""
    return [(e.id, e.at, e.at, e.body) for e in events]


class OutboxStore(Protocol):
    """What the webhook sender needs of the store (both back ends have it)."""

    def outbox_add(self, events: Sequence[OutboxEvent]) -> None: ...
    def outbox_claim(
        self, worker_id: str, *, now: float, limit: int, ttl: float
    ) -> list[ClaimedEvent]: ...
    def outbox_delivered(self, seq: int) -> None: ...
    def outbox_failed(
        self, seq: int, worker_id: str, *, next_attempt: float, error: str
    ) -> None: ...
    def outbox_release(self, worker_id: str, seqs: Sequence[int]) -> None: ...
    def outbox_trim(self, max_events: int) -> tuple[int, int]: ...


class SqlOutbox:
    """The outbox statements both back ends share (a mixin of the stores). ``P`` is the
    driver's placeholder, ``_outbox_tx`` a cursor in a transaction, ``_CLAIM`` the back end's
    claim statement (parameters ``now, limit, worker, until``)."""

    P = "?"
    _CLAIM = ""

    def _outbox_tx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        return sql if self.P == "?" else sql.replace("?", self.P)

    def outbox_add(self, events: Sequence[OutboxEvent]) -> None:
        """Store events (an id already stored is kept as it is: adding twice is harmless)."""
        if events:
            with self._outbox_tx() as cur:
                cur.executemany(self._q(INSERT), insert_rows(events))

    def outbox_claim(
        self, worker_id: str, *, now: float, limit: int, ttl: float
    ) -> list[ClaimedEvent]:
        """Claim up to ``limit`` due events, oldest first, until ``now + ttl``."""
        until = now + ttl
        with self._outbox_tx() as cur:
            cur.execute(self._CLAIM, self._claim_args(now, limit, worker_id, until))
            rows = cur.fetchall()
        return sorted(
            (ClaimedEvent(r[0], r[1], r[2], r[3], until) for r in rows), key=lambda c: c.seq
        )

    def _claim_args(self, now: float, limit: int, worker: str, until: float) -> Any:
        return {"now": now, "limit": limit, "worker": worker, "until": until}

    def outbox_delivered(self, seq: int) -> None:
        """The receiver answered 2xx: the event is gone (whoever holds a claim on it)."""
        with self._outbox_tx() as cur:
            cur.execute(self._q(f"DELETE FROM {OUTBOX_TABLE} WHERE id = ?"), (seq,))

    def outbox_failed(self, seq: int, worker_id: str, *, next_attempt: float, error: str) -> None:
        """One more failed attempt; the claim (if still ours) is let go."""
        with self._outbox_tx() as cur:
            cur.execute(
                self._q(
                    f"UPDATE {OUTBOX_TABLE} SET attempts = attempts + 1, last_error = ?, "
                    "next_attempt = ?, claimed_by = NULL, claimed_until = NULL "
                    "WHERE id = ? AND claimed_by = ?"
                ),
                (error[:500], next_attempt, seq, worker_id),
            )

    def outbox_release(self, worker_id: str, seqs: Sequence[int]) -> None:
        """Let claims go untried (stopping, or after a failure): due again at once."""
        if seqs:
            with self._outbox_tx() as cur:
                cur.executemany(
                    self._q(
                        f"UPDATE {OUTBOX_TABLE} SET claimed_by = NULL, claimed_until = NULL "
                        "WHERE id = ? AND claimed_by = ?"
                    ),
                    [(s, worker_id) for s in seqs],
                )

    def outbox_trim(self, max_events: int) -> tuple[int, int]:
        """Keep the newest ``max_events`` undelivered events: (pending after, dropped)."""
        with self._outbox_tx() as cur:
            cur.execute(f"SELECT count(*) FROM {OUTBOX_TABLE}")
            row = cur.fetchone()
            pending = int(row[0]) if row else 0
            if pending <= max_events:
                return pending, 0
            cur.execute(
                self._q(f"SELECT id FROM {OUTBOX_TABLE} ORDER BY id DESC LIMIT 1 OFFSET ?"),
                (max_events,),
            )
            cut = cur.fetchone()
            if cut is None:  # trimmed meanwhile by another sender
                return pending, 0
            cur.execute(self._q(f"DELETE FROM {OUTBOX_TABLE} WHERE id <= ?"), (cut[0],))
            dropped = int(cur.rowcount)
        return pending - dropped, dropped

    def outbox_rows(self) -> list[dict[str, Any]]:
        """Every undelivered event, oldest first (operators and tests)."""
        with self._outbox_tx() as cur:
            cur.execute(
                f"SELECT id, event_id, attempts, last_error, claimed_by FROM {OUTBOX_TABLE} "
                "ORDER BY id"
            )
            return [
                {"seq": r[0], "id": r[1], "attempts": r[2], "last_error": r[3], "claimed_by": r[4]}
                for r in cur.fetchall()
            ]


# SQLite (inside BEGIN IMMEDIATE: the claim is one atomic step even with several processes on
# one file). Named parameters: sqlite3's ``:name``.
SQLITE_CLAIM = f"""
    UPDATE {OUTBOX_TABLE} SET claimed_by = :worker, claimed_until = :until
    WHERE id IN (SELECT id FROM {OUTBOX_TABLE} WHERE next_attempt <= :now
        AND (claimed_until IS NULL OR claimed_until <= :now) ORDER BY id LIMIT :limit)
    RETURNING id, event_id, body, attempts"""

# PostgreSQL: rows another sender is claiming are skipped, not waited for; one whose claim
# committed after this statement's snapshot is re-checked against its new claimed_until.
PG_CLAIM = f"""
    WITH c AS (
        SELECT id FROM {OUTBOX_TABLE} WHERE next_attempt <= %(now)s
            AND (claimed_until IS NULL OR claimed_until <= %(now)s)
        ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    UPDATE {OUTBOX_TABLE} o SET claimed_by = %(worker)s, claimed_until = %(until)s
    FROM c WHERE o.id = c.id
    RETURNING o.id, o.event_id, o.body, o.attempts"""
