"""How a definition names its tasks, and how those names are bound to something that runs them.

A Task state's `Resource` in the checked-in definitions is a **placeholder ARN** that carries the stable
task name::

    "Resource": "arn:aws:lambda:::function:dss-task-copy-setup"     # task "copy-setup"

It is a syntactically valid Lambda ARN (empty region and account), so the definition files validate as
they are with any ASL validator. Task names are `[a-z][a-z0-9-]*`, which keeps them valid inside a Lambda
function name.

* The embedded executor reads the placeholders directly: the task name is the key into the task
  registry (`dss.workflows.registry`). Rendering for local use is therefore the identity
  (`bind(definition, placeholder)`), and the executor refuses any other Resource.
* A deployment renders the definition with `bind(definition, lambda_arns(region, account, prefix))`:
  each placeholder becomes `arn:aws:lambda:<region>:<account>:function:<prefix><task name>`, the function
  that `registry.lambda_handler` serves for that task.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["PLACEHOLDER_PREFIX", "TASK_NAME", "placeholder", "task_name", "task_names", "bind", "lambda_arns"]

PLACEHOLDER_PREFIX = "arn:aws:lambda:::function:dss-task-"
TASK_NAME = re.compile(r"^[a-z][a-z0-9-]{0,47}$")


def placeholder(name: str) -> str:
    """The Resource that names task `name` in a definition."""
    if not TASK_NAME.match(name):
        raise ValueError(f"invalid task name {name!r}: [a-z][a-z0-9-]*, at most 48 characters")
    return PLACEHOLDER_PREFIX + name


def task_name(resource: Any) -> str | None:
    """The task a placeholder Resource names, or None if it is not a placeholder."""
    if isinstance(resource, str) and resource.startswith(PLACEHOLDER_PREFIX):
        name = resource[len(PLACEHOLDER_PREFIX):]
        if TASK_NAME.match(name):
            return name
    return None


def _task_states(machine: dict) -> Iterator[dict]:
    for state in machine.get("States", {}).values():
        if state.get("Type") == "Task":
            yield state
        for branch in state.get("Branches", []):
            yield from _task_states(branch)
        for nested in ("Iterator", "ItemProcessor"):
            if nested in state:
                yield from _task_states(state[nested])


def task_names(definition: dict) -> set[str]:
    """Every task name the definition's Task states use (in branches and Map processors too)."""
    return {name for state in _task_states(definition) if (name := task_name(state.get("Resource")))}


def bind(definition: dict, resource_for: Callable[[str], str]) -> dict:
    """A copy of `definition` whose placeholder Resources are replaced by `resource_for(task name)`."""
    bound = copy.deepcopy(definition)
    for state in _task_states(bound):
        name = task_name(state.get("Resource"))
        if name is not None:
            state["Resource"] = resource_for(name)
    return bound


def lambda_arns(region: str, account: str, function_prefix: str = "dss-task-") -> Callable[[str], str]:
    """Binds each task to the Lambda function `<function_prefix><task name>` of one region and account."""
    return lambda name: f"arn:aws:lambda:{region}:{account}:function:{function_prefix}{name}"
