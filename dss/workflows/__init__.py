"""Long-running work as Amazon States Language workflows, one set of definitions for both modes.

* `definitions/*.json`: the state machines (blob copy, copy + metadata, replication of large blobs,
  file and bundle checkout). Task states name DSS tasks through placeholder Resources (`binding`).
* `registry` + `tasks/`: the task functions, plain Python registered by name, JSON in and out, each
  small, idempotent and resumable. The same functions run in-process or as Lambdas.
* `binding`: renders a definition for a deployment (Resources → Lambda ARNs).
* `executor`: the embedded engine. It runs the definitions in-process with a durable journal in SQLite
  (`journal`, `interpreter`), refusing at load time any construct it does not support (`asl`).
* `history`: `workflows list|show` for operators.

In the cloud, AWS Step Functions runs the same definitions; the tests prove both engines reach the same
outcome on moto's ASL interpreter.
"""
from dss.workflows.binding import bind, lambda_arns, placeholder, task_names
from dss.workflows.errors import (
    DefinitionError,
    ExecutionAlreadyExists,
    ExecutionNotFound,
    StatesError,
    TaskFailure,
    UnknownTask,
    WorkflowError,
)
from dss.workflows.executor import Executor, Workflow
from dss.workflows.journal import ExecutionRecord
from dss.workflows.registry import REGISTRY, TaskContext, TaskRegistry, default_registry, task

__all__ = [
    "Executor", "Workflow", "ExecutionRecord", "TaskContext", "TaskRegistry", "REGISTRY", "task",
    "default_registry", "bind", "lambda_arns", "placeholder", "task_names", "WorkflowError", "DefinitionError",
    "UnknownTask", "ExecutionNotFound", "ExecutionAlreadyExists", "StatesError", "TaskFailure",
]
