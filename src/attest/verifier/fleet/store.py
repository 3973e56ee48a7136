"""The fleet's state: nodes, enrollments, results (a per-node ring of recent appraisals plus
the history of verdict changes), release marks and leases (an adapter; no ORM).

Two back ends behind one ``Store`` protocol:

- ``SqliteStore`` (stdlib ``sqlite3``, WAL): embedded, zero set-up, one verifier process (or a
  few on one machine: every lease is taken in a single-writer ``BEGIN IMMEDIATE`` transaction).
- ``PostgresStore`` (psycopg 3): several verifier processes share one fleet. Its connections
  are re-opened with backoff after the server goes away (``attest.verifier.fleet.pgconn``):
  meanwhile every call raises ``DatabaseUnavailable`` and ``check()`` says why.

Leases: a worker takes due nodes in one transaction that (1) selects nodes whose ``next_due``
has passed -- ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent workers skip each other's
rows instead of waiting -- (2) moves their ``next_due`` to the lease's expiry and (3) records
``leases(node_id, worker_id, token, expires_at)``. Step 2 is what makes a node invisible to
other workers once the transaction commits (a concurrent ``SKIP LOCKED`` reader re-checks the
updated row and drops it). A worker records results only for leases it still holds, by token
(fencing): a worker that stalls past its lease loses that result instead of overwriting a newer
one, and a worker that dies loses nothing -- its nodes fall due again when the leases expire.

The webhook outbox (``attest.verifier.fleet.outbox``) lives in the same database: a verdict
change's event (``Outcome.event``) is inserted in the transaction that records the change, and
only for results whose lease is still held.

Times are POSIX seconds (float) inside; the API turns them into ISO 8601.
"""

from __future__ import annotations

import errno
import json
import logging
import secrets
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from attest.enroll import EnrollmentStrength
from attest.errors import DatabaseUnavailable, NodeIdTaken
from attest.tpmstruct import ClockInfo
from attest.verifier.fleet.admission import check_node_id
from attest.verifier.fleet.dburl import parse_db_url
from attest.verifier.fleet.enrolled import STRENGTH_RANK, ak_names, enrollment_from_json
from attest.verifier.fleet.model import NodeRow, NodeStatus
from attest.verifier.fleet.outbox import (
    INSERT,
    OUTBOX_TABLE,
    PG_CLAIM,
    SQLITE_CLAIM,
    OutboxEvent,
    OutboxStore,
    SqlOutbox,
    insert_rows,
    outbox_schema,
)
from attest.verifier.fleet.pgconn import Connection, DatabaseHealth, DatabaseState

logger = logging.getLogger(__name__)

DEFAULT_HISTORY = 20  # recent results kept per node (a ring); verdict changes are all kept


@dataclass(frozen=True, slots=True)
class Leased:
    """A node this worker holds a lease on: everything one appraisal needs."""

    node_id: str
    url: str
    enrollment_doc: str | None
    verdict: NodeStatus
    failures: int
    appraisals: int
    clock: ClockInfo | None
    token: int
    host_url: str | None = None  # a host + guest pair
    host_clock: ClockInfo | None = None
    # What this verifier verified of the node before (``attest.appraisal.memory.Continuity``
    # as JSON; a pair's: {"host": .., "guest": ..}); None until the first appraisal.
    continuity: str | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    """One finished attempt on a leased node."""

    node_id: str
    token: int
    at: float
    verdict: NodeStatus
    explanation: str
    first_divergence: str | None
    release: str | None
    clock: ClockInfo | None
    result: dict[str, Any] | None  # the appraisal result; None when the node did not answer
    error: str  # transport error, "" when the node answered
    failures: int  # consecutive transport failures after this attempt
    next_due: float
    seq: int  # this node's appraisal count after this attempt (the ring's sequence)
    previous_verdict: NodeStatus
    ear: str | None = None  # the signed EAR of this attempt; None keeps the node's last one
    layers: dict[str, Any] | None = None  # a pair's per-layer verdicts (None for one node)
    host_clock: ClockInfo | None = None  # a pair: the host quote's clock
    ear_claims: dict[str, Any] | None = None  # to sign into ``ear`` before it is stored
    continuity: str | None = None  # the continuity to store (JSON); None keeps the stored one
    enrollment: str | None = None  # the enrollment's strength (webhooks; not stored here)
    # The webhook event of a verdict change: stored in the webhook outbox in the transaction
    # that stores this outcome (``attest.verifier.fleet.outbox``); None enqueues nothing.
    event: OutboxEvent | None = None


class EnrollmentDoc(Protocol):
    """An ``Enrollment``, or a pair's (``attest.verifier.fleet.pairs.PairEnrollment``)."""

    def to_json(self) -> dict[str, Any]: ...

    @property
    def strength(self) -> EnrollmentStrength: ...


