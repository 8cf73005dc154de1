"""`Runtime.workflows` on AWS Step Functions: the cloud engine for the same definitions.

`StepFunctionsWorkflows` has the interface of the embedded `dss.workflows.service.Workflows`, so the
files' 202 path, checkout and replication of large blobs run unchanged on either engine::

    execution_id = workflows.start("blob-copy", input, name=idempotency_key)   # StartExecution
    record = workflows.status(execution_id)                                    # DescribeExecution

* Each workflow is one state machine, named by `state_machine_name(stage, workflow)` — the one naming
  function, for the code, the tests and the deployment; its tasks run as the Lambda functions
  `task_function_prefix(stage) + <task name>`. `deploy_state_machines` creates or updates the machines
  from `dss/workflows/definitions/` with every task bound to its Lambda (`dss.workflows.binding`).
* `start` returns the caller's `name` as the execution id, as the embedded engine does, so ids stay
  what callers store and poll. Step Functions execution names allow 1–80 characters without `/`, `~`,
  `:` and the like; `execution_name` maps a DSS name onto a valid one deterministically (kept as is when
  it is valid already, else a readable prefix plus a digest of the whole name).
* Idempotency, as the embedded engine: starting a name again with the same input returns the id and
  starts nothing (Step Functions itself answers a repeated start of a RUNNING execution with the same
  input with that execution; for one that has ended it answers ExecutionAlreadyExists, and we compare
  the inputs); another input raises `dss.workflows.errors.ExecutionAlreadyExists`. One difference: the
  embedded journal's names are global, Step Functions scopes them per state machine, so one name started
  for two *different* workflows makes two executions here (and `status` finds the first). DSS callers
  name executions per workflow (`files-put-…`, `sync-…`, `checkout-…`, job uuids), so it does not arise.
  Step Functions keeps a closed execution's name taken for 90 days, longer than any DSS caller polls.
* `status(id)` describes the execution on the machine this process started it on, else on each
  workflow's machine in turn (ids are names, and a name does not say its workflow); an execution ARN is
  described directly. TIMED_OUT and ABORTED are FAILED with `States.Timeout` / `States.Aborted` when
  the service gives no error; `definition` is the checked-in one (the service does not return it with
  the execution).
* `run`/`stop` do nothing: the service runs the executions.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable
from typing import Any

from dss.workflows import definitions
from dss.workflows.binding import bind
from dss.workflows.errors import ExecutionAlreadyExists
from dss.workflows.journal import FAILED, RUNNING, SUCCEEDED, ExecutionRecord

__all__ = ["StepFunctionsWorkflows", "state_machine_name", "task_function_prefix", "execution_name",
           "deploy_state_machines",
           "parse_url", "URL_SCHEME", "ARN_PREFIX"]

logger = logging.getLogger(__name__)

URL_SCHEME = "stepfunctions://"
ARN_PREFIX = "arn:aws:states:"
_VALID_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
_INVALID_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]")
_STATUS = {"RUNNING": RUNNING, "PENDING_REDRIVE": RUNNING, "SUCCEEDED": SUCCEEDED, "FAILED": FAILED,
           "TIMED_OUT": FAILED, "ABORTED": FAILED}
_DEFAULT_ERROR = {"TIMED_OUT": "States.Timeout", "ABORTED": "States.Aborted"}


def state_machine_name(stage: str, workflow: str) -> str:
    """The state machine that runs `workflow` in deployment `stage`: `dss-<stage>-<workflow>`."""
    name = f"dss-{stage}-{workflow}"
    if not _VALID_NAME.match(name):
        raise ValueError(f"invalid state machine name {name!r}")
    return name


def task_function_prefix(stage: str) -> str:
    """The Lambda functions serving the workflow tasks of deployment `stage` are named
    `dss-<stage>-task-<task name>`: bind with `binding.lambda_arns(region, account, task_function_prefix(stage))`."""
    return f"dss-{stage}-task-"


def execution_name(name: str) -> str:
    """A valid Step Functions execution name for the DSS execution name `name`, one-to-one in practice:
    `name` itself when valid, else its valid characters (others as `_`, at most 47) + `-` + 32 hex digits
    of its SHA-256."""
    if not name:
        raise ValueError("an execution name must not be empty")
    if _VALID_NAME.match(name):
        return name
    readable = _INVALID_CHARACTERS.sub("_", name)[:47]
    return f"{readable}-{hashlib.sha256(name.encode()).hexdigest()[:32]}"


def parse_url(url: str) -> tuple[str | None, str | None]:
    """(region, account) named by a `DSS_WORKFLOWS_URL` for Step Functions: `stepfunctions://` (both from
    the AWS configuration) or `arn:aws:states:<region>:<account>[:…]`. ValueError for anything else."""
    if url.rstrip("/") == URL_SCHEME.rstrip("/"):
        return None, None
    if url.startswith(ARN_PREFIX):
        parts = url.split(":")
        if len(parts) >= 5 and parts[3] and re.fullmatch(r"\d{12}", parts[4]):
            return parts[3], parts[4]
    raise ValueError(f"not a Step Functions URL: {url!r} (stepfunctions:// or arn:aws:states:<region>:<account>)")


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _canonical(data: Any) -> Any:
    return json.loads(json.dumps(data))


class StepFunctionsWorkflows:
    """The workflows port on AWS Step Functions (module docstring). `client` is a boto3 `stepfunctions`
    client (built from the AWS configuration when omitted); `region`/`account` default to the client's
    region and the caller's account (one STS call, when first needed)."""

    def __init__(self, stage: str, *, region: str | None = None, account: str | None = None,
                 client: Any = None, sts: Callable[[], Any] | None = None) -> None:
        from dss import aws

        self.stage = stage
        self.client = client or aws.client("stepfunctions", region_name=region)
        self._region = region or self.client.meta.region_name
        self._account = account
        self._sts = sts or (lambda: aws.client("sts", region_name=self._region))
        self._lock = threading.Lock()
        self._known: dict[str, str] = {}  # DSS execution name -> workflow, for what this process started

    @classmethod
    def from_url(cls, url: str, stage: str) -> StepFunctionsWorkflows:
        region, account = parse_url(url)
        return cls(stage, region=region, account=account)

    # --- names -----------------------------------------------------------------------------------
    @property
    def account(self) -> str:
        with self._lock:
            if self._account is None:
                self._account = str(self._sts().get_caller_identity()["Account"])
            return self._account

    def state_machine_arn(self, workflow: str) -> str:
        return (f"arn:aws:states:{self._region}:{self.account}:stateMachine:"
                f"{state_machine_name(self.stage, workflow)}")

    def execution_arn(self, workflow: str, name: str) -> str:
        return (f"arn:aws:states:{self._region}:{self.account}:execution:"
                f"{state_machine_name(self.stage, workflow)}:{execution_name(name)}")

    # --- the interface ---------------------------------------------------------------------------
    def start(self, workflow: str, data: Any, *, name: str) -> str:
        """StartExecution of `workflow`'s state machine with `data`, named after `name`; returns `name`.
        Idempotent by `name` (module docstring). An unknown workflow raises KeyError before any call."""
        definitions.path(workflow)  # KeyError for an unknown workflow, as the embedded engine
        data = _canonical(data)
        client = self.client
        try:
            client.start_execution(stateMachineArn=self.state_machine_arn(workflow), name=execution_name(name),
                                   input=json.dumps(data, separators=(",", ":")))
        except client.exceptions.ExecutionAlreadyExists:
            existing = self._describe(workflow, name)
            if existing is None or existing.input != data:
                raise ExecutionAlreadyExists(f"execution {name!r} exists with other input") from None
            return name
        with self._lock:
            self._known[name] = workflow
        logger.info("Started %s execution %s on Step Functions", workflow, name)
        return name

    def status(self, execution_id: str) -> ExecutionRecord | None:
        """The execution's record, or None if no workflow's state machine has an execution of that id."""
        if execution_id.startswith(ARN_PREFIX):
            return self._record_of(execution_id, execution_id)
        with self._lock:
            known = self._known.get(execution_id)
        candidates = [known] if known else []
        candidates += [w for w in definitions.names() if w != known]
        for workflow in candidates:
            record = self._describe(workflow, execution_id)
            if record is not None:
                with self._lock:
                    self._known[execution_id] = workflow
                return record
        return None

    def _describe(self, workflow: str, name: str) -> ExecutionRecord | None:
        return self._record_of(self.execution_arn(workflow, name), name)

    def _record_of(self, arn: str, execution_id: str) -> ExecutionRecord | None:
        client = self.client
        try:
            described = client.describe_execution(executionArn=arn)
        except (client.exceptions.ExecutionDoesNotExist, client.exceptions.StateMachineDoesNotExist):
            return None
        machine = described["stateMachineArn"].rsplit(":", 1)[-1]
        prefix = f"dss-{self.stage}-"
        workflow = machine[len(prefix):] if machine.startswith(prefix) else machine
        try:
            definition = definitions.load(workflow)
        except KeyError:
            definition = {}
        service_status = described["status"]
        status = _STATUS.get(service_status, FAILED)
        stopped = described.get("stopDate")
        error = described.get("error")
        if status == FAILED and not error:
            error = _DEFAULT_ERROR.get(service_status, "States.Runtime")
        return ExecutionRecord(
            id=execution_id, workflow=workflow, definition=definition, input=_load(described.get("input")),
            status=status, started=described["startDate"].timestamp(),
            stopped=stopped.timestamp() if stopped is not None and status != RUNNING else None,
            output=_load(described.get("output")) if status == SUCCEEDED else None,
            error=error if status == FAILED else None, cause=described.get("cause") if status == FAILED else None)

    # --- lifecycle: the service runs the executions ----------------------------------------------
    @property
    def owner(self) -> bool:
        return False

    def run(self) -> None:
        pass

    def stop(self, timeout: float = 30.0) -> None:
        pass

    def close(self) -> None:
        pass


def deploy_state_machines(client: Any, stage: str, role_arn: str, resource_for: Callable[[str], str],
                          workflows: list[str] | None = None) -> dict[str, str]:
    """Create, or update in place, the state machine of each workflow (default: every definition) with
    its tasks bound by `resource_for(task name)`, normally
    `binding.lambda_arns(region, account, task_function_prefix(stage))`.
    Returns {workflow: state machine ARN}."""
    existing: dict[str, str] = {}
    for page in client.get_paginator("list_state_machines").paginate():
        existing.update({m["name"]: m["stateMachineArn"] for m in page["stateMachines"]})
    machines: dict[str, str] = {}
    for workflow in workflows or definitions.names():
        name = state_machine_name(stage, workflow)
        document = json.dumps(bind(definitions.load(workflow), resource_for))
        if name in existing:
            client.update_state_machine(stateMachineArn=existing[name], definition=document, roleArn=role_arn)
            machines[workflow] = existing[name]
            logger.info("Updated state machine %s", name)
        else:
            machines[workflow] = client.create_state_machine(name=name, definition=document,
                                                             roleArn=role_arn)["stateMachineArn"]
            logger.info("Created state machine %s", name)
    return machines
