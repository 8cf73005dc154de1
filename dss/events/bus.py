"""The durable event queue of the embedded default: SQLite (WAL) plus worker threads.

Schema: `messages(id, handler, body, attempts, due, lease_until, last_error, owner, intent)` and
`dead(...)`. `publish` inserts one message per handler in one transaction; it returns once the
transaction is durable. A worker leases the oldest due message (`lease_until = now + lease`), runs the
handler, and deletes the message on success. On failure it retries with exponential backoff; after
`max_attempts` the message moves to `dead` (inspected with `dss-ops.py events dead`). A crash
mid-handler leaves the message leased by a process that no longer exists: `release_orphans()`, called
when a runtime starts and every minute, makes such messages due at once (otherwise they would wait for
the lease to expire). A handler that must wait for durable work it started elsewhere (a workflow)
raises `Deferred`: the message stays queued, due again later, and the wait is not a failed attempt.

Intents close the window between a commit and its publication (a writer killed after the conditional
create but before `publish` would leave an object nobody replicates or indexes). A writer announces
its events *before* the commit, `with bus.intent(events): <commit>`:

- on entry the messages are inserted durably with `intent = 1`, owned by the writer's process and due
  only after `RetryPolicy.intent` seconds, so workers leave them alone while the write is under way;
- on a normal exit they are confirmed (`intent = 0`, due now): an ordinary publication. `cancel()`
  inside the block deletes them instead (the writer found that someone else wrote the key);
- on an exception they are made due now and still marked as intents;
- if the writer dies, `release_orphans()` (at start and every minute) makes its intents due.

A worker that leases an intent first asks whether the announced key exists (`EventWorkers(exists=)`):
if it does, the handler runs as for any event (so the write is replicated and indexed); if not, the
write never happened and the message is dropped — unless the writer confirmed it meanwhile, which the
drop detects (`intent = 0`) and then runs it. A writer that confirms messages already dropped (it was
slower than `RetryPolicy.intent`) publishes them again. At every moment of a crash the queue therefore
holds a durable event for every committed key, and no event survives for a key never committed.
"""
from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dss.events import Event
from dss.processes import process_identity
from dss.sqlite import immediate

__all__ = ["EventBus", "SQLiteEventBus", "open_event_bus", "RetryPolicy", "EventWorkers", "Handler", "Intent",
           "Deferred"]

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
    owner TEXT,
    intent INTEGER NOT NULL DEFAULT 0
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
    # How long an announced write may take before a worker checks whether it happened anyway.
    intent: float = 3600.0

    def delay(self, attempts: int) -> float:
        return min(self.max_delay, self.base_delay * 2 ** max(0, attempts - 1))


class Deferred(Exception):
    """Raised by a handler whose event cannot be handled *yet* because other durable work it started is
    still under way (the sync handler waiting for a large blob's copy workflow). The message is due again
    after `after` seconds and the wait does not count as a failed attempt, so a long wait never
    dead-letters it; the handler must raise something else once the work it waits for has failed."""

    def __init__(self, reason: str, after: float) -> None:
        super().__init__(reason)
        self.after = after


@dataclass(frozen=True)
class Message:
    id: int
    handler: str
    event: Event
    attempts: int
    intent: bool = False


class Intent:
    """Events announced for a write in progress (see the module docstring); a context manager.

    This base class publishes the events when the block ends without an exception and `cancel()` was
    not called: right for a bus fed by the store's own commit notifications (S3 and GCS in the cloud),
    where a commit cannot go unannounced."""

    def __init__(self, bus: EventBus, events: Sequence[Event]) -> None:
        self.bus = bus
        self.events = tuple(events)
        self.cancelled = False

    def cancel(self) -> None:
        """Nothing was written after all (the key already existed): announce nothing."""
        self.cancelled = True

    def __enter__(self) -> Intent:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            try:
                self._failed()
            except Exception:  # noqa: BLE001 - keep the write's own error; the intents are checked later
                logger.warning("Could not settle the events of a failed write", exc_info=True)
        elif self.cancelled:
            self._withdrawn()
        else:
            self._confirmed()

    def _confirmed(self) -> None:
        for event in self.events:
            self.bus.publish(event)

    def _withdrawn(self) -> None:
        pass

    def _failed(self) -> None:
        """Whether the write happened is unknown; this base class cannot tell, and announces nothing."""


