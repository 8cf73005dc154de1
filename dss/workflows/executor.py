"""The embedded workflow executor: runs the ASL definitions in-process, durably.

    executor = Executor(data_dir / "workflows.sqlite3", context=TaskContext(stores=factory, tables=tables))
    executor.resume()                                   # pick up executions a crash or restart left running
    execution_id = executor.start("blob-copy", {...}, name="copy-<key>")   # returns at once
    record = executor.wait(execution_id, timeout=600)   # ExecutionRecord: status, output or error/cause
    executor.close()                                    # running executions stay RUNNING, for resume()

What it runs: definitions loaded by `load` (which refuses unsupported constructs and unknown tasks, see
`dss.workflows.asl.model`), or named ones from `dss/workflows/definitions/`. Durability is the journal's
(`dss.workflows.journal`): every transition is committed before the next state runs, and `resume()`
continues each RUNNING execution from its recorded states. One process should own a journal file at a
time; any number may read it (`dss.workflows.history`).

Concurrency: every execution has a thread that steps through its states; Parallel branches and Map
items run on threads of their own (a Map at most MaxConcurrency at once, or `map_concurrency` when the
definition says 0), which mostly wait; the task functions — the actual work — run on one pool of
`max_workers` threads (default: the machine's cores), shared by all executions.

Execution names are idempotency keys: starting an execution under a name already used returns that
execution if the input is the same, and raises `ExecutionAlreadyExists` if not.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from dss.workflows import definitions
from dss.workflows.asl.model import Machine, load_machine
from dss.workflows.binding import task_names
from dss.workflows.errors import DefinitionError, ExecutionAlreadyExists, ExecutionNotFound, UnknownTask
from dss.workflows.interpreter import Run, Services
from dss.workflows.journal import FAILED, RUNNING, EventRecord, ExecutionRecord, Journal
from dss.workflows.registry import TaskContext, TaskRegistry, default_registry

__all__ = ["Executor", "Workflow"]


@dataclasses.dataclass(frozen=True)
class Workflow:
    """A loaded, checked definition: `name` (e.g. "blob-copy"), the JSON and its model."""
    name: str
    definition: dict
    machine: Machine


class Executor:
    def __init__(self, journal_path: Path, *, registry: TaskRegistry | None = None,
                 context: TaskContext | None = None, max_workers: int | None = None,
                 map_concurrency: int | None = None, task_time_budget: float | None = 600.0) -> None:
        """`registry`: the tasks (default: every DSS task); `context`: what tasks are given (stores,
        tables); `max_workers`: task pool size (default: cores); `map_concurrency`: the item limit of a
        Map whose MaxConcurrency is 0 (default: 4 × max_workers); `task_time_budget`: seconds a task
        invocation is told it has (`TaskContext.time_left`) before it should save progress and return."""
        self.registry = registry or default_registry()
        self.max_workers = max_workers or os.cpu_count() or 2
        self.journal = Journal(journal_path)
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="dss-workflow-task")
        self._services = Services(self.journal, self.registry, context or TaskContext(), self._pool, self._stop,
                                  map_concurrency or 4 * self.max_workers, task_time_budget)
        self._lock = threading.Lock()
        self._threads: dict[str, threading.Thread] = {}
        self._done = threading.Condition(self._lock)
        self._workflows: dict[str, Workflow] = {}

    # --- definitions -----------------------------------------------------------------------------
    def load(self, definition: dict, name: str) -> Workflow:
        """Check `definition` and every task it names; DefinitionError (or UnknownTask) if it cannot run."""
        machine = load_machine(definition, where=f"definition {name!r}")
        missing = sorted(task_names(definition) - self.registry.names())
        if missing:
            raise UnknownTask(f"definition {name!r} uses unregistered task(s): {', '.join(missing)}")
        return Workflow(name, definition, machine)

    def workflow(self, name: str) -> Workflow:
        """A definition from `dss/workflows/definitions/`, loaded once."""
        with self._lock:
            cached = self._workflows.get(name)
        if cached is None:
            cached = self.load(definitions.load(name), name)
            with self._lock:
                self._workflows[name] = cached
        return cached

    # --- executions ------------------------------------------------------------------------------
    def start(self, workflow: str | Workflow, data: Any, *, name: str | None = None) -> str:
        """Start an execution (or return the one already started under `name` with this input)."""
        if self._stop.is_set():
            raise RuntimeError("the executor is closed")
        flow = self.workflow(workflow) if isinstance(workflow, str) else workflow
        execution_id = name or uuid.uuid4().hex
        existing = self.journal.create_execution(execution_id, flow.name, flow.definition, data)
        if existing is not None:
            if existing.input != data or existing.workflow != flow.name:
                raise ExecutionAlreadyExists(f"execution {execution_id!r} exists with other input")
            if existing.status != RUNNING:
                return execution_id
            flow = dataclasses.replace(flow, definition=existing.definition,
                                       machine=load_machine(existing.definition))
        self._spawn(self.journal.execution(execution_id), flow.machine)  # type: ignore[arg-type]
        return execution_id

    def run(self, workflow: str | Workflow, data: Any, *, name: str | None = None,
            timeout: float | None = None) -> ExecutionRecord:
        """Start an execution and wait for it to end."""
        return self.wait(self.start(workflow, data, name=name), timeout)

    def resume(self) -> list[str]:
        """Continue every execution the journal shows RUNNING that this executor is not running."""
        resumed = []
        for record in self.journal.executions(RUNNING, limit=1_000_000):
            try:
                self.load(record.definition, record.workflow)
            except DefinitionError as err:  # a task was removed or renamed since: it can never finish
                self.journal.finish_execution(record.id, FAILED, error=type(err).__name__, cause=str(err))
                continue
            # "resumed" only if it ran before (another process may just have recorded it)
            ran = self.journal.scope(record.id, "") is not None
            if self._spawn(record, load_machine(record.definition), resumed=ran):
                resumed.append(record.id)
        return resumed

    def _spawn(self, record: ExecutionRecord, machine: Machine, *, resumed: bool = False) -> bool:
        with self._lock:
            thread = self._threads.get(record.id)
            if thread is not None and thread.is_alive():
                return False
            if resumed:
                self.journal.record(record.id, "", [("ExecutionResumed", None, {})])
            run = Run(self._services, record, machine, on_done=self._finished)
            thread = threading.Thread(target=run, name=f"dss-workflow-{record.id[:40]}", daemon=True)
            self._threads[record.id] = thread
            thread.start()
            return True

    def _finished(self, execution_id: str) -> None:
        with self._done:
            self._done.notify_all()

    def wait(self, execution_id: str, timeout: float | None = None) -> ExecutionRecord:
        """The execution's record once it is no longer RUNNING, or as it is when `timeout` passes."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.describe(execution_id)
            left = None if deadline is None else deadline - time.monotonic()
            if record.status != RUNNING or (left is not None and left <= 0):
                return record
            with self._done:
                self._done.wait(0.5 if left is None else min(left, 0.5))

    def describe(self, execution_id: str) -> ExecutionRecord:
        record = self.journal.execution(execution_id)
        if record is None:
            raise ExecutionNotFound(execution_id)
        return record

    def executions(self, status: str | None = None, limit: int = 100) -> list[ExecutionRecord]:
        """Most recent first."""
        return self.journal.executions(status, limit)

    def history(self, execution_id: str) -> list[EventRecord]:
        self.describe(execution_id)
        return self.journal.events(execution_id)

    # --- lifecycle -------------------------------------------------------------------------------
    def close(self, timeout: float = 30.0) -> None:
        """Stop: running executions unwind at their next step and stay RUNNING in the journal. Tasks in
        flight are not waited for (they are idempotent and run again on resume)."""
        self._stop.set()
        with self._lock:
            threads = list(self._threads.values())
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.journal.close()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
