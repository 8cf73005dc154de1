"""Helpers for the workflow tests: fast retry timings, failing task wrappers, a harness that runs a
definition on moto's Step Functions interpreter with Lambda invocations routed to our task registry,
and the child-process entry point of the durability test (`python -m tests.workflows_support …`)."""
from __future__ import annotations

import copy
import io
import json
import os
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dss.workflows import ExecutionRecord, TaskContext, TaskRegistry, bind, lambda_arns, task_names
from dss.workflows.errors import TaskFailure

REGION, ACCOUNT = "us-east-1", "123456789012"
FUNCTION_PREFIX = "dss-task-"


def fast_retries(definition: dict) -> dict:
    """The definition with every retry back-off at 1 s (BackoffRate 1), at most 3 attempts, and Waits of
    at most 1 s: the same semantics, in test time."""
    fast = copy.deepcopy(definition)

    def visit(machine: dict) -> None:
        for state in machine["States"].values():
            for retrier in state.get("Retry", []):
                retrier["IntervalSeconds"], retrier["BackoffRate"] = 1, 1.0
                retrier["MaxAttempts"] = min(retrier.get("MaxAttempts", 3), 3)
            if "Seconds" in state:
                state["Seconds"] = min(state["Seconds"], 1)
            for branch in state.get("Branches", []):
                visit(branch)
            for nested in ("Iterator", "ItemProcessor"):
                if nested in state:
                    visit(state[nested])

    visit(fast)
    return fast


def failing_first(function: Callable, times: int, error: type[Exception]) -> Callable:
    """`function`, except that its first `times` calls (counted across threads) raise `error`."""
    lock, calls = threading.Lock(), [0]

    def wrapper(payload: dict, context: TaskContext) -> Any:
        with lock:
            calls[0] += 1
            fail = calls[0] <= times
        if fail:
            raise error(f"injected failure {calls[0]}")
        return function(payload, context)

    return wrapper


def always_failing(error: type[Exception]) -> Callable:
    def wrapper(payload: dict, context: TaskContext) -> Any:
        raise error("injected permanent failure")

    return wrapper


@dataclass(frozen=True)
class Outcome:
    """What both engines must agree on."""
    status: str
    output: Any = None
    error: str | None = None
    cause: str | None = None

    @classmethod
    def of(cls, record: ExecutionRecord) -> Outcome:
        if record.status == "SUCCEEDED":
            return cls(record.status, record.output)
        return cls(record.status, None, record.error, record.cause)


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("handler.py", "def handler(event, context):\n    raise RuntimeError('routed in-process')\n")
    return buffer.getvalue()


class MotoStepFunctions:
    """moto's Step Functions (its copy of LocalStack's ASL interpreter) with every Lambda invocation
    answered by `registry` in-process: moto's own Lambda would need Docker. Use inside `mock_aws`."""

    def __init__(self, monkeypatch: Any, registry: TaskRegistry, context: TaskContext,
                 task_budget: float | None = None) -> None:
        import boto3
        from moto.awslambda.models import LambdaFunction

        self.registry, self.context, self.task_budget = registry, context, task_budget
        harness = self

        def invoke(function: Any, event: Any = None) -> tuple[str, bool, str]:
            payload = json.loads(event) if isinstance(event, str | bytes) else (event or {})
            name = function.function_name[len(FUNCTION_PREFIX):]
            try:
                result = harness.registry.invoke(name, payload, harness.context.with_budget(harness.task_budget))
            except TaskFailure as failure:
                return failure.cause, True, ""
            return json.dumps(result), False, ""

        monkeypatch.setattr(LambdaFunction, "_invoke_lambda", invoke)
        self.sfn = boto3.client("stepfunctions", region_name=REGION)
        self.lam = boto3.client("lambda", region_name=REGION)
        iam = boto3.client("iam", region_name=REGION)
        self.role = iam.create_role(RoleName="dss-workflows", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        self._functions: set[str] = set()
        self._count = 0

    def _ensure_functions(self, definition: dict) -> None:
        for name in task_names(definition) - self._functions:
            self.lam.create_function(FunctionName=FUNCTION_PREFIX + name, Runtime="python3.11", Role=self.role,
                                     Handler="handler.handler", Code={"ZipFile": _zip()})
            self._functions.add(name)

    def run(self, definition: dict, data: Any, timeout: float = 300) -> Outcome:
        self._ensure_functions(definition)
        self._count += 1
        bound = bind(definition, lambda_arns(REGION, ACCOUNT, FUNCTION_PREFIX))
        machine = self.sfn.create_state_machine(name=f"machine-{self._count}", definition=json.dumps(bound),
                                                roleArn=self.role)["stateMachineArn"]
        execution = self.sfn.start_execution(stateMachineArn=machine, name=f"execution-{self._count}",
                                             input=json.dumps(data))["executionArn"]
        deadline = time.monotonic() + timeout
        while True:
            described = self.sfn.describe_execution(executionArn=execution)
            if described["status"] != "RUNNING":
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"moto execution still RUNNING after {timeout} s")
            time.sleep(0.1)
        if described["status"] == "SUCCEEDED":
            return Outcome("SUCCEEDED", json.loads(described["output"]))
        return Outcome(described["status"], None, described.get("error"), described.get("cause"))

    def history(self, execution_number: int) -> list[dict]:
        arn = f"arn:aws:states:{REGION}:{ACCOUNT}:execution:machine-{execution_number}:execution-{execution_number}"
        return self.sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]


def store_listing(root: Path) -> Iterator[tuple[str, int]]:
    """(relative path, size) of every file under `root`, for comparing what two runs left behind."""
    for path in sorted(root.rglob("*")):
        if path.is_file() and ".tmp" not in path.parts and path.suffix != ".meta":
            yield str(path.relative_to(root)), path.stat().st_size


# --- the durability test's child process --------------------------------------------------------------
DURABLE_DEFINITION = {
    "StartAt": "Items",
    "States": {
        "Items": {"Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 3,
                  "ItemProcessor": {"StartAt": "Work", "States": {
                      "Work": {"Type": "Task", "Resource": "arn:aws:lambda:::function:dss-task-test-slow-item",
                               "End": True}}},
                  "End": True},
    },
}


def _slow_item(log: Path) -> Callable:
    def work(payload: dict, context: TaskContext) -> dict:
        item = payload["item"]
        for line in (f"start {item}", None, f"end {item}"):
            if line is None:
                time.sleep(payload["seconds"])
                continue
            with open(log, "a") as out:
                out.write(line + "\n")
                out.flush()
                os.fsync(out.fileno())
        return {"item": item, "done": True}

    return work


def child_main(argv: list[str]) -> int:
    """`<journal> <log> start <items> <seconds>`: start the durable execution over that many items, each
    lasting that long, and wait (the test kills us); or `<journal> <log> resume`: resume whatever the
    journal holds and wait until every execution has ended."""
    from dss.workflows import Executor, default_registry

    journal, log, mode = Path(argv[0]), Path(argv[1]), argv[2]
    registry = default_registry().overlay({"test-slow-item": _slow_item(log)})
    executor = Executor(journal, registry=registry, max_workers=3)
    if mode == "start":
        count, seconds = int(argv[3]), float(argv[4])
        items = [{"item": i, "seconds": seconds} for i in range(count)]
        executor.start(executor.load(DURABLE_DEFINITION, "durable"), {"items": items}, name="durable")
        time.sleep(600)  # the test kills this process long before
        return 1
    for execution_id in executor.resume():
        executor.wait(execution_id, timeout=300)
    executor.close()
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