class EventBus:
    """The port: publish events; lease, finish and fail messages for workers."""

    handlers: tuple[str, ...]

    def publish(self, event: Event, handlers: Iterable[str] | None = None) -> None:
        """Queue `event` for every handler, or only for those of `handlers` the bus has."""
        raise NotImplementedError

    def intent(self, events: Sequence[Event]) -> Intent:
        """Announce `events` before the write they describe: `with bus.intent(events): <commit>`."""
        return Intent(self, events)

    def lease(self) -> Message | None:
        raise NotImplementedError

    def done(self, message: Message) -> None:
        raise NotImplementedError

    def failed(self, message: Message, error: str) -> None:
        raise NotImplementedError

    def defer(self, message: Message, after: float, reason: str) -> None:
        """Make `message` due again in `after` seconds without counting its attempt (`Deferred`). A bus
        that cannot tell a wait from a failure counts it as one."""
        self.failed(message, f"deferred: {reason}")

    def drop_intent(self, message: Message) -> None:
        """A leased intent whose key does not exist: the announced write never happened."""
        self.done(message)

    def release_orphans(self) -> int:
        raise NotImplementedError

    def next_due(self) -> float | None:
        raise NotImplementedError

    def pending(self) -> int:
        raise NotImplementedError

    def dead_letters(self) -> list[dict]:
        """Messages given up on: at least `handler` and `body` each."""
        raise NotImplementedError

    def redrive(self, handler: str | None = None, limit: int = 100) -> int:
        """Queue again up to `limit` dead letters (of `handler`, or of every handler); how many."""
        raise NotImplementedError

    def wait(self, timeout: float) -> None:
        """Block up to `timeout` seconds, or until `wake()`."""
        time.sleep(timeout)

    def wake(self) -> None:
        """Wake the workers waiting in `wait()`."""


def open_event_bus(url: str, handlers: tuple[str, ...], stage: str) -> EventBus:
    """The bus `DSS_QUEUE_URL` names: `sqlite://<path>` (this module) or `sns://…`/`sqs://…`
    (`dss.events.sqs`, imported only then)."""
    scheme = url.split("://", 1)[0]
    if scheme == "sqlite":
        return SQLiteEventBus(Path(url[len("sqlite://"):]), handlers)
    if scheme in ("sns", "sqs"):
        from dss.events.sqs import SQSEventBus

        return SQSEventBus.open(url, handlers, stage)
    raise ValueError(f"DSS_QUEUE_URL must be a sqlite://, sns:// or sqs:// URL, got {url!r}")


