"""`Runtime.workflows`: start long operations from any server process, run them in exactly one.

The interface other domains use (files' 202 path, checkout)::

    execution_id = runtime.workflows.start("blob-copy-write-metadata", input, name=idempotency_key)
    record = runtime.workflows.status(execution_id)   # ExecutionRecord (status RUNNING | SUCCEEDED | FAILED,
                                                      # output, error, cause) or None for an unknown id

* `start` returns as soon as the execution is durably recorded in the journal (one SQLite transaction);
  it never waits for the work. `name` is an idempotency key: starting the same name with the same
  workflow and input again returns the same id and starts nothing; another input raises
  `dss.workflows.errors.ExecutionAlreadyExists`. Without `name` a random id is used. An unknown workflow
  raises KeyError; one that cannot run raises DefinitionError — both before anything is recorded.
* `status` reads the journal, so it sees executions recorded by any process.

Ownership. `dss-api` runs several server processes on one data directory (`DSS_API_PROCESSES`), and
the executor (`dss.workflows.executor`) must be the only one running a journal's executions. Every
started process runs an *owner thread* that polls for an exclusive `flock` on `<journal>.lock`; the
one that holds it builds the `Executor`, resumes every RUNNING execution (those a crash or restart left
behind) and then, every `poll` seconds — at once when its own process starts one — picks up executions
recorded since by any process. The operating system releases the lock when its holder dies; another
process's owner thread then takes it within `poll` seconds and resumes the dead one's executions from
their last recorded transition (tasks are idempotent, so the task that was in flight runs again).
"""
from __future__ import annotations

import fcntl
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from dss.workflows import definitions
from dss.workflows.asl.model import load_machine
from dss.workflows.errors import ExecutionAlreadyExists
from dss.workflows.executor import Executor
from dss.workflows.journal import RUNNING, ExecutionRecord, Journal
from dss.workflows.registry import TaskContext

__all__ = ["Workflows"]

logger = logging.getLogger(__name__)


class Workflows:
    """Durable starts in any process; execution in the one that holds the journal's lock (module docstring).

    `context` builds the tasks' `TaskContext` (called once, when this process becomes the owner);
    `threads`: the task pool (0: one per core); `task_budget`: seconds a task invocation is given."""

    def __init__(self, journal_path: Path, context: Callable[[], TaskContext], *, threads: int = 0,
                 task_budget: float = 600.0, poll: float = 0.5) -> None:
        self.journal_path = journal_path
        self.lock_path = journal_path.with_name(journal_path.name + ".lock")
        self.journal = Journal(journal_path)  # this process's starts and reads
        self._context = context
        self._threads = threads or None
        self._task_budget = task_budget
        self._poll = poll
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._executor: Executor | None = None
        self._machines: dict[str, Any] = {}

    # --- the interface ---------------------------------------------------------------------------
    def start(self, workflow: str, data: Any, *, name: str) -> str:
        """Record an execution of `workflow` (a definition in `dss/workflows/definitions/`) with input
        `data` under the id `name`; returns the id at once. Idempotent by `name` (module docstring)."""
        definition = definitions.load(workflow)
        if workflow not in self._machines:
            load_machine(definition, where=f"definition {workflow!r}")  # refuse what could never run
            self._machines[workflow] = True
        existing = self.journal.create_execution(name, workflow, definition, data)
        if existing is not None and (existing.input != data or existing.workflow != workflow):
            raise ExecutionAlreadyExists(f"execution {name!r} exists with other input")
        if existing is None:
            self._wake.set()  # the owner, if it is this process, picks it up now; others poll
        return name

    def status(self, execution_id: str) -> ExecutionRecord | None:
        return self.journal.execution(execution_id)

    @property
    def owner(self) -> bool:
        """Whether this process runs the executions now."""
        return self._executor is not None

    # --- lifecycle -------------------------------------------------------------------------------
    def run(self) -> None:
        """Start the owner thread (idempotent)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._own, name="dss-workflows-owner", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the owner thread; running executions stay RUNNING for the next owner (idempotent)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.journal.close()

    # --- the owner thread --------------------------------------------------------------------------
    def _own(self) -> None:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+b") as handle:
            if not self._acquire(handle):
                return
            logger.info("This process (%s) runs the workflow executions", self.journal_path)
            executor = Executor(self.journal_path, context=self._context(), max_workers=self._threads,
                                task_time_budget=self._task_budget)
            self._executor = executor
            try:
                self._serve(executor)
            finally:
                self._executor = None
                executor.close()
        # closing the handle releases the lock: another process's owner thread takes over

    def _acquire(self, handle: IO[bytes]) -> bool:
        while not self._stop.is_set():
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                self._stop.wait(self._poll)
        return False

    def _serve(self, executor: Executor) -> None:
        handled: set[str] = set()
        while not self._stop.is_set():
            self._wake.clear()
            try:
                running = self.journal.ids(RUNNING)
                if running - handled:
                    handled.update(executor.resume())
                handled &= running
            except Exception:  # noqa: BLE001 - the owner must survive a busy journal; the next round retries
                logger.exception("Could not pick up workflow executions")
            self._wake.wait(self._poll)
