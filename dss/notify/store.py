"""Durable webhook delivery in one SQLite file: a queue with leases, retries, dead letters and a log.

The contract (states, retry schedule, leases, secrets) is :class:`dss.notify.queue.DeliveryQueue`'s; this
is how one SQLite file keeps it:

* **Durable**: :meth:`DeliveryStore.enqueue` commits (WAL, ``synchronous=FULL``) before it returns.
* **Leases**: a worker claims one due delivery in a ``BEGIN IMMEDIATE`` transaction, which SQLite runs
  one at a time across threads and processes, so no two workers ever hold the same attempt. The claim
  stores a random lease token and an expiry (request timeout + margin) and opens an ``in_flight``
  attempt row. Finishing is fenced by the token: a worker that lost its lease records what happened but
  does not move the delivery on.
* **Crashes**: a lease that expires with its attempt still open is settled as a failed attempt
  (outcome ``lost``) by the next claimer, then scheduled like any other failure. The receiver may have
  got that request, so subscribers can see duplicates; they never silently lose a notification unless
  the lost attempt was the last one.
* **Retries**: ``delays[0]`` is the wait before the first attempt; after failed attempt *n* the next
  is due ``delays[n]`` seconds later; there are ``len(delays)`` attempts in all.
* **Secrets**: the HMAC secret sits in its own column, is never returned by the log API, and is wiped
  when a delivery finishes (``secure_delete`` zeroes the freed space). The file is created mode 0600.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dss.config import DEFAULT_NOTIFY_DELAYS
from dss.notify.delivery import Delivery
from dss.notify.queue import (
    LOST,
    MAX_LIMIT,
    STATES,
    AttemptRecord,
    Claim,
    DeliveryQueue,
    DeliveryRecord,
    check_state,
)
from dss.notify.transport import AttemptResult, Transport
from dss.notify.urlsafety import AllowList
from dss.sqlite import immediate

__all__ = ["DeliveryStore", "DeliveryRecord", "AttemptRecord", "Claim", "STATES", "SCHEMA_VERSION"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id               TEXT PRIMARY KEY,
    subscription_id  TEXT NOT NULL,
    owner            TEXT NOT NULL,
    event_id         TEXT NOT NULL,
    spec             TEXT NOT NULL,
    hmac_secret      BLOB,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    next_attempt_at  REAL,
    lease_owner      TEXT,
    lease_expires_at REAL,
    finished_at      REAL,
    last_error       TEXT,
    UNIQUE (subscription_id, event_id)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_by_subscription ON deliveries (subscription_id, created_at);
CREATE TABLE IF NOT EXISTS attempts (
    delivery_id TEXT NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    number      INTEGER NOT NULL,
    started_at  REAL NOT NULL,
    duration    REAL,
    status_code INTEGER,
    error       TEXT,
    outcome     TEXT NOT NULL CHECK (outcome IN ('in_flight', 'delivered', 'failed', 'lost')),
    PRIMARY KEY (delivery_id, number)
) WITHOUT ROWID;
"""


class _Connection(sqlite3.Connection):
    """Only so connections can be weakly referenced (the base type cannot)."""


