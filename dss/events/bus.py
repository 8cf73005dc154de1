"""The durable event queue of the embedded default: SQLite (WAL) plus worker threads.

Schema: `messages(id, handler, body, attempts, due, lease_until, last_error)` and `dead(...)`.
`publish` inserts one message per handler in one transaction; it returns once the transaction is
durable. A worker leases the oldest due message (`lease_until = now + lease`), runs the handler, and
deletes the message on success. On failure it retries with exponential backoff; after `max_attempts`
the message moves to `dead` (inspected with `dss-ops.py events dead`). A crash mid-handler leaves the
message leased by a process that no longer exists: `release_orphans()`, called when a runtime starts,
makes such messages due at once (otherwise they would wait for the lease to expire).
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dss.events import Event
from dss.sqlite import immediate

__all__ = ["EventBus", "SQLiteEventBus", "RetryPolicy", "EventWorkers", "Handler"]

logger = logging.getLogger(__name__)

Handler = Callable[[Event], None]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    handler TEXT NOT NULL,
    body TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    lease_until REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS messages_due ON messages (due, lease_until);
CREATE TABLE IF NOT EXISTS dead (
    id INTEGER PRIMARY KEY, handler TEXT NOT NULL, body TEXT NOT NULL, attempts INTEGER NOT NULL,
    failed_at REAL NOT NULL, last_error TEXT
);
"""


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 12
    base_delay: float = 1.0
    max_delay: float = 600.0
    lease: float = 900.0

    def delay(self, attempts: int) -> float:
        return min(self.max_delay, self.base_delay * 2 ** max(0, attempts - 1))


@dataclass(frozen=True)
class Message:
    id: int
    handler: str
    event: Event
    attempts: int


class EventBus:
    """The port: publish events; lease, finish and fail messages for workers."""

    handlers: tuple[str, ...]

    def publish(self, event: Event) -> None:
        raise NotImplementedError

    def lease(self) -> Message | None:
        raise NotImplementedError

    def done(self, message: Message) -> None:
        raise NotImplementedError

    def failed(self, message: Message, error: str) -> None:
        raise NotImplementedError

    def release_orphans(self) -> int:
        raise NotImplementedError

    def next_due(self) -> float | None:
        raise NotImplementedError

    def pending(self) -> int:
        raise NotImplementedError