class Store(OutboxStore, Protocol):
    def add_node(
        self,
        node_id: str,
        url: str,
        enrollment: EnrollmentDoc | None,
        *,
        now: float,
        host_url: str | None = None,
        re_enroll: bool = False,
        by: str = "operator",
    ) -> dict[str, Any] | None: ...
    def remove_node(self, node_id: str) -> bool: ...
    def get_node(self, node_id: str) -> NodeRow | None: ...
    def list_nodes(self, *, ear: bool = False) -> list[NodeRow]: ...
    def lease(
        self,
        worker_id: str,
        *,
        now: float,
        limit: int,
        ttl: float,
        affinity: float = 0.0,
        takeover: float | None = None,
    ) -> list[Leased]: ...
    def complete(self, worker_id: str, outcomes: Sequence[Outcome]) -> list[Outcome]: ...
    def results(self, node_id: str, limit: int = 50) -> list[dict[str, Any]]: ...
    def changes(self, node_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]: ...
    def release_marks(self) -> dict[str, float]: ...
    def mark_fleet_complete(self, version: str, at: float) -> bool: ...
    def check(self) -> DatabaseState: ...
    def close(self) -> None: ...


_SQLITE_UP = DatabaseState(True)


def _one_clock(c: ClockInfo | None) -> str:
    return "" if c is None else f"{c.clock},{c.reset_count},{c.restart_count},{int(c.safe)}"


def clock_text(c: ClockInfo | None, host: ClockInfo | None = None) -> str | None:
    """The ``clock`` column: the quote's clock; a pair's is ``guest|host``."""
    if host is not None:
        return f"{_one_clock(c)}|{_one_clock(host)}"
    return None if c is None else _one_clock(c)


def _parse_clock(t: str) -> ClockInfo | None:
    if not t:
        return None
    a, b, c, d = t.split(",")
    return ClockInfo(int(a), int(b), int(c), d == "1")


def clock_from_text(t: str | None) -> ClockInfo | None:
    return None if not t else _parse_clock(t.partition("|")[0])


def host_clock_from_text(t: str | None) -> ClockInfo | None:
    return None if not t else _parse_clock(t.partition("|")[2])


def _leased(r: Sequence[Any], token: int) -> Leased:
    """(node_id, url, doc, verdict, failures, appraisals, clock, host_url, continuity)"""
    return Leased(
        r[0],
        r[1],
        r[2],
        NodeStatus(r[3]),
        r[4],
        r[5],
        clock_from_text(r[6]),
        token,
        r[7],
        host_clock_from_text(r[6]),
        r[8],
    )


_NODE_COLS = (
    "n.node_id, n.url, e.node_id IS NOT NULL, n.added_at, n.next_due, n.verdict, "
    "n.explanation, n.first_divergence, n.release, n.last_appraised, n.last_seen, "
    "n.last_error, n.failures, n.appraisals, n.host_url, n.layers, e.strength"
)


def _node_row(r: Sequence[Any]) -> NodeRow:
    return NodeRow(
        r[0],
        r[1],
        bool(r[2]),
        r[3],
        r[4],
        NodeStatus(r[5]),
        r[6],
        r[7],
        r[8],
        r[9],
        r[10],
        r[11],
        r[12],
        r[13],
        r[17] if len(r) > 17 else None,
        r[14],
        json.loads(r[15]) if r[15] else None,
        r[16],
    )


def _schema(*, real: str, serial: str) -> list[str]:
    return [
        f"""CREATE TABLE IF NOT EXISTS nodes (
            node_id TEXT PRIMARY KEY, url TEXT NOT NULL, added_at {real} NOT NULL,
            next_due {real} NOT NULL, verdict TEXT NOT NULL DEFAULT '{NodeStatus.NONE}',
            explanation TEXT NOT NULL DEFAULT '', first_divergence TEXT, release TEXT,
            last_appraised {real}, last_seen {real}, last_error TEXT NOT NULL DEFAULT '',
            failures INTEGER NOT NULL DEFAULT 0, appraisals BIGINT NOT NULL DEFAULT 0,
            clock TEXT, owner TEXT, ear TEXT, host_url TEXT, layers TEXT)""",
        "CREATE INDEX IF NOT EXISTS nodes_due ON nodes (next_due)",
        f"""CREATE TABLE IF NOT EXISTS enrollments (
            node_id TEXT PRIMARY KEY REFERENCES nodes(node_id) ON DELETE CASCADE,
            doc TEXT NOT NULL, enrolled_at {real} NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS results (
            node_id TEXT NOT NULL REFERENCES nodes(node_id) ON DELETE CASCADE,
            slot INTEGER NOT NULL, seq BIGINT NOT NULL, at {real} NOT NULL,
            worker_id TEXT NOT NULL, verdict TEXT NOT NULL, doc TEXT NOT NULL,
            PRIMARY KEY (node_id, slot))""",
        f"""CREATE TABLE IF NOT EXISTS changes (
            id {serial}, node_id TEXT NOT NULL REFERENCES nodes(node_id) ON DELETE CASCADE,
            at {real} NOT NULL, old TEXT NOT NULL, new TEXT NOT NULL,
            explanation TEXT NOT NULL, ear TEXT)""",
        "CREATE INDEX IF NOT EXISTS changes_node ON changes (node_id, id)",
        f"""CREATE TABLE IF NOT EXISTS leases (
            node_id TEXT PRIMARY KEY REFERENCES nodes(node_id) ON DELETE CASCADE,
            worker_id TEXT NOT NULL, token BIGINT NOT NULL, expires_at {real} NOT NULL)""",
        f"""CREATE TABLE IF NOT EXISTS fleet_releases (
            version TEXT PRIMARY KEY, fleet_complete_at {real} NOT NULL)""",
        *outbox_schema(real=real, serial=serial),
    ]


