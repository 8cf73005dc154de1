"""The workflows port on AWS Step Functions (`dss.workflows.stepfunctions`), against a moto server.

The server (`tests.stepfunctions_support`) runs the state machines — deployed from the checked-in
definitions by `deploy_state_machines`, tasks bound to Lambda ARNs — on moto's ASL interpreter, and
answers each Lambda invocation with our task function. It also serves S3, so the copies below move
objects between two moto buckets. Time bounds are hang guards only.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from dss.checksums import checksum_stream
from dss.config import Config, ConfigError
from dss.identifiers import new_version
from dss.workflows import ExecutionAlreadyExists, definitions, lambda_arns, task_names
from dss.workflows.stepfunctions import (
    StepFunctionsWorkflows,
    deploy_state_machines,
    execution_name,
    state_machine_name,
    task_function_prefix,
)
from tests.infra.dss_server import DSSServer, start_server
from tests.infra.helpers import new_uuid, poll_until, put_file
from tests.stepfunctions_support import stepfunctions_server  # noqa: F401 - the fixture
from tests.test_async_copy import download, ended, head, settled, stage_s3
from tests.workflows_support import ACCOUNT, REGION, _zip

MiB = 1024 * 1024
HANG_GUARD = 120.0


@pytest.fixture(scope="session")
def moto_server(stepfunctions_server: str) -> str:  # noqa: F811 - every AWS fixture of this module uses it
    return stepfunctions_server


@pytest.fixture
def tables_url(tmp_path) -> str:
    """The tables the task functions and the DSS server share (async-state failure records)."""
    return f"sqlite://{tmp_path / 'tables.sqlite3'}"


@pytest.fixture
def stage(aws_env: str, tables_url: str) -> str:
    """A fresh deployment stage: its task functions (environment: the stage and the tables) and every
    state machine, deployed on the server from the checked-in definitions."""
    stage = f"t{uuid.uuid4().hex[:8]}"
    role = _role()
    lam = boto3.client("lambda", region_name=REGION)
    environment = {"Variables": {"DSS_DEPLOYMENT_STAGE": stage, "DSS_TABLES_URL": tables_url}}
    for name in sorted(set().union(*(task_names(definitions.load(w)) for w in definitions.names()))):
        lam.create_function(FunctionName=task_function_prefix(stage) + name, Runtime="python3.11", Role=role,
                            Handler="handler.handler", Code={"ZipFile": _zip()}, Environment=environment)
    deploy_state_machines(boto3.client("stepfunctions", region_name=REGION), stage, role,
                          lambda_arns(REGION, ACCOUNT, task_function_prefix(stage)))
    return stage


def _role() -> str:
    iam = boto3.client("iam", region_name=REGION)
    try:
        return iam.create_role(RoleName="dss-workflows", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
    except iam.exceptions.EntityAlreadyExistsException:
        return iam.get_role(RoleName="dss-workflows")["Role"]["Arn"]


@pytest.fixture
def workflows(stage: str) -> Iterator[StepFunctionsWorkflows]:
    engine = StepFunctionsWorkflows.from_url("stepfunctions://", stage)
    yield engine
    engine.close()


def _ended(workflows: StepFunctionsWorkflows, execution_id: str) -> Any:
    return poll_until(ended(workflows.status, execution_id), f"{execution_id}'s end", timeout=HANG_GUARD)


def _object(bucket: str, data: bytes) -> str:
    key = str(checksum_stream(io.BytesIO(data), len(data)).blob_key)
    boto3.client("s3").put_object(Bucket=bucket, Key=key, Body=data)
    return key


def test_names() -> None:
    assert state_machine_name("dev", "blob-copy") == "dss-dev-blob-copy"
    assert execution_name("checkout-0d7d") == "checkout-0d7d"
    long = "files-put-files/0d7dd4a5-0b0c-4a4e-9a57-0f6f4c1b1c8e.2024-01-01T000000.000000Z~2"
    mapped = execution_name(long)
    assert len(mapped) <= 80 and "/" not in mapped and "~" not in mapped
    assert mapped == execution_name(long) != execution_name(long[:-1] + "3")


def test_configuration_selects_the_engine(tmp_path, aws_env: str) -> None:
    env = {"DSS_DATA_DIR": str(tmp_path)}
    assert Config.from_env(env).workflows_url == ""
    assert Config.from_env({**env, "DSS_WORKFLOWS_URL": "stepfunctions://"}).workflows_url == "stepfunctions://"
    arn = f"arn:aws:states:{REGION}:{ACCOUNT}"
    assert Config.from_env({**env, "DSS_WORKFLOWS_URL": arn}).workflows_url == arn
    with pytest.raises(ConfigError):
        Config.from_env({**env, "DSS_WORKFLOWS_URL": "sfn://elsewhere"})


def test_blob_copy_between_buckets_and_idempotent_start(workflows: StepFunctionsWorkflows,
                                                       new_s3_bucket: Callable[[], str]) -> None:
    source, target = new_s3_bucket(), new_s3_bucket()
    data = os.urandom(64 * MiB + 4099)  # above S3's single-copy limit: a multipart copy in DSS-sized parts
    key = _object(source, data)
    spec = {"source": {"url": f"s3://{source}", "key": key}, "destination": {"url": f"s3://{target}", "key": key},
            "slices": 2}
    name = f"copy/{key}~1"  # characters Step Functions refuses in names: mapped, and the id stays ours

    assert workflows.status(name) is None
    assert workflows.start("blob-copy", spec, name=name) == name
    record = _ended(workflows, name)
    assert (record.id, record.workflow, record.status, record.error) == (name, "blob-copy", "SUCCEEDED", None)
    assert record.input == spec and isinstance(record.output, dict) and record.started <= (record.stopped or 0)
    assert boto3.client("s3").get_object(Bucket=target, Key=key)["Body"].read() == data
    history = boto3.client("stepfunctions", region_name=REGION).get_execution_history(
        executionArn=workflows.execution_arn("blob-copy", name), maxResults=1000)["events"]
    invoked = [e["lambdaFunctionScheduledEventDetails"]["resource"].rsplit(":", 1)[-1]
               for e in history if e["type"] == "LambdaFunctionScheduled"]
    prefix = task_function_prefix(workflows.stage)
    assert sorted(invoked) == [prefix + "copy-finalize", prefix + "copy-parts", prefix + "copy-parts",
                               prefix + "copy-setup"]  # two parts by UploadPartCopy, one Map item each

    # The same name and input again: the same id, no second execution; another input is refused.
    assert workflows.start("blob-copy", json.loads(json.dumps(spec)), name=name) == name
    sfn = boto3.client("stepfunctions", region_name=REGION)
    assert len(sfn.list_executions(stateMachineArn=workflows.state_machine_arn("blob-copy"))["executions"]) == 1
    with pytest.raises(ExecutionAlreadyExists):
        workflows.start("blob-copy", {**spec, "slices": 3}, name=name)
    # Another process (a fresh engine) finds it by id alone.
    assert StepFunctionsWorkflows.from_url(f"arn:aws:states:{REGION}:{ACCOUNT}", workflows.stage).status(
        name) == record
    with pytest.raises(KeyError):
        workflows.start("no-such-workflow", spec, name="other")


def test_failure_is_mapped(workflows: StepFunctionsWorkflows, new_s3_bucket: Callable[[], str]) -> None:
    source, target = new_s3_bucket(), new_s3_bucket()
    key = str(checksum_stream(io.BytesIO(b"absent"), 6).blob_key)  # never stored
    spec = {"source": {"url": f"s3://{source}", "key": key}, "destination": {"url": f"s3://{target}", "key": key}}
    record = _ended(workflows, workflows.start("blob-copy", spec, name="missing-source"))
    assert (record.status, record.error, record.output) == ("FAILED", "BlobNotFound", None)
    assert json.loads(record.cause or "{}")["errorType"] == "BlobNotFound"


@pytest.fixture
def server_on_step_functions(stage: str, tables_url: str, dss_env: dict[str, str]) -> Iterator[DSSServer]:
    """A DSS server whose workflows run on the stage's state machines (202 above 1 MiB)."""
    server = start_server({**dss_env, "DSS_ASYNC_COPY_THRESHOLD": str(MiB), "DSS_WORKFLOWS_URL": "stepfunctions://",
                           "DSS_DEPLOYMENT_STAGE": stage, "DSS_TABLES_URL": tables_url})
    yield server
    server.stop()
    server.runtime.close()


