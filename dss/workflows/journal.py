"""The executor's durable record, in one SQLite file: executions, their scopes, and their history.

* `executions`: one row per execution — its workflow name, the definition it started with (a resumed
  execution keeps running that one), input, status (RUNNING | SUCCEEDED | FAILED), output or error.
* `scopes`: where each running state machine *is*. An execution's top level is scope `""`; each Parallel
  branch and each Map item runs in a child scope named after its parent, state, visit and attempt
  (`/CopyParts@2.0#17`: item 17 of the first attempt of Map state CopyParts, entered at step 2). A scope
  row holds the state about to run and that state's input, the retry counts of the current state and
  any pending wake-up time (Wait, retry back-off); when the scope ends, its output or error.
* `events`: the history, for people and for `workflows show`.

Each transition is one transaction: the scope moves to its next state with that state's input (which
carries the finished task's result) and the events are appended, together. So after a crash every
scope restarts at the state it was about to run: a finished task is never run again, a task that was
in flight runs again (tasks are idempotent), and a finished Map item or branch is read, not re-run.

WAL mode with `synchronous=NORMAL`: a committed transition survives the process being killed; after a
power loss the last transitions may be lost, which only means re-running idempotent tasks.
"""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dss.sqlite import immediate

__all__ = ["Journal", "ExecutionRecord", "ScopeRecord", "EventRecord", "RUNNING", "SUCCEEDED", "FAILED"]

RUNNING, SUCCEEDED, FAILED = "RUNNING", "SUCCEEDED", "FAILED"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS executions (
    id TEXT PRIMARY KEY, workflow TEXT NOT NULL, definition TEXT NOT NULL, input TEXT NOT NULL,
    status TEXT NOT NULL, output TEXT, error TEXT, cause TEXT, started REAL NOT NULL, stopped REAL);
CREATE INDEX IF NOT EXISTS executions_by_status ON executions (status, started);
CREATE TABLE IF NOT EXISTS scopes (
    execution_id TEXT NOT NULL, scope TEXT NOT NULL, status TEXT NOT NULL, step INTEGER NOT NULL,
    state TEXT NOT NULL, data TEXT NOT NULL, retries TEXT NOT NULL DEFAULT '{}', wake_at REAL,
    output TEXT, error TEXT, cause TEXT, PRIMARY KEY (execution_id, scope));
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, execution_id TEXT NOT NULL, at REAL NOT NULL,
    scope TEXT NOT NULL, type TEXT NOT NULL, state TEXT, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_by_execution ON events (execution_id, seq);