class SQLiteEventBus(EventBus):
    def __init__(self, path: Path, handlers: tuple[str, ...], policy: RetryPolicy = RetryPolicy()) -> None:
        self.path = path
        self.handlers = handlers
        self.policy = policy
        self._local = threading.local()
        self._wakeup = threading.Condition()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db().executescript(_SCHEMA)
        self._migrate()

    def _migrate(self) -> None:
        """Queues created before intents existed lack the `intent` column."""
        db = self._db()
        if "intent" not in {row[1] for row in db.execute("PRAGMA table_info(messages)")}:
            try:
                db.execute("ALTER TABLE messages ADD COLUMN intent INTEGER NOT NULL DEFAULT 0")
            except sqlite3.OperationalError as error:  # another process added it first
                if "duplicate column" not in str(error):
                    raise

    def _db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            self._local.conn = conn
        return conn

    def publish(self, event: Event, handlers: Iterable[str] | None = None) -> None:
        chosen = self.handlers if handlers is None else tuple(h for h in self.handlers if h in set(handlers))
        if not chosen:
            return
        now, body = time.time(), event.to_json()
        with immediate(self._db()) as db:
            db.executemany("INSERT INTO messages (handler, body, due) VALUES (?, ?, ?)",
                           [(handler, body, now) for handler in chosen])
        self.wake()

    def intent(self, events: Sequence[Event]) -> Intent:
        return _DurableIntent(self, events)

    def _announce(self, events: Sequence[Event]) -> list[tuple[int, str, str]]:
        """Insert intent messages; (id, handler, body) of each."""
        due, owner = time.time() + self.policy.intent, process_identity(os.getpid())
        rows = []
        with immediate(self._db()) as db:
            for event in events:
                body = event.to_json()
                for handler in self.handlers:
                    (message_id,) = db.execute(
                        "INSERT INTO messages (handler, body, due, owner, intent) VALUES (?, ?, ?, ?, 1)"
                        " RETURNING id", (handler, body, due, owner)).fetchone()
                    rows.append((message_id, handler, body))
        return rows

    def _confirm(self, rows: Sequence[tuple[int, str, str]]) -> None:
        """Turn intents into ordinary messages; publish again any a worker dropped meanwhile."""
        now = time.time()
        with immediate(self._db()) as db:
            for message_id, handler, body in rows:
                if not db.execute("UPDATE messages SET intent = 0, due = ? WHERE id = ?",
                                  (now, message_id)).rowcount:
                    db.execute("INSERT INTO messages (handler, body, due) VALUES (?, ?, ?)", (handler, body, now))
        self.wake()

    def _settle(self, rows: Sequence[tuple[int, str, str]], *, cancel: bool) -> None:
        """Delete intents (`cancel`), or make them due now for a worker to check."""
        ids = [(message_id,) for message_id, _, _ in rows]
        with immediate(self._db()) as db:
            if cancel:
                db.executemany("DELETE FROM messages WHERE id = ? AND intent = 1", ids)
            else:
                db.executemany("UPDATE messages SET due = 0 WHERE id = ? AND intent = 1", ids)
        self.wake()

    def drop_intent(self, message: Message) -> None:
        """A leased intent whose key does not exist: drop it, unless its writer confirmed it meanwhile
        (then release it, to run at once)."""
        with immediate(self._db()) as db:
            if not db.execute("DELETE FROM messages WHERE id = ? AND intent = 1", (message.id,)).rowcount:
                db.execute("UPDATE messages SET lease_until = 0 WHERE id = ?", (message.id,))

    def lease(self) -> Message | None:
        now, owner = time.time(), process_identity(os.getpid())
        row = self._db().execute(
            "UPDATE messages SET lease_until = ?, attempts = attempts + 1, owner = ? WHERE id = ("
            " SELECT id FROM messages WHERE due <= ? AND lease_until <= ? ORDER BY id LIMIT 1)"
            " RETURNING id, handler, body, attempts, intent", (now + self.policy.lease, owner, now, now)).fetchone()
        if row is None:
            return None
        return Message(row[0], row[1], Event.from_json(row[2]), row[3], bool(row[4]))

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

    def defer(self, message: Message, after: float, reason: str) -> None:
        self._db().execute("UPDATE messages SET due = ?, lease_until = 0, attempts = MAX(0, attempts - 1),"
                           " last_error = ? WHERE id = ?", (time.time() + after, f"deferred: {reason}", message.id))

    def release_orphans(self) -> int:
        """Make messages leased, or announced, by processes that have died due now; returns how many."""
        db = self._db()
        now = time.time()
        owners = [row[0] for row in db.execute(
            "SELECT DISTINCT owner FROM messages WHERE owner IS NOT NULL AND (lease_until > ?"
            " OR (intent = 1 AND due > ?))", (now, now))]
        released = 0
        for owner in owners:
            if process_identity(int(str(owner).split(":")[0])) != str(owner):
                with immediate(db):
                    released += db.execute("UPDATE messages SET lease_until = 0 WHERE owner = ? AND lease_until > ?",
                                           (owner, now)).rowcount
                    released += db.execute("UPDATE messages SET due = 0 WHERE owner = ? AND intent = 1 AND due > ?",
                                           (owner, now)).rowcount
        if released:
            logger.info("Released %d events leased or announced by processes that no longer run", released)
            self.wake()
        return released

    def next_due(self) -> float | None:
        row = self._db().execute("SELECT MIN(MAX(due, lease_until)) FROM messages").fetchone()
        return row[0]

    def pending(self) -> int:
        return self._db().execute("SELECT COUNT(*) FROM messages").fetchone()[0]

    def dead_letters(self) -> list[dict]:
        rows = self._db().execute("SELECT id, handler, body, attempts, failed_at, last_error FROM dead ORDER BY id")
        return [dict(zip(("id", "handler", "body", "attempts", "failed_at", "last_error"), r)) for r in rows]

    def redrive(self, handler: str | None = None, limit: int = 100) -> int:
        with immediate(self._db()) as db:
            rows = db.execute("SELECT id, handler, body FROM dead WHERE ? IS NULL OR handler = ? ORDER BY id LIMIT ?",
                              (handler, handler, limit)).fetchall()
            db.executemany("INSERT INTO messages (handler, body, due) VALUES (?, ?, ?)",
                           [(name, body, time.time()) for _, name, body in rows])
            db.executemany("DELETE FROM dead WHERE id = ?", [(row[0],) for row in rows])
        self.wake()
        return len(rows)

    def wait(self, timeout: float) -> None:
        with self._wakeup:
            self._wakeup.wait(timeout)

    def wake(self) -> None:
        with self._wakeup:
            self._wakeup.notify_all()