class SQLiteEventBus(EventBus):
    def __init__(self, path: Path, handlers: tuple[str, ...], policy: RetryPolicy = RetryPolicy()) -> None:
        self.path = path
        self.handlers = handlers
        self.policy = policy
        self._local = threading.local()
        self._wakeup = threading.Condition()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db().executescript(_SCHEMA)

    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def publish(self, event: Event) -> None:
        if not self.handlers:
            return
        now, body = time.time(), event.to_json()
        with immediate(self._db()) as db:
            db.executemany("INSERT INTO messages (handler, body, due) VALUES (?, ?, ?)",
                           [(handler, body, now) for handler in self.handlers])
        with self._wakeup:
            self._wakeup.notify_all()

    def lease(self) -> Message | None:
        now, owner = time.time(), _identity(os.getpid())
        row = self._db().execute(
            "UPDATE messages SET lease_until = ?, attempts = attempts + 1, owner = ? WHERE id = ("
            " SELECT id FROM messages WHERE due <= ? AND lease_until <= ? ORDER BY id LIMIT 1)"
            " RETURNING id, handler, body, attempts", (now + self.policy.lease, owner, now, now)).fetchone()
        if row is None:
            return None
        return Message(row[0], row[1], Event.from_json(row[2]), row[3])

    def done(self, message: Message) -> None:
        self._db().execute("DELETE FROM messages WHERE id = ?", (message.id,))

    def failed(self, message: Message, error: str) -> None:
        db = self._db()
        if message.attempts >= self.policy.max_attempts:
            with immediate(db):
                db.execute("INSERT OR REPLACE INTO dead (id, handler, body, attempts, failed_at, last_error)"
                           " SELECT id, handler, body, attempts, ?, ? FROM messages WHERE id = ?",
                           (time.time(), error, message.id))
                db.execute("DELETE FROM messages WHERE id = ?", (message.id,))
            logger.error("Gave up on %s for %s after %d attempts", message.handler, message.event.key,
                         message.attempts)
            return
        due = time.time() + self.policy.delay(message.attempts)
        db.execute("UPDATE messages SET due = ?, lease_until = 0, last_error = ? WHERE id = ?",
                   (due, error, message.id))

    def release_orphans(self) -> int:
        """Make messages leased by processes that have died due again; returns how many."""
        db = self._db()
        owners = [row[0] for row in db.execute(
            "SELECT DISTINCT owner FROM messages WHERE lease_until > ? AND owner IS NOT NULL", (time.time(),))]
        released = 0
        for owner in owners:
            if _identity(int(str(owner).split(":")[0])) != str(owner):
                released += db.execute("UPDATE messages SET lease_until = 0 WHERE owner = ? AND lease_until > ?",
                                       (owner, time.time())).rowcount
        if released:
            logger.info("Released %d events leased by processes that no longer run", released)
        return released

    def next_due(self) -> float | None:
        row = self._db().execute("SELECT MIN(MAX(due, lease_until)) FROM messages").fetchone()
        return row[0]

    def pending(self) -> int:
        return self._db().execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def dead_letters(self) -> list[dict]:
        rows = self._db().execute("SELECT id, handler, body, attempts, failed_at, last_error FROM dead ORDER BY id")
        return [dict(zip(("id", "handler", "body", "attempts", "failed_at", "last_error"), r)) for r in rows]

    def wait(self, timeout: float) -> None:
        with self._wakeup:
            self._wakeup.wait(timeout)

    def wake(self) -> None:
        with self._wakeup:
            self._wakeup.notify_all()


def _identity(pid: int) -> str | None:
    """`pid:start time` of a running process, None if it is gone. The start time tells a reused pid
    from the lease holder, and a zombie (killed, not yet reaped) counts as gone. Without /proc, the
    pid alone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return str(pid)
    state, *rest = stat.rsplit(")", 1)[1].split()
    return None if state in ("Z", "X") else f"{pid}:{rest[18]}"


class EventWorkers:
    """Threads that lease messages and run the named handler; stop() returns promptly."""

    def __init__(self, bus: SQLiteEventBus, handlers: Mapping[str, Handler], threads: int = 2) -> None:
        self.bus = bus
        self.handlers = dict(handlers)
        self.count = threads
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._stop.clear()
        self.bus.release_orphans()
        for n in range(self.count):
            thread = threading.Thread(target=self._run, name=f"dss-events-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.bus.wake()
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.run_once():
                due = self.bus.next_due()
                pause = 1.0 if due is None else min(1.0, max(0.0, due - time.time()))
                if pause > 0:
                    self.bus.wait(pause)

    def run_once(self) -> bool:
        """Handle one due message; False when none was due."""
        try:
            message = self.bus.lease()
        except sqlite3.OperationalError as exc:  # busy beyond the timeout: try again later
            logger.warning("Event queue busy: %s", exc)
            return False
        if message is None:
            return False
        handler = self.handlers.get(message.handler)
        try:
            if handler is None:
                raise LookupError(f"no handler named {message.handler!r}")
            handler(message.event)
        except Exception as exc:  # noqa: BLE001 - recorded and retried
            logger.warning("%s failed for %s (attempt %d): %s", message.handler, message.event.key,
                           message.attempts, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
            self.bus.failed(message, f"{type(exc).__name__}: {exc}")
        else:
            self.bus.done(message)
        return True

    def drain(self, timeout: float = 30.0) -> None:
        """Run until nothing is pending (tests and `dss-ops`); raises TimeoutError otherwise."""
        deadline = time.time() + timeout
        while self.bus.pending():
            if time.time() > deadline:
                raise TimeoutError(f"{self.bus.pending()} events still pending")
            if not self.run_once():
                time.sleep(0.01)
