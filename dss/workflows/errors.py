"""Errors of the workflow layer, drawn once here.

    WorkflowError
    ├── DefinitionError          a definition is malformed, or uses a construct the executor does not support
    │   └── UnknownTask          a Task names a task that no registry entry provides
    ├── ExecutionNotFound        no execution has that id
    └── ExecutionAlreadyExists   a start reused an execution name with different input

    StatesError                  an Amazon States Language error inside a running execution: `error` is the
                                 ASL error name (`States.Runtime`, `States.NoChoiceMatched`, a task's
                                 exception class name …) and `cause` its human-readable cause. Retry and
                                 Catch match on `error`; an execution that ends with one is FAILED with it.
    └── TaskFailure              a task function raised: `error` is the exception's class name and `cause`
                                 the JSON document AWS Lambda's Python runtime reports
                                 (`{"errorMessage": …, "errorType": …}`), so both engines see the same error.
"""
from __future__ import annotations

import json

__all__ = ["WorkflowError", "DefinitionError", "UnknownTask", "ExecutionNotFound", "ExecutionAlreadyExists",
           "StatesError", "TaskFailure", "RUNTIME", "TASK_FAILED", "ALL", "NO_CHOICE_MATCHED"]

# Reserved error names of the States language that this layer raises or matches.
ALL = "States.ALL"
RUNTIME = "States.Runtime"
TASK_FAILED = "States.TaskFailed"
NO_CHOICE_MATCHED = "States.NoChoiceMatched"


class WorkflowError(Exception):
    pass


class DefinitionError(WorkflowError):
    pass


class UnknownTask(DefinitionError):
    pass


class ExecutionNotFound(WorkflowError):
    pass


class ExecutionAlreadyExists(WorkflowError):
    pass


class StatesError(Exception):
    def __init__(self, error: str, cause: str = "") -> None:
        super().__init__(f"{error}: {cause}" if cause else error)
        self.error = error
        self.cause = cause


class TaskFailure(StatesError):
    @classmethod
    def from_exception(cls, exc: BaseException) -> TaskFailure:
        error = type(exc).__name__
        return cls(error, json.dumps({"errorMessage": str(exc), "errorType": error}, separators=(",", ":")))