def test_put_files_202_path_on_step_functions(server_on_step_functions: DSSServer, s3_bucket: str) -> None:
    server = server_on_step_functions
    assert isinstance(server.runtime.workflows, StepFunctionsWorkflows)
    data = os.urandom(3 * MiB + 5)
    file_uuid, version = new_uuid(), new_version()
    source = stage_s3(s3_bucket, data)
    response = put_file(server, source, file_uuid, version)
    assert response.status_code == 202, response.text
    task_id = response.json()["task_id"]
    # a re-PUT while the copy runs is the same execution (after it, the file is there: 200)
    again = put_file(server, source, file_uuid, version)
    assert again.status_code == 200 or (again.status_code, again.json()["task_id"]) == (202, task_id), again.text
    assert poll_until(settled(server, file_uuid, version), "the copy", timeout=HANG_GUARD) == 200
    assert head(server, file_uuid, version).headers["X-DSS-SHA256"] == hashlib.sha256(data).hexdigest()
    assert download(server, file_uuid, version) == data
    record = _ended(server.runtime.workflows, task_id)  # the last task wrote the metadata; the status follows
    assert (record.workflow, record.status) == ("blob-copy-write-metadata", "SUCCEEDED")


def test_put_files_202_failure_on_step_functions(server_on_step_functions: DSSServer, s3_bucket: str) -> None:
    """A declared checksum that does not match: the machine's failure task records it in the tables the
    server reads, and HEAD answers 422."""
    server = server_on_step_functions
    data = os.urandom(2 * MiB)
    file_uuid, version = new_uuid(), new_version()
    response = put_file(server, stage_s3(s3_bucket, data, declared=os.urandom(len(data))), file_uuid, version)
    assert response.status_code == 202, response.text
    assert poll_until(settled(server, file_uuid, version), "the failure record", timeout=HANG_GUARD) == 422
    record = _ended(server.runtime.workflows, response.json()["task_id"])  # the status follows the record
    assert (record.status, record.error) == ("FAILED", "ChecksumMismatch")