class _DurableIntent(Intent):
    """Intent messages inserted before the write (see the module docstring)."""

    def __init__(self, bus: SQLiteEventBus, events: Sequence[Event]) -> None:
        super().__init__(bus, events)
        self.queue = bus
        self.rows = bus._announce(self.events)

    def _confirmed(self) -> None:
        self.queue._confirm(self.rows)

    def _withdrawn(self) -> None:
        self.queue._settle(self.rows, cancel=True)

    def _failed(self) -> None:
        self.queue._settle(self.rows, cancel=False)


class EventWorkers:
    """Threads that lease messages and run the named handler; stop() returns promptly.

    `exists(event)` says whether an event's key is in its replica; it decides intents (see the module
    docstring). Without it, every intent is taken as a write that happened."""

    orphan_check = 60.0  # seconds between looks for messages of processes that died

    def __init__(self, bus: EventBus, handlers: Mapping[str, Handler], threads: int = 2,
                 exists: Callable[[Event], bool] | None = None) -> None:
        self.bus = bus
        self.handlers = dict(handlers)
        self.count = threads
        self.exists = exists or (lambda event: True)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._next_orphan_check = 0.0
        self._orphan_lock = threading.Lock()

    def start(self) -> None:
        self._stop.clear()
        self.bus.release_orphans()
        self._next_orphan_check = time.monotonic() + self.orphan_check
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
            self._release_orphans_now_and_then()
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
            if message.intent and not self.exists(message.event):
                self.bus.drop_intent(message)  # the announced write never happened
                return True
            handler(message.event)
        except Deferred as wait:
            logger.debug("%s deferred %s for %.1f s: %s", message.handler, message.event.key, wait.after, wait)
            self.bus.defer(message, wait.after, str(wait))
        except Exception as exc:  # noqa: BLE001 - recorded and retried
            logger.warning("%s failed for %s (attempt %d): %s", message.handler, message.event.key,
                           message.attempts, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
            self.bus.failed(message, f"{type(exc).__name__}: {exc}")
        else:
            self.bus.done(message)
        return True

    def _release_orphans_now_and_then(self) -> None:
        """A sibling process may die while this one runs: look for its messages every minute."""
        now = time.monotonic()
        with self._orphan_lock:
            if now < self._next_orphan_check:
                return
            self._next_orphan_check = now + self.orphan_check
        try:
            self.bus.release_orphans()
        except sqlite3.OperationalError as exc:
            logger.warning("Event queue busy: %s", exc)

    def drain(self, timeout: float = 30.0) -> None:
        """Run until nothing is pending (tests and `dss-ops`); raises TimeoutError otherwise."""
        deadline = time.time() + timeout
        while self.bus.pending():
            if time.time() > deadline:
                raise TimeoutError(f"{self.bus.pending()} events still pending")
            if not self.run_once():
                time.sleep(0.01)