class _Database:
    """Per-thread SQLite connections to one file; ``write()`` is a serialised (IMMEDIATE) transaction.

    A thread's connection lives in thread-local storage, so it is closed when the thread ends; the
    weak set only lets :meth:`close` reach the ones still open."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self.path = path
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._all: weakref.WeakSet[_Connection] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._closed = False
        _create_private_file(path)
        with self.write() as conn:
            _migrate(conn)

    def connection(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("delivery store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                if self._closed:
                    raise RuntimeError("delivery store is closed")
                # check_same_thread=False only so close() can close every thread's connection.
                conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None,
                                       check_same_thread=False, factory=_Connection)
                self._all.add(conn)
            conn.row_factory = sqlite3.Row
            for pragma in ("journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON", "secure_delete=ON"):
                conn.execute(f"PRAGMA {pragma}")
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with immediate(self.connection()) as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        # A deferred transaction so multi-statement reads see one snapshot.
        conn = self.connection()
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for conn in list(self._all):
                conn.close()
            self._all.clear()


def _create_private_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))


def _migrate(conn: sqlite3.Connection) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise RuntimeError(f"delivery store schema {version} is newer than this code ({SCHEMA_VERSION})")
    # Statement by statement: executescript() would commit the caller's IMMEDIATE transaction first.
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


class DeliveryStore(DeliveryQueue):
    """The delivery queue and log over one SQLite file, plus the worker API that drains it.

    Safe to share between threads, and to open several times (even from several processes) over the
    same file. ``transport`` defaults to real HTTP with ``timeout`` and ``allowlist``; ``clock`` is
    injectable so tests can move time without sleeping.
    """

    def __init__(self, path: str | os.PathLike[str], *, transport: Transport | None = None,
                 delays: Sequence[float] = DEFAULT_NOTIFY_DELAYS, timeout: float = 60.0,
                 allowlist: AllowList | str | Iterable[str] | None = None, lease_seconds: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__(transport=transport, delays=delays, timeout=timeout, allowlist=allowlist,
                         lease_seconds=lease_seconds, clock=clock)
        self._db = _Database(Path(path), busy_timeout=max(30.0, timeout))

    @classmethod
    def from_config(cls, config: Any, path: str | os.PathLike[str] | None = None, **kwargs: Any) -> DeliveryStore:
        """A store using the notification settings of a `dss.config.Config` (file under ``data_dir``)."""
        return cls(path or Path(config.data_dir) / "notify.sqlite3", delays=config.notify_delays,
                   timeout=config.notify_timeout, allowlist=config.callback_allowlist, **kwargs)

    def close(self) -> None:
        self._db.close()

    # -- producers ---------------------------------------------------------------------------------

    def enqueue(self, delivery: Delivery, *, now: float | None = None) -> str:
        """Store ``delivery`` durably and return its id. The same (subscription, event) is stored once;
        enqueueing it again returns the first id."""
        now = self._now(now)
        secret = delivery.hmac_secret_key.reveal() if delivery.hmac_secret_key else None
        with self._db.write() as conn:
            conn.execute(
                "INSERT INTO deliveries (id, subscription_id, owner, event_id, spec, hmac_secret, state,"
                " created_at, next_attempt_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)"
                " ON CONFLICT (subscription_id, event_id) DO NOTHING",
                (uuid.uuid4().hex, delivery.subscription_id, delivery.owner, delivery.event_id,
                 json.dumps(delivery.to_json()), secret, now, now + self.delays[0]))
            delivery_id = conn.execute("SELECT id FROM deliveries WHERE subscription_id = ? AND event_id = ?",
                                       (delivery.subscription_id, delivery.event_id)).fetchone()["id"]
        logger.debug("Queued delivery %s for subscription %s", delivery_id, delivery.subscription_id)
        self._notify_listeners()
        return delivery_id

    def cancel(self, subscription_id: str, *, reason: str = "subscription deleted",
               now: float | None = None) -> int:
        """Dead-letter every pending delivery of a subscription; returns how many."""
        now = self._now(now)
        with self._db.write() as conn:
            cursor = conn.execute(
                "UPDATE deliveries SET state = 'dead', next_attempt_at = NULL, lease_owner = NULL,"
                " lease_expires_at = NULL, hmac_secret = NULL, finished_at = ?, last_error = ?"
                " WHERE subscription_id = ? AND state = 'pending'", (now, reason, subscription_id))
        return cursor.rowcount

    def prune(self, finished_before: float) -> int:
        """Forget finished (delivered or dead) deliveries older than ``finished_before``; returns how many."""
        with self._db.write() as conn:
            cursor = conn.execute("DELETE FROM deliveries WHERE state != 'pending' AND finished_at < ?",
                                  (finished_before,))
        return cursor.rowcount

    # -- workers -----------------------------------------------------------------------------------

    def next_due_at(self) -> float | None:
        """When the earliest pending delivery becomes due (or its lease runs out); None if none is pending."""
        with self._db.read() as conn:
            row = conn.execute(
                "SELECT MIN(CASE WHEN lease_owner IS NULL THEN next_attempt_at ELSE lease_expires_at END)"
                " FROM deliveries WHERE state = 'pending'").fetchone()
        return row[0]

    def claim(self, now: float | None = None) -> Claim | None:
        """Lease the earliest due delivery and open its next attempt. Lower level than :meth:`process_one`,
        for callers that send the request themselves; settle with :meth:`finish`."""
        now = self._now(now)
        with self._db.write() as conn:
            self._settle_lost(conn, now)
            claim = None
            while claim is None:
                row = conn.execute(
                    "SELECT id, attempts, spec, hmac_secret FROM deliveries WHERE state = 'pending'"
                    " AND lease_owner IS NULL AND next_attempt_at <= ? ORDER BY next_attempt_at LIMIT 1",
                    (now,)).fetchone()
                if row is None:
                    return None
                claim = self._make_claim(conn, row, now)
            conn.execute("UPDATE deliveries SET attempts = ?, lease_owner = ?, lease_expires_at = ? WHERE id = ?",
                         (claim.attempt, claim.token, now + self.lease_seconds, claim.delivery_id))
            conn.execute("INSERT INTO attempts (delivery_id, number, started_at, outcome)"
                         " VALUES (?, ?, ?, 'in_flight')", (claim.delivery_id, claim.attempt, now))
        return claim

    def finish(self, claim: Claim, result: AttemptResult, *, now: float | None = None) -> None:
        """Record the outcome of a claimed attempt and move the delivery on, if the lease is still held."""
        now = self._now(now)
        outcome = "delivered" if result.delivered else "failed"
        with self._db.write() as conn:
            conn.execute("UPDATE attempts SET outcome = ?, status_code = ?, error = ?, duration = ?"
                         " WHERE delivery_id = ? AND number = ?",
                         (outcome, result.status_code, result.error, result.duration, claim.delivery_id,
                          claim.attempt))
            row = conn.execute("SELECT lease_owner, state FROM deliveries WHERE id = ?",
                               (claim.delivery_id,)).fetchone()
            if row is not None and row["lease_owner"] == claim.token:
                self._settle(conn, claim.delivery_id, claim.attempt, result, now)
            else:
                self._settle_late(conn, claim, result, row, now)
        self._log_outcome(claim, result)

    # -- owner API ---------------------------------------------------------------------------------

    def deliveries(self, subscription_id: str, *, owner: str | None = None, limit: int = 100,
                   state: str | None = None, before: float | None = None) -> list[DeliveryRecord]:
        """The delivery log of a subscription, newest first. ``owner`` restricts it to that owner's rows;
        ``before`` (a ``created_at``) pages further back."""
        check_state(state)
        sql = "SELECT * FROM deliveries WHERE subscription_id = ?"
        params: list[Any] = [subscription_id]
        for clause, value in (("owner = ?", owner), ("state = ?", state), ("created_at < ?", before)):
            if value is not None:
                sql += f" AND {clause}"
                params.append(value)
        sql += " ORDER BY created_at DESC, id LIMIT ?"
        params.append(max(1, min(int(limit), MAX_LIMIT)))
        with self._db.read() as conn:
            rows = conn.execute(sql, params).fetchall()
            attempts = self._attempts(conn, [r["id"] for r in rows])
        return [_record(r, attempts.get(r["id"], ())) for r in rows]

    def get(self, delivery_id: str) -> DeliveryRecord | None:
        with self._db.read() as conn:
            row = conn.execute("SELECT * FROM deliveries WHERE id = ?", (delivery_id,)).fetchone()
            attempts = self._attempts(conn, [delivery_id]) if row is not None else {}
        return None if row is None else _record(row, attempts.get(delivery_id, ()))

    # -- internals ---------------------------------------------------------------------------------

    def _make_claim(self, conn: sqlite3.Connection, row: sqlite3.Row, now: float) -> Claim | None:
        try:
            delivery = Delivery.from_json(json.loads(row["spec"]), row["hmac_secret"])
        except (ValueError, TypeError, KeyError) as e:
            # A row this code cannot read would otherwise be claimed, and fail, forever.
            logger.error("Delivery %s is unreadable, dead-lettering it: %s", row["id"], e)
            self._settle(conn, row["id"], self.max_attempts, AttemptResult(False, None, f"unreadable: {e}"), now)
            return None
        return Claim(row["id"], uuid.uuid4().hex, row["attempts"] + 1, now, delivery)

    def _settle(self, conn: sqlite3.Connection, delivery_id: str, attempts: int, result: AttemptResult,
                now: float) -> None:
        if result.delivered:
            conn.execute("UPDATE deliveries SET state = 'delivered', next_attempt_at = NULL, lease_owner = NULL,"
                         " lease_expires_at = NULL, hmac_secret = NULL, finished_at = ?, last_error = NULL"
                         " WHERE id = ?", (now, delivery_id))
        elif attempts >= self.max_attempts:
            conn.execute("UPDATE deliveries SET state = 'dead', next_attempt_at = NULL, lease_owner = NULL,"
                         " lease_expires_at = NULL, hmac_secret = NULL, finished_at = ?, last_error = ?"
                         " WHERE id = ?", (now, result.error, delivery_id))
        else:
            conn.execute("UPDATE deliveries SET next_attempt_at = ?, lease_owner = NULL, lease_expires_at = NULL,"
                         " last_error = ? WHERE id = ?", (now + self.delays[attempts], result.error, delivery_id))

    def _settle_late(self, conn: sqlite3.Connection, claim: Claim, result: AttemptResult, row: Any,
                     now: float) -> None:
        # The lease expired and the attempt was settled as lost. A late success still counts if nobody
        # else is working on the delivery; otherwise the next attempt may duplicate it (documented).
        logger.warning("Delivery %s: attempt %d finished after its lease expired", claim.delivery_id,
                       claim.attempt)
        if result.delivered and row is not None and row["state"] == "pending" and row["lease_owner"] is None:
            self._settle(conn, claim.delivery_id, claim.attempt, result, now)

    def _settle_lost(self, conn: sqlite3.Connection, now: float) -> None:
        expired = conn.execute("SELECT id, attempts, lease_expires_at FROM deliveries WHERE state = 'pending'"
                               " AND lease_owner IS NOT NULL AND lease_expires_at <= ?", (now,)).fetchall()
        for row in expired:
            logger.warning("Delivery %s: attempt %d lost (lease expired)", row["id"], row["attempts"])
            conn.execute("UPDATE attempts SET outcome = 'lost', error = ? WHERE delivery_id = ? AND number = ?"
                         " AND outcome = 'in_flight'", (LOST, row["id"], row["attempts"]))
            self._settle(conn, row["id"], row["attempts"], AttemptResult(False, None, LOST),
                         row["lease_expires_at"])

    @staticmethod
    def _attempts(conn: sqlite3.Connection, ids: list[str]) -> dict[str, list[AttemptRecord]]:
        found: dict[str, list[AttemptRecord]] = {}
        if not ids:
            return found
        marks = ",".join("?" * len(ids))
        for a in conn.execute(f"SELECT * FROM attempts WHERE delivery_id IN ({marks}) ORDER BY number", ids):
            found.setdefault(a["delivery_id"], []).append(AttemptRecord(
                a["number"], a["started_at"], a["duration"], a["status_code"], a["error"], a["outcome"]))
        return found

def _record(row: sqlite3.Row, attempts: Iterable[AttemptRecord]) -> DeliveryRecord:
    spec = json.loads(row["spec"])
    in_flight = row["lease_owner"] is not None
    return DeliveryRecord(
        delivery_id=row["id"], subscription_id=row["subscription_id"], owner=row["owner"],
        event_id=row["event_id"], callback_url=spec.get("callback_url", ""), method=spec.get("method", ""),
        encoding=spec.get("encoding", ""), state=row["state"], in_flight=in_flight, created_at=row["created_at"],
        next_attempt_at=None if in_flight or row["state"] != "pending" else row["next_attempt_at"],
        finished_at=row["finished_at"], last_error=row["last_error"], attempts=tuple(attempts))
