"""scripts/dss-ops.py against a cloud stage on a moto server (SSM, Lambda, SNS/SQS) and its commands'
help; `sync repair` against the embedded default.

Lambda functions are created in moto with `create_function` and a tiny zip: moto keeps their
configuration and never runs them, which is all `lambda env update-deployed` touches.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from dss.events import Event
from dss.events.sqs import SQSEventBus, parse_queue_url, provision, resources
from dss.identifiers import ObjectKey
from dss.storage.blobstore import BlobStoreFactory
from tests.infra.dss_server import REPO
from tests.infra.helpers import add_file, new_uuid, new_version, put_bundle
from tests.ops_support import OpsRunner, load_script, ops_runner

DEADLINE = 60.0  # seconds a test waits for SQS to show a message: generous for a busy machine


@pytest.fixture
def dss_ops(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> OpsRunner:
    return ops_runner(monkeypatch, capsys)


@pytest.fixture
def stage_env(aws_env: str, tmp_path: Path) -> dict[str, str]:
    stage = f"t{uuid.uuid4().hex[:10]}"
    return {"DSS_DATA_DIR": str(tmp_path / "data"), "DSS_DEPLOYMENT_STAGE": stage, "DSS_WORKERS": "0"}


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return None\n")
    return buffer.getvalue()


def _functions(stage: str, names: dict[str, dict[str, str]]) -> None:
    iam, lambdas = boto3.client("iam"), boto3.client("lambda")
    role = iam.create_role(RoleName=f"dss-{stage}-lambda", AssumeRolePolicyDocument=json.dumps({
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                "Principal": {"Service": "lambda.amazonaws.com"}}]}))["Role"]["Arn"]
    for name, variables in names.items():
        lambdas.create_function(FunctionName=name, Runtime="python3.11", Role=role, Handler="app.handler",
                                Code={"ZipFile": _zip()}, Environment={"Variables": variables})


def _variables(name: str) -> dict[str, str]:
    configuration = boto3.client("lambda").get_function_configuration(FunctionName=name)
    return configuration.get("Environment", {}).get("Variables", {})


def test_lambda_environment_in_ssm_and_in_the_deployed_functions(stage_env, dss_ops):
    stage = stage_env["DSS_DEPLOYMENT_STAGE"]
    assert dss_ops("lambda", "env", "get", **stage_env)[:2] == (0, "{}\n")
    code, out, _ = dss_ops("lambda", "env", "set", "DSS_QUEUE_URL=sns://", "DSS_DEBUG=1", "DSS_VERSION=a=b",
                           **stage_env)
    assert code == 0 and json.loads(out) == {"DSS_QUEUE_URL": "sns://", "DSS_DEBUG": "1", "DSS_VERSION": "a=b"}
    assert dss_ops("lambda", "env", "unset", "DSS_DEBUG", **stage_env)[0] == 0
    stored = boto3.client("ssm").get_parameter(Name=f"/dss/{stage}/environment")["Parameter"]["Value"]
    assert json.loads(stored) == {"DSS_QUEUE_URL": "sns://", "DSS_VERSION": "a=b"}
    for bad in ("PATH=/tmp", "DSS_X", "dss_lower=1"):
        code, _, err = dss_ops("lambda", "env", "set", bad, **stage_env)
        assert code == 1 and err.startswith("dss-ops: "), bad

    api, sync, elsewhere, longer = f"dss-{stage}-api", f"dss-{stage}-sync", f"dss-x{stage}-api", f"dss-{stage}-2-api"
    _functions(stage, {api: {}, sync: {"AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR", "DSS_DEBUG": "2"},
                       elsewhere: {"DSS_DEBUG": "2"}, longer: {"DSS_DEPLOYMENT_STAGE": f"{stage}-2"}})
    code, out, err = dss_ops("lambda", "env", "update-deployed", **stage_env)
    assert code == 0 and out.split("\n")[:2] == [f"{api} updated", f"{sync} updated"], out + err
    wanted = {"DSS_QUEUE_URL": "sns://", "DSS_VERSION": "a=b", "DSS_SECRETS_URL": f"secretsmanager://dss/{stage}/"}
    assert _variables(api) == wanted
    assert _variables(sync) == {**wanted, "AWS_XRAY_CONTEXT_MISSING": "LOG_ERROR"}  # DSS_DEBUG was unset
    assert _variables(elsewhere) == {"DSS_DEBUG": "2"}  # another stage's functions
    assert _variables(longer) == {"DSS_DEPLOYMENT_STAGE": f"{stage}-2"}
    code, out, _ = dss_ops("lambda", "env", "update-deployed", **stage_env)
    assert code == 0 and out.split("\n")[:2] == [f"{api} unchanged", f"{sync} unchanged"]


def _stage_bus(stage: str, **query: int) -> SQSEventBus:
    settings = parse_queue_url("sns://?" + "&".join(f"{k}={v}" for k, v in query.items()), stage)
    sns, sqs = boto3.client("sns"), boto3.client("sqs")
    made = provision(resources(settings, ("sync", "index", "journal")), sns, sqs)
    return SQSEventBus(settings, ("sync", "index", "journal"), sns, sqs, topic_arn=made["topic"])


def _received(bus: SQSEventBus, handler: str, count: int) -> list[Event]:
    seen: list[Event] = []
    deadline = time.monotonic() + DEADLINE
    while len(seen) < count and time.monotonic() < deadline:
        bus.receive(handler, seen.append)
    return seen


def test_events_commands_on_the_sqs_bus(stage_env, dss_ops):
    bus = _stage_bus(stage_env["DSS_DEPLOYMENT_STAGE"], max_receives=1, visibility=0, intent_delay=0)
    env = {**stage_env, "DSS_QUEUE_URL": "sns://?max_receives=1&visibility=0&intent_delay=0"}
    bus.publish(Event("aws", "bundles/one"), handlers=("index",))
    deadline = time.monotonic() + DEADLINE
    while bus.pending() < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dss_ops("events", "pending", **env)[1] == "1\n"

    def broken(event: Event) -> None:
        raise RuntimeError("index down")

    while not bus.dead_letters() and time.monotonic() < deadline:
        bus.receive("index", broken)
    [letter] = json.loads(dss_ops("events", "dead", **env)[1])
    assert letter["handler"] == "index" and Event.from_json(letter["body"]) == Event("aws", "bundles/one")
    assert dss_ops("events", "redrive", **env)[1].startswith("Re-drove 1 ")
    assert _received(bus, "index", 1) == [Event("aws", "bundles/one")]


def test_index_reindex_fans_out_through_the_queue(stage_env, dss_ops, tmp_path):
    bus = _stage_bus(stage_env["DSS_DEPLOYMENT_STAGE"], intent_delay=0, visibility=0)
    replica = tmp_path / "aws"
    store = BlobStoreFactory().for_url(replica.as_uri())
    keys = sorted(str(ObjectKey("bundles", new_uuid(), new_version())) for _ in range(3))
    for key in keys:
        store.put_json(key, {"files": [], "creator_uid": 1})
    env = {**stage_env, "DSS_QUEUE_URL": "sns://?intent_delay=0&visibility=0", "DSS_AWS_REPLICA_URL": replica.as_uri()}
    code, out, err = dss_ops("index", "reindex", "--replica", "aws", **env)
    assert code == 0 and "Queued 3 index event(s)" in out, err
    assert sorted(e.key for e in _received(bus, "index", 3)) == keys
    assert bus.pending() == 0  # for the index handler only: nothing for sync or journal


def test_sync_repair_copies_what_verify_finds_missing(dss, dss_ops):
    bundle_uuid = new_uuid()
    assert put_bundle(dss, [add_file(dss, b"to be repaired", "x")], bundle_uuid).status_code == 201
    dss.runtime.workers.drain(timeout=DEADLINE)
    gcp = dss.config.data_dir / "replicas" / "gcp"
    for path in [*gcp.glob("bundles/**/*"), *gcp.glob("blobs/**/*")]:
        if path.is_file():
            path.unlink()
    env = {"DSS_DATA_DIR": str(dss.config.data_dir), "DSS_WORKERS": "0"}
    code, out, _ = dss_ops("sync", "verify", "--replica", "aws", **env)
    assert code == 1 and f"missing in gcp: bundles/{bundle_uuid}." in out and "missing in gcp: blobs/" in out
    code, _, err = dss_ops("sync", "repair", "--replica", "aws", **env)
    assert code == 0 and "Copied 2 key(s) to gcp" in err, err
    assert dss_ops("sync", "verify", "--replica", "aws", **env)[0] == 0
    code, _, err = dss_ops("sync", "repair", "--replica", "aws", **env)
    assert code == 0 and "Copied 0 key(s)" in err


def _commands(parser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    yield path
    for action in parser._actions:
        if action.__class__.__name__ == "_SubParsersAction":
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))


def test_every_command_has_help(dss_ops, capsys):
    commands = list(_commands(load_script().parser()))
    assert ("lambda", "env", "update-deployed") in commands and ("sync", "repair") in commands
    for command in commands:
        with pytest.raises(SystemExit) as exit_:
            dss_ops(*command, "--help")
        out = capsys.readouterr().out
        assert exit_.value.code == 0 and out.startswith("usage: dss-ops.py " + " ".join(command)), command
    assert len(commands) > 30
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "dss-ops.py"), "--help"], capture_output=True,
                          text=True, timeout=DEADLINE)
    assert done.returncode == 0 and "secrets list | get NAME" in done.stdout