# Columns added after the first release of the schema: (table, column, type), added to an
# older database on start.
_ADDED_COLUMNS = (
    ("nodes", "owner", "TEXT"),
    ("nodes", "ear", "TEXT"),
    ("nodes", "host_url", "TEXT"),
    ("nodes", "layers", "TEXT"),
    ("changes", "ear", "TEXT"),
    ("nodes", "continuity", "TEXT"),  # Continuity as JSON (attest.appraisal.memory)
    ("enrollments", "strength", "TEXT"),  # EnrollmentStrength of the doc
    ("changes", "detail", "TEXT"),  # an operator action (a re-enrollment), as JSON
)


def _strength_of(doc: str) -> str:
    return enrollment_from_json(json.loads(doc)).strength.value


def _fill_strengths(cur: Any, q: Any) -> None:
    """Enrollments stored before the strength column: their strength, from the doc."""
    cur.execute("SELECT node_id, doc FROM enrollments WHERE strength IS NULL")
    rows = cur.fetchall()
    if rows:
        cur.executemany(
            q("UPDATE enrollments SET strength = ? WHERE node_id = ?"),
            [(_strength_of(doc), node_id) for node_id, doc in rows],
        )


def _result_doc(o: Outcome, worker_id: str) -> str:
    doc = {
        "seq": o.seq,
        "at": o.at,
        "worker_id": worker_id,
        "verdict": o.verdict,
        "explanation": o.explanation,
        "first_divergence": o.first_divergence,
        "release": o.release,
        "error": o.error or None,
        "result": o.result,
    }
    if o.layers is not None:
        doc["layers"] = o.layers
    return orjson.dumps(doc, default=str).decode()


def _layers_text(o: Outcome) -> str | None:
    return None if o.layers is None else orjson.dumps(o.layers).decode()