"""


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@dataclass(frozen=True)
class ExecutionRecord:
    id: str
    workflow: str
    definition: dict
    input: Any
    status: str
    started: float
    stopped: float | None = None
    output: Any = None
    error: str | None = None
    cause: str | None = None

    def summary(self) -> dict[str, Any]:
        """A JSON view without the definition (list output, API responses)."""
        return {"id": self.id, "workflow": self.workflow, "status": self.status, "started": self.started,
                "stopped": self.stopped, "error": self.error, "cause": self.cause}


@dataclass
class ScopeRecord:
    scope: str
    status: str
    step: int
    state: str
    data: Any
    retries: dict[str, int] = field(default_factory=dict)
    wake_at: float | None = None
    output: Any = None
    error: str | None = None
    cause: str | None = None


@dataclass(frozen=True)
class EventRecord:
    seq: int
    at: float
    scope: str
    type: str
    state: str | None
    detail: dict


Event = tuple[str, str | None, dict]  # (type, state, detail) of an event to append


class Journal:
    """Thread-safe: one connection, one lock. Another process (the ops CLI) may read the file meanwhile."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _append(self, execution_id: str, scope: str, events: Iterable[Event], now: float) -> None:
        self._conn.executemany(
            "INSERT INTO events (execution_id, at, scope, type, state, detail) VALUES (?, ?, ?, ?, ?, ?)",
            [(execution_id, now, scope, kind, state, _dump(detail)) for kind, state, detail in events])

    # --- executions ------------------------------------------------------------------------------
    def create_execution(self, execution_id: str, workflow: str, definition: dict, data: Any) -> ExecutionRecord | None:
        """Record a new RUNNING execution; returns the existing record instead if the id is taken."""
        now = time.time()
        with self._lock, immediate(self._conn):
            existing = self._execution(execution_id)
            if existing is not None:
                return existing
            self._conn.execute(
                "INSERT INTO executions (id, workflow, definition, input, status, started) VALUES (?, ?, ?, ?, ?, ?)",
                (execution_id, workflow, _dump(definition), _dump(data), RUNNING, now))
            self._append(execution_id, "", [("ExecutionStarted", None, {"input": data, "workflow": workflow})], now)
        return None

    def finish_execution(self, execution_id: str, status: str, *, output: Any = None, error: str | None = None,
                         cause: str | None = None) -> None:
        now = time.time()
        detail = {"output": output} if status == SUCCEEDED else {"error": error, "cause": cause}
        with self._lock, immediate(self._conn):
            self._conn.execute("UPDATE executions SET status = ?, output = ?, error = ?, cause = ?, stopped = ? "
                               "WHERE id = ? AND status = ?",
                               (status, _dump(output), error, cause, now, execution_id, RUNNING))
            self._append(execution_id, "", [(f"Execution{status.capitalize()}", None, detail)], now)

    def record(self, execution_id: str, scope: str, events: Iterable[Event]) -> None:
        with self._lock, immediate(self._conn):
            self._append(execution_id, scope, events, time.time())

    def execution(self, execution_id: str) -> ExecutionRecord | None:
        with self._lock:
            return self._execution(execution_id)

    def _execution(self, execution_id: str) -> ExecutionRecord | None:
        row = self._conn.execute("SELECT id, workflow, definition, input, status, started, stopped, output, "
                                 "error, cause FROM executions WHERE id = ?", (execution_id,)).fetchone()
        return None if row is None else _execution_record(row)

    def executions(self, status: str | None = None, limit: int = 100) -> list[ExecutionRecord]:
        """Most recent first."""
        query = ("SELECT id, workflow, definition, input, status, started, stopped, output, error, cause "
                 "FROM executions")
        args: tuple = ()
        if status:
            query, args = query + " WHERE status = ?", (status,)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY started DESC, id LIMIT ?", (*args, limit)).fetchall()
        return [_execution_record(row) for row in rows]

    def ids(self, status: str) -> set[str]:
        """The ids of every execution with `status` (cheap: for an owner polling for new executions)."""
        with self._lock:
            return {row[0] for row in self._conn.execute("SELECT id FROM executions WHERE status = ?", (status,))}

    def events(self, execution_id: str, after: int = 0) -> list[EventRecord]:
        with self._lock:
            rows = self._conn.execute("SELECT seq, at, scope, type, state, detail FROM events "
                                      "WHERE execution_id = ? AND seq > ? ORDER BY seq", (execution_id, after))
            return [EventRecord(seq, at, scope, kind, state, json.loads(detail))
                    for seq, at, scope, kind, state, detail in rows.fetchall()]

    # --- scopes ----------------------------------------------------------------------------------
    def open_scope(self, execution_id: str, scope: str, state: str, data: Any, events: Iterable[Event]) -> ScopeRecord:
        """The scope's record, created at `state` with `data` if it does not exist yet."""
        now = time.time()
        with self._lock, immediate(self._conn):
            existing = self._scope(execution_id, scope)
            if existing is not None:
                return existing
            self._conn.execute("INSERT INTO scopes (execution_id, scope, status, step, state, data) "
                               "VALUES (?, ?, ?, 0, ?, ?)", (execution_id, scope, RUNNING, state, _dump(data)))
            self._append(execution_id, scope, events, now)
        return ScopeRecord(scope, RUNNING, 0, state, data)

    def scope(self, execution_id: str, scope: str) -> ScopeRecord | None:
        with self._lock:
            return self._scope(execution_id, scope)

    def _scope(self, execution_id: str, scope: str) -> ScopeRecord | None:
        row = self._conn.execute("SELECT scope, status, step, state, data, retries, wake_at, output, error, cause "
                                 "FROM scopes WHERE execution_id = ? AND scope = ?", (execution_id, scope)).fetchone()
        return None if row is None else _scope_record(row)

    def scopes(self, execution_id: str, prefix: str) -> list[ScopeRecord]:
        """The scopes whose names start with `prefix` (a Map's items, for progress)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT scope, status, step, state, data, retries, wake_at, output, error, cause FROM scopes "
                "WHERE execution_id = ? AND substr(scope, 1, ?) = ?", (execution_id, len(prefix), prefix)).fetchall()
        return [_scope_record(row) for row in rows]

    def advance(self, execution_id: str, scope: str, step: int, state: str, data: Any,
                events: Iterable[Event]) -> None:
        """The transition to `state` (the scope's `step`-th), with its input; retries and wake-up reset."""
        with self._lock, immediate(self._conn):
            self._conn.execute("UPDATE scopes SET step = ?, state = ?, data = ?, retries = '{}', wake_at = NULL "
                               "WHERE execution_id = ? AND scope = ?", (step, state, _dump(data), execution_id, scope))
            self._append(execution_id, scope, events, time.time())

    def pause(self, execution_id: str, scope: str, retries: dict[str, int], wake_at: float | None,
              events: Iterable[Event]) -> None:
        """The current state will be retried (`retries`) or waits, until `wake_at`."""
        with self._lock, immediate(self._conn):
            self._conn.execute("UPDATE scopes SET retries = ?, wake_at = ? WHERE execution_id = ? AND scope = ?",
                               (_dump(retries), wake_at, execution_id, scope))
            self._append(execution_id, scope, events, time.time())

    def close_scope(self, execution_id: str, scope: str, status: str, events: Iterable[Event], *,
                    output: Any = None, error: str | None = None, cause: str | None = None) -> None:
        with self._lock, immediate(self._conn):
            self._conn.execute("UPDATE scopes SET status = ?, output = ?, error = ?, cause = ?, wake_at = NULL "
                               "WHERE execution_id = ? AND scope = ?",
                               (status, _dump(output), error, cause, execution_id, scope))
            self._append(execution_id, scope, events, time.time())


def _execution_record(row: tuple) -> ExecutionRecord:
    execution_id, workflow, definition, data, status, started, stopped, output, error, cause = row
    return ExecutionRecord(execution_id, workflow, json.loads(definition), json.loads(data), status, started,
                           stopped, _load(output), error, cause)


def _scope_record(row: tuple) -> ScopeRecord:
    name, status, step, state, data, retries, wake_at, output, error, cause = row
    return ScopeRecord(name, status, step, state, _load(data), _load(retries), wake_at, _load(output), error, cause)
