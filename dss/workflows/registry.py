"""Task functions, registered by the stable names the definitions use.

A task is a plain function `(payload: dict, context: TaskContext) -> JSON value`, registered with
`@task("copy-setup")`. The same function runs in the embedded executor (called through
`TaskRegistry.invoke`) and, in the cloud, as a Lambda (`TaskRegistry.lambda_handler`). The payload is
the state's effective input; the return value is the task's result. Both must be JSON: `invoke` passes
them through a JSON round trip so that a task never relies on sharing Python objects with its caller.

Contract every task keeps, because every engine may run it more than once:

* **Idempotent**: running it again with the same payload does no harm and returns an equivalent result.
* **Small and resumable**: a task that may run longer than a Lambda may (15 min) watches
  `context.time_left()`, saves its progress in its result and returns `{"finished": false, …}`; the
  definition loops it through a Choice until it returns `"finished": true` (the original DSS's
  TimedThread pattern).
* **Errors by name**: a task signals failure by raising; the error name Retry and Catch see is the
  exception's class name (as AWS Lambda reports it), so name exceptions by meaning (`ChecksumMismatch`).

The `TaskContext` carries what a task may not build for itself: the blob store factory and tables
(built once per process and injected, as everywhere in DSS) and the deadline of this invocation.
"""
from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from dss.workflows.binding import TASK_NAME
from dss.workflows.errors import TaskFailure, UnknownTask

__all__ = ["TaskContext", "TaskFunction", "TaskRegistry", "REGISTRY", "task", "default_registry"]


@dataclasses.dataclass(frozen=True)
class TaskContext:
    """What a task invocation is given besides its payload. `stores` is a `BlobStoreFactory`, `tables` a
    `dss.tables.Tables`, `files` the files domain (`dss.files.FileService`: commits a file's metadata and
    announces it); any may be None where no task that needs it runs (tests)."""
    stores: Any = None
    tables: Any = None
    files: Any = None
    deadline: float | None = None  # time.monotonic() by which the task should have returned

    def time_left(self) -> float:
        return math.inf if self.deadline is None else self.deadline - time.monotonic()

    def with_budget(self, seconds: float | None) -> TaskContext:
        return dataclasses.replace(self, deadline=None if seconds is None else time.monotonic() + seconds)


TaskFunction = Callable[[dict[str, Any], TaskContext], Any]


class TaskRegistry:
    """Task functions by name. `overlay()` gives a child registry whose entries shadow this one's (tests
    use it to replace one task of a definition without touching the others)."""

    def __init__(self, parent: TaskRegistry | None = None) -> None:
        self._parent = parent
        self._tasks: dict[str, TaskFunction] = {}
        self._lock = threading.Lock()

    def register(self, name: str, function: TaskFunction | None = None) -> Any:
        """`registry.register("name", fn)`, or as a decorator: `@registry.register("name")`."""
        if not TASK_NAME.match(name):
            raise ValueError(f"invalid task name {name!r}: [a-z][a-z0-9-]*, at most 48 characters")

        def add(fn: TaskFunction) -> TaskFunction:
            with self._lock:
                if name in self._tasks and self._tasks[name] is not fn:
                    raise ValueError(f"task {name!r} is already registered")
                self._tasks[name] = fn
            return fn

        return add(function) if function is not None else add

    def overlay(self, tasks: dict[str, TaskFunction] | None = None) -> TaskRegistry:
        child = TaskRegistry(self)
        for name, function in (tasks or {}).items():
            child.register(name, function)
        return child

    def get(self, name: str) -> TaskFunction:
        function = self._tasks.get(name)
        if function is None and self._parent is not None:
            return self._parent.get(name)
        if function is None:
            raise UnknownTask(f"no task is registered as {name!r}")
        return function

    def names(self) -> set[str]:
        return set(self._tasks) | (self._parent.names() if self._parent else set())

    def invoke(self, name: str, payload: Any, context: TaskContext) -> Any:
        """Run task `name`: JSON in, JSON out; an exception becomes a `TaskFailure` named after its class."""
        function = self.get(name)
        try:
            result = function(json.loads(json.dumps(payload)), context)
            return json.loads(json.dumps(result))
        except Exception as exc:  # noqa: BLE001 - every task error is reported by name, as Lambda does
            raise TaskFailure.from_exception(exc) from exc

    def lambda_handler(self, name: str, context_factory: Callable[[], TaskContext],
                       margin: float = 10.0) -> Callable[[Any, Any], Any]:
        """A Lambda entry point for task `name`. `context_factory` is called once, at cold start; each
        invocation's deadline is the Lambda's remaining time less `margin` seconds."""
        function = self.get(name)
        base: list[TaskContext] = []

        def handler(event: Any, lambda_context: Any) -> Any:
            if not base:
                base.append(context_factory())
            remaining = lambda_context.get_remaining_time_in_millis() / 1000.0
            return function(event, base[0].with_budget(max(remaining - margin, 1.0)))

        return handler


REGISTRY = TaskRegistry()
task = REGISTRY.register


def default_registry() -> TaskRegistry:
    """The registry holding every DSS task (importing `dss.workflows.tasks` registers them)."""
    import dss.workflows.tasks  # noqa: F401 - imported for its registrations

    return REGISTRY