class _SqlStore(SqlOutbox):
    """The SQL both back ends share; ``P`` is the driver's placeholder (``_q``)."""

    history = DEFAULT_HISTORY

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        raise NotImplementedError

    def add_node(
        self,
        node_id: str,
        url: str,
        enrollment: EnrollmentDoc | None,
        *,
        now: float,
        host_url: str | None = None,
        re_enroll: bool = False,
        by: str = "operator",
    ) -> dict[str, Any] | None:
        """Register a node (and its enrollment). An id that is already enrolled is refused
        (``NodeIdTaken``): its URL and AK are replaced only by an explicit ``re_enroll``,
        which resets the node's continuity, fences the appraisals in flight and is recorded
        in its history (returned; ``by`` names the operator action), saying when the new
        enrollment is weaker than the old."""
        check_node_id(node_id)  # whoever chose it: reachable as /v1/nodes/{id}
        verdict = NodeStatus.NONE if enrollment is not None else NodeStatus.UNENROLLED
        with self._tx() as cur:
            cur.execute(
                self._q(
                    "SELECT n.url, n.verdict, e.doc, e.strength FROM nodes n LEFT JOIN "
                    "enrollments e ON e.node_id = n.node_id WHERE n.node_id = ?"
                ),
                (node_id,),
            )
            old = cur.fetchone()
            entry = None
            if old is not None and old[2] is not None:
                if not re_enroll:
                    raise NodeIdTaken(
                        node_id,
                        f"node {node_id!r} is already enrolled (AK "
                        f"{ak_names(enrollment_from_json(json.loads(old[2])))[:16]}…, "
                        f"{old[3] or _strength_of(old[2])}): its URL and AK are replaced only "
                        "by an explicit re-enrollment (re_enroll / --re-enroll)",
                    )
                entry = self._re_enroll(cur, node_id, old, url, enrollment, now=now, by=by)
            cur.execute(
                self._q(
                    "INSERT INTO nodes (node_id, url, added_at, next_due, verdict, host_url) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (node_id) "
                    "DO UPDATE SET url = excluded.url, host_url = excluded.host_url"
                ),
                (node_id, url, now, now, verdict, host_url),
            )
            if enrollment is not None:
                cur.execute(
                    self._q(
                        "INSERT INTO enrollments (node_id, doc, enrolled_at, strength) "
                        "VALUES (?, ?, ?, ?) ON CONFLICT (node_id) DO UPDATE SET "
                        "doc = excluded.doc, enrolled_at = excluded.enrolled_at, "
                        "strength = excluded.strength"
                    ),
                    (node_id, json.dumps(enrollment.to_json()), now, enrollment.strength.value),
                )
                cur.execute(
                    self._q(
                        "UPDATE nodes SET next_due = ?, verdict = CASE WHEN "
                        "verdict = ? THEN ? ELSE verdict END WHERE node_id = ?"
                    ),
                    (now, NodeStatus.UNENROLLED, NodeStatus.NONE, node_id),
                )
        return entry

    def _re_enroll(
        self,
        cur: Any,
        node_id: str,
        old: Sequence[Any],
        url: str,
        enrollment: EnrollmentDoc | None,
        *,
        now: float,
        by: str,
    ) -> dict[str, Any]:
        """Forget what was verified under the old enrollment (continuity, clock, verdict,
        EAR; leases in flight are fenced) and record the re-enrollment in the history."""
        old_url, old_verdict, old_doc, old_strength = old
        old_strength = old_strength or _strength_of(old_doc)
        new_strength = None if enrollment is None else enrollment.strength.value
        weaker = new_strength is None or STRENGTH_RANK[new_strength] < STRENGTH_RANK[old_strength]
        old_ak = ak_names(enrollment_from_json(json.loads(old_doc)))
        new_ak = (
            None if enrollment is None else ak_names(enrollment_from_json(enrollment.to_json()))
        )
        detail = {
            "event": "re-enroll",
            "by": by,
            "previous_ak": old_ak,
            "new_ak": new_ak,
            "previous_url": old_url,
            "new_url": url,
            "previous_enrollment": old_strength,
            "new_enrollment": new_strength,
            "weaker": weaker,
        }
        explanation = (
            f"re-enrolled ({by}): AK {old_ak[:16]}… → "
            f"{'none' if new_ak is None else new_ak[:16] + '…'}; enrollment {old_strength} → "
            f"{new_strength or 'none'}{' (WEAKER)' if weaker else ''}; continuity reset"
        )
        cur.execute(self._q("DELETE FROM leases WHERE node_id = ?"), (node_id,))
        cur.execute(self._q("DELETE FROM enrollments WHERE node_id = ?"), (node_id,))
        cur.execute(
            self._q(
                "UPDATE nodes SET verdict = ?, explanation = ?, first_divergence = NULL, "
                "release = NULL, clock = NULL, continuity = NULL, ear = NULL, layers = NULL, "
                "failures = 0, last_error = '', owner = NULL, next_due = ? WHERE node_id = ?"
            ),
            (NodeStatus.UNENROLLED, explanation, now, node_id),
        )
        cur.execute(
            self._q(
                "INSERT INTO changes (node_id, at, old, new, explanation, ear, detail) "
                "VALUES (?, ?, ?, ?, ?, NULL, ?)"
            ),
            (
                node_id,
                now,
                old_verdict,
                NodeStatus.UNENROLLED if enrollment is None else NodeStatus.NONE,
                explanation,
                json.dumps(detail),
            ),
        )
        logger.warning(
            "node re-enrolled", extra={"node_id": node_id, **detail, "explanation": explanation}
        )
        return {"node_id": node_id, "at": now, "explanation": explanation, "detail": detail}

    def remove_node(self, node_id: str) -> bool:
        with self._tx() as cur:
            for table in ("leases", "results", "changes", "enrollments"):
                cur.execute(self._q(f"DELETE FROM {table} WHERE node_id = ?"), (node_id,))
            cur.execute(self._q("DELETE FROM nodes WHERE node_id = ?"), (node_id,))
            return bool(cur.rowcount)

    def get_node(self, node_id: str) -> NodeRow | None:
        with self._tx() as cur:
            cur.execute(
                self._q(
                    f"SELECT {_NODE_COLS}, n.ear FROM nodes n LEFT JOIN enrollments "
                    "e ON e.node_id = n.node_id WHERE n.node_id = ?"
                ),
                (node_id,),
            )
            r = cur.fetchone()
        return None if r is None else _node_row(r)

    def list_nodes(self, *, ear: bool = False) -> list[NodeRow]:
        """Every node; their EARs (about 1 kB each) only when ``ear``."""
        with self._tx() as cur:
            cur.execute(
                f"SELECT {_NODE_COLS}{', n.ear' if ear else ''} FROM nodes n "
                "LEFT JOIN enrollments e ON e.node_id = n.node_id ORDER BY n.node_id"
            )
            return [_node_row(r) for r in cur.fetchall()]

    def results(self, node_id: str, limit: int = 50) -> list[dict[str, Any]]:
        with self._tx() as cur:
            cur.execute(
                self._q("SELECT doc FROM results WHERE node_id = ? ORDER BY seq DESC LIMIT ?"),
                (node_id, limit),
            )
            return [json.loads(r[0]) for r in cur.fetchall()]

    def changes(self, node_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where = "" if node_id is None else "WHERE node_id = ? "
        args: tuple[Any, ...] = (limit,) if node_id is None else (node_id, limit)
        with self._tx() as cur:
            cur.execute(
                self._q(
                    f"SELECT node_id, at, old, new, explanation, ear, detail FROM changes "
                    f"{where}ORDER BY id DESC LIMIT ?"
                ),
                args,
            )
            return [
                {
                    "node_id": r[0],
                    "at": r[1],
                    "from": r[2],
                    "to": r[3],
                    "explanation": r[4],
                    "ear": r[5],
                    "detail": json.loads(r[6]) if r[6] else None,
                }
                for r in cur.fetchall()
            ]

    def release_marks(self) -> dict[str, float]:
        with self._tx() as cur:
            cur.execute("SELECT version, fleet_complete_at FROM fleet_releases")
            return {r[0]: r[1] for r in cur.fetchall()}

    def mark_fleet_complete(self, version: str, at: float) -> bool:
        with self._tx() as cur:
            cur.execute(
                self._q(
                    "INSERT INTO fleet_releases (version, fleet_complete_at) "
                    "VALUES (?, ?) ON CONFLICT (version) DO NOTHING"
                ),
                (version, at),
            )
            return bool(cur.rowcount)

    def _write(self, cur: Any, worker_id: str, done: Sequence[Outcome]) -> None:
        cur.executemany(
            self._q(
                "UPDATE nodes SET next_due = ?, verdict = ?, explanation = ?, "
                "first_divergence = ?, "
                "release = COALESCE(?, CASE WHEN ? THEN release ELSE NULL END), "
                "last_appraised = COALESCE(?, last_appraised), last_seen = COALESCE(?, last_seen), "
                "last_error = ?, failures = ?, appraisals = ?, clock = COALESCE(?, clock), "
                "ear = COALESCE(?, ear), layers = COALESCE(?, layers), "
                "continuity = COALESCE(?, continuity) WHERE node_id = ?"
            ),
            [
                (
                    o.next_due,
                    o.verdict,
                    o.explanation,
                    o.first_divergence,
                    o.release,
                    o.result is None,
                    o.at if o.result is not None else None,
                    o.at if o.result is not None else None,
                    o.error,
                    o.failures,
                    o.seq,
                    clock_text(o.clock, o.host_clock),
                    o.ear,
                    _layers_text(o),
                    o.continuity,
                    o.node_id,
                )
                for o in done
            ],
        )
        cur.executemany(
            self._q(
                "INSERT INTO results (node_id, slot, seq, at, worker_id, verdict, doc) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (node_id, slot) DO UPDATE SET "
                "seq = excluded.seq, at = excluded.at, worker_id = excluded.worker_id, "
                "verdict = excluded.verdict, doc = excluded.doc"
            ),
            [
                (
                    o.node_id,
                    o.seq % self.history,
                    o.seq,
                    o.at,
                    worker_id,
                    o.verdict,
                    _result_doc(o, worker_id),
                )
                for o in done
            ],
        )
        changed = [o for o in done if o.verdict != o.previous_verdict]
        if changed:
            cur.executemany(
                self._q(
                    "INSERT INTO changes (node_id, at, old, new, explanation, ear) VALUES "
                    "(?, ?, ?, ?, ?, ?)"
                ),
                [
                    (o.node_id, o.at, o.previous_verdict, o.verdict, o.explanation, o.ear)
                    for o in changed
                ],
            )
        events = [o.event for o in done if o.event is not None]
        if events:  # the webhook outbox, in the same transaction as the changes
            cur.executemany(self._q(INSERT), insert_rows(events))


class SqliteStore(_SqlStore):
    """SQLite in WAL mode. One connection, serialised by a lock (the poller writes from one
    thread; API reads are short)."""

    _CLAIM = SQLITE_CLAIM

    def __init__(self, path: str, *, history: int = DEFAULT_HISTORY) -> None:
        self.path = path
        self.history = history
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
        except sqlite3.Error as exc:  # a missing directory, no permission
            raise OSError(errno.EIO, f"cannot open the SQLite database ({exc})", path) from None
        try:
            self._create()
        except sqlite3.Error as exc:  # not a database, read-only, locked past the timeout
            self._db.close()
            raise OSError(errno.EIO, f"cannot use the SQLite database ({exc})", path) from None

    def _create(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._tx() as cur:
            for stmt in _schema(real="REAL", serial="INTEGER PRIMARY KEY AUTOINCREMENT"):
                cur.execute(stmt)
            for table, column, kind in _ADDED_COLUMNS:  # an older database
                cur.execute(f"SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?", (column,))
                if cur.fetchone() is None:
                    cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            _fill_strengths(cur, self._q)

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        # BEGIN IMMEDIATE takes the single write lock at once: a lease is one atomic step
        # even with several processes on the same file.
        with self._lock:
            cur = self._db.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    def _outbox_tx(self) -> AbstractContextManager[Any]:
        return self._tx()

    def lease(
        self,
        worker_id: str,
        *,
        now: float,
        limit: int,
        ttl: float,
        affinity: float = 0.0,
        takeover: float | None = None,
    ) -> list[Leased]:
        # ``affinity`` and ``takeover`` are not applied: one SQLite file has one worker, as a
        # rule.
        token = secrets.randbits(62)
        with self._tx() as cur:
            cur.execute(
                "SELECT n.node_id, n.url, e.doc, n.verdict, n.failures, n.appraisals, n.clock, "
                "n.host_url, n.continuity FROM nodes n LEFT JOIN enrollments e ON "
                "e.node_id = n.node_id WHERE n.next_due <= ? ORDER BY n.next_due LIMIT ?",
                (now, limit),
            )
            rows = cur.fetchall()
            if not rows:
                return []
            cur.executemany(
                "UPDATE nodes SET next_due = ? WHERE node_id = ?", [(now + ttl, r[0]) for r in rows]
            )
            cur.executemany(
                "INSERT OR REPLACE INTO leases (node_id, worker_id, token, "
                "expires_at) VALUES (?, ?, ?, ?)",
                [(r[0], worker_id, token, now + ttl) for r in rows],
            )
        return [_leased(r, token) for r in rows]

    def complete(self, worker_id: str, outcomes: Sequence[Outcome]) -> list[Outcome]:
        if not outcomes:
            return []
        with self._tx() as cur:
            held: dict[str, int] = {}
            ids = [o.node_id for o in outcomes]
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                cur.execute(
                    f"SELECT node_id, token FROM leases WHERE worker_id = ? AND node_id "
                    f"IN ({','.join('?' * len(part))})",
                    (worker_id, *part),
                )
                held.update(cur.fetchall())
            done = [o for o in outcomes if held.get(o.node_id) == o.token]
            cur.executemany(
                "DELETE FROM leases WHERE node_id = ? AND token = ?",
                [(o.node_id, o.token) for o in done],
            )
            if done:
                self._write(cur, worker_id, done)
        _log_lost(worker_id, outcomes, done)
        return done

    def check(self) -> DatabaseState:
        """An embedded file: always reachable while the process runs."""
        return _SQLITE_UP

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _log_lost(worker_id: str, outcomes: Sequence[Outcome], done: Sequence[Outcome]) -> None:
    if len(done) != len(outcomes):
        kept = {o.node_id for o in done}
        lost = [o.node_id for o in outcomes if o.node_id not in kept]
        logger.warning(
            "results dropped: lease lost (expired and taken by another worker)",
            extra={"worker_id": worker_id, "nodes": lost[:20], "count": len(lost)},
        )


_PG_RELATIONS = (
    "nodes",
    "nodes_due",
    "enrollments",
    "results",
    "changes",
    "changes_node",
    "leases",
    "fleet_releases",
    OUTBOX_TABLE,
)  # what _schema creates


class PostgresStore(_SqlStore):
    """PostgreSQL through psycopg 3. Four connections, each serialised by its own lock and
    re-opened with backoff when lost (``pgconn.Connection``): one takes leases, one writes
    results (so a batch commit never holds up the next lease), one serves reads, one serves
    the webhook sender's outbox (opened on first use). A lease batch and a result batch are
    each ONE statement in autocommit mode (data-modifying CTEs over ``unnest``-ed arrays:
    atomic, one round trip, no per-row statements)."""

    P = "%s"
    _CLAIM = PG_CLAIM

    def __init__(self, dsn: str, *, history: int = DEFAULT_HISTORY) -> None:
        import psycopg  # the optional "fleet" extra: imported only by this back end

        self.history = history
        self.health = DatabaseHealth()
        self._lease_db = Connection(psycopg, dsn, autocommit=True, health=self.health)
        self._write_db = Connection(psycopg, dsn, autocommit=True, health=self.health)
        self._read_db = Connection(psycopg, dsn, autocommit=False, health=self.health)
        self._outbox_db = Connection(psycopg, dsn, autocommit=True, health=self.health)
        with self._write_db.cursor(transaction=True) as cur:
            cur.execute("SELECT pg_advisory_xact_lock(7500)")  # two workers creating at once
            # DDL only when something is missing: even `IF NOT EXISTS` statements lock the
            # tables they name, and another worker may be leasing and writing (a deadlock).
            cur.execute(
                "SELECT count(*) FROM pg_class WHERE relnamespace = "
                "current_schema()::regnamespace AND relname = ANY(%s)",
                (list(_PG_RELATIONS),),
            )
            row = cur.fetchone()
            if row is None or row[0] != len(_PG_RELATIONS):
                for stmt in _schema(real="DOUBLE PRECISION", serial="BIGSERIAL PRIMARY KEY"):
                    cur.execute(stmt)
            # Columns added since (the lease owner, the EAR, pairs): added to older databases.
            for table, column, kind in _ADDED_COLUMNS:
                cur.execute(
                    "SELECT 1 FROM information_schema.columns WHERE table_schema = "
                    "current_schema() AND table_name = %s AND column_name = %s",
                    (table, column),
                )
                if cur.fetchone() is None:
                    cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            _fill_strengths(cur, self._q)

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        with self._read_db.cursor(transaction=True) as cur:
            yield cur

    def _outbox_tx(self) -> AbstractContextManager[Any]:
        return self._outbox_db.cursor(transaction=True)

    def check(self) -> DatabaseState:
        """Whether the database answers now (one ``SELECT 1`` on the read connection)."""
        try:
            with self._read_db.cursor(transaction=True) as cur:
                cur.execute("SELECT 1")
        except DatabaseUnavailable:
            pass
        return self.health.state

    # One statement: pick due rows (SKIP LOCKED: concurrent workers skip each other's rows),
    # move their due time to the lease's expiry (a concurrent reader re-checks the updated row
    # and drops it), record the leases, and return what the appraisals need. Affinity: a node
    # another worker took last is left to it (that worker holds the node's logs in memory)
    # until it is ``affinity`` seconds overdue *and* this worker has room to spare (its own and
    # unowned due nodes do not fill ``limit``), or until it is ``takeover`` seconds overdue
    # whatever the room. So workers that are all behind keep to their own nodes instead of
    # taking each other's (each taken node costs a full-log appraisal), and the nodes of a
    # worker that stalls or dies are taken over by one with room after ``affinity``, by any
    # after ``takeover``.
    _LEASE = """
        WITH mine AS (
            SELECT node_id, next_due FROM nodes WHERE next_due <= %(now)s
                AND (owner IS NULL OR owner = %(worker)s OR next_due <= %(takeover)s)
            ORDER BY next_due LIMIT %(limit)s FOR UPDATE SKIP LOCKED),
        spare AS (
            SELECT node_id, next_due FROM nodes WHERE next_due <= %(steal)s
                AND owner IS NOT NULL AND owner <> %(worker)s
                AND node_id NOT IN (SELECT node_id FROM mine)
            ORDER BY next_due
            LIMIT GREATEST(%(limit)s - (SELECT count(*) FROM mine), 0)
            FOR UPDATE SKIP LOCKED),
        due AS (SELECT node_id FROM mine UNION ALL SELECT node_id FROM spare),
        taken AS (
            UPDATE nodes n SET next_due = %(expires)s, owner = %(worker)s
            FROM due WHERE n.node_id = due.node_id
            RETURNING n.node_id, n.url, n.verdict, n.failures, n.appraisals, n.clock,
                n.host_url, n.continuity),
        leased AS (
            INSERT INTO leases (node_id, worker_id, token, expires_at)
            SELECT node_id, %(worker)s, %(token)s, %(expires)s FROM taken
            ON CONFLICT (node_id) DO UPDATE SET worker_id = excluded.worker_id,
                token = excluded.token, expires_at = excluded.expires_at)
        SELECT t.node_id, t.url, e.doc, t.verdict, t.failures, t.appraisals, t.clock,
            t.host_url, t.continuity
        FROM taken t LEFT JOIN enrollments e ON e.node_id = t.node_id"""

    def lease(
        self,
        worker_id: str,
        *,
        now: float,
        limit: int,
        ttl: float,
        affinity: float = 0.0,
        takeover: float | None = None,
    ) -> list[Leased]:
        token = secrets.randbits(62)
        with self._lease_db.cursor() as cur:
            cur.execute(
                self._LEASE,
                {
                    "now": now,
                    "limit": limit,
                    "expires": now + ttl,
                    "worker": worker_id,
                    "token": token,
                    "steal": now - affinity,
                    "takeover": now - (affinity if takeover is None else max(takeover, affinity)),
                },
            )
            rows = cur.fetchall()
        return [_leased(r, token) for r in rows]

    # One statement: fence by token (only leases still held count), then update the nodes,
    # the result ring and the verdict changes of exactly those. The text arrays go in binary
    # (``%(...)b``): in text form psycopg escapes every quote of the JSON documents and EARs
    # with a regular expression in Python, which cost more CPU than the rest of the write.
    _COMPLETE = """
        WITH o AS (
            SELECT * FROM unnest(
                %(node_id)b::text[], %(token)s::bigint[], %(at)s::float8[], %(next_due)s::float8[],
                %(verdict)b::text[], %(explanation)b::text[], %(first_divergence)b::text[],
                %(release)b::text[], %(answered)s::bool[], %(error)b::text[],
                %(failures)s::int[], %(seq)s::bigint[], %(clock)b::text[], %(slot)s::int[],
                %(doc)b::text[], %(previous)b::text[], %(ear)b::text[], %(layers)b::text[],
                %(continuity)b::text[], %(event_id)b::text[], %(event)b::text[])
            AS o(node_id, token, at, next_due, verdict, explanation, first_divergence, release,
                 answered, error, failures, seq, clock, slot, doc, previous, ear, layers,
                 continuity, event_id, event)),
        held AS (
            DELETE FROM leases l USING o
            WHERE l.node_id = o.node_id AND l.token = o.token AND l.worker_id = %(worker)s
            RETURNING l.node_id, l.token),
        done AS (
            SELECT o.* FROM o JOIN held ON held.node_id = o.node_id AND held.token = o.token),
        upd AS (
            UPDATE nodes n SET next_due = d.next_due, verdict = d.verdict,
                explanation = d.explanation, first_divergence = d.first_divergence,
                release = COALESCE(d.release, CASE WHEN d.answered THEN NULL ELSE n.release END),
                last_appraised = CASE WHEN d.answered THEN d.at ELSE n.last_appraised END,
                last_seen = CASE WHEN d.answered THEN d.at ELSE n.last_seen END,
                last_error = d.error, failures = d.failures, appraisals = d.seq,
                clock = COALESCE(d.clock, n.clock), ear = COALESCE(d.ear, n.ear),
                layers = COALESCE(d.layers, n.layers),
                continuity = COALESCE(d.continuity, n.continuity)
            FROM done d WHERE n.node_id = d.node_id),
        res AS (
            INSERT INTO results (node_id, slot, seq, at, worker_id, verdict, doc)
            SELECT node_id, slot, seq, at, %(worker)s, verdict, doc FROM done
            ON CONFLICT (node_id, slot) DO UPDATE SET seq = excluded.seq, at = excluded.at,
                worker_id = excluded.worker_id, verdict = excluded.verdict, doc = excluded.doc),
        chg AS (
            INSERT INTO changes (node_id, at, old, new, explanation, ear)
            SELECT node_id, at, previous, verdict, explanation, ear FROM done
            WHERE verdict <> previous ORDER BY node_id),
        evt AS (
            INSERT INTO webhook_outbox (event_id, created_at, next_attempt, body)
            SELECT event_id, at, at, event FROM done WHERE event IS NOT NULL ORDER BY node_id
            ON CONFLICT (event_id) DO NOTHING)
        SELECT node_id, token FROM held"""

    def complete(self, worker_id: str, outcomes: Sequence[Outcome]) -> list[Outcome]:
        if not outcomes:
            return []
        docs = [_result_doc(o, worker_id) for o in outcomes]  # outside the lock
        args = {
            "worker": worker_id,
            "node_id": [o.node_id for o in outcomes],
            "token": [o.token for o in outcomes],
            "at": [o.at for o in outcomes],
            "next_due": [o.next_due for o in outcomes],
            "verdict": [o.verdict for o in outcomes],
            "explanation": [o.explanation for o in outcomes],
            "first_divergence": [o.first_divergence for o in outcomes],
            "release": [o.release for o in outcomes],
            "answered": [o.result is not None for o in outcomes],
            "error": [o.error for o in outcomes],
            "failures": [o.failures for o in outcomes],
            "seq": [o.seq for o in outcomes],
            "clock": [clock_text(o.clock, o.host_clock) for o in outcomes],
            "slot": [o.seq % self.history for o in outcomes],
            "doc": docs,
            "previous": [o.previous_verdict for o in outcomes],
            "ear": [o.ear for o in outcomes],
            "layers": [_layers_text(o) for o in outcomes],
            "continuity": [o.continuity for o in outcomes],
            "event_id": [None if o.event is None else o.event.id for o in outcomes],
            "event": [None if o.event is None else o.event.body for o in outcomes],
        }
        with self._write_db.cursor() as cur:
            cur.execute(self._COMPLETE, args)
            held = {(r[0], r[1]) for r in cur.fetchall()}
        done = [o for o in outcomes if (o.node_id, o.token) in held]
        _log_lost(worker_id, outcomes, done)
        return done

    def close(self) -> None:
        self._lease_db.close()
        self._write_db.close()
        self._read_db.close()
        self._outbox_db.close()


def open_store(url: str, *, history: int = DEFAULT_HISTORY, key: str = "db") -> Store:
    """``sqlite:///relative/path``, ``sqlite:////absolute/path`` (SQLAlchemy's spelling), a
    bare path, or ``postgresql://...``; anything else is ``ConfigError(key=key)``
    (``attest.verifier.fleet.dburl``)."""
    db = parse_db_url(url, key=key)
    if db.kind == "postgresql":
        return PostgresStore(db.target, history=history)
    return SqliteStore(db.target, history=history)
