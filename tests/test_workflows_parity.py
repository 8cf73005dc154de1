"""Reference-interpreter parity: every definition, run on moto's Step Functions interpreter (LocalStack's
ASL interpreter) and on the embedded executor with the same inputs and the same task functions, reaches
the same outcome — status, output, error and cause — and leaves the same objects behind.

Known difference of the reference interpreter, kept out of these definitions: moto evaluates a path with
an index followed by a field (`$.a[1].b`) to a list (`[value]`) where AWS gives the value; the DSS
definitions use field paths only (checked in test_workflows_definitions).

Scenarios: success; retry-then-success (the definition's looping work task fails twice with a transient
error); catch-to-failure (it fails with a permanent error, which the definition catches, cleans up after
and records before failing). Task budgets are zero, so every resumable task does one unit of work per
invocation and the Choice loops run in full on both engines.
"""
from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dss.checksums import checksum_stream
from dss.storage.blobstore import BlobStoreFactory, BlobStoreUnavailable
from dss.workflows import Executor, TaskContext, default_registry, definitions
from dss.workflows.binding import placeholder
from dss.workflows.tasks.copy import ChecksumMismatch
from tests.workflows_support import (
    MotoStepFunctions,
    Outcome,
    always_failing,
    failing_first,
    fast_retries,
    store_listing,
)

pytestmark = pytest.mark.timeout(900)


def _blob(store: Any, seed: int, size: int) -> str:
    data = random.Random(seed).randbytes(size)
    key = str(checksum_stream(io.BytesIO(data), len(data)).blob_key)
    store.put(key, data)
    return key


def _copy_world(root: Path, stores: BlobStoreFactory) -> dict:
    source, target = stores.for_url(f"file://{root}/replica"), f"file://{root}/target"
    key = _blob(source, 1, 300_000)
    return {"source": {"url": source.url, "key": key}, "destination": {"url": target, "key": key},
            "part_size": 64 * 1024, "slices": 3}


def _metadata_world(root: Path, stores: BlobStoreFactory) -> dict:
    data = _copy_world(root, stores)
    document = {"format": "0.0.4", "size": 300_000, "content-type": "application/octet-stream"}
    return {**data, "metadata": {"url": data["destination"]["url"], "key": "files/0d7dd4a5.2024-01-01T000000.000000Z",
                                 "document": document}}


def _bundle_world(root: Path, stores: BlobStoreFactory) -> dict:
    replica = stores.for_url(f"file://{root}/replica")
    files = []
    for index in range(5):
        key = _blob(replica, 10 + index, 20_000 + index)
        sha256, sha1, etag, crc = key[len("blobs/"):].split(".")
        files.append({"name": f"file-{index}.bin", "uuid": hashlib.md5(bytes([index])).hexdigest(),
                      "version": "2024-01-01T000000.000000Z", "content-type": "application/octet-stream",
                      "size": 20_000 + index, "indexed": False, "sha256": sha256, "sha1": sha1, "s3-etag": etag,
                      "crc32c": crc})
    bundle_key = "bundles/6f2b6a12-0b0c-4a4e-9a57-0f6f4c1b1c8e.2024-01-01T000000.000000Z"
    replica.put_json(bundle_key, {"format": "0.0.1", "files": files})
    checkout = f"file://{root}/checkout"
    return {"bundle": {"url": replica.url, "key": bundle_key},
            "destination": {"url": checkout, "prefix": bundle_key},
            "status": {"url": checkout, "key": "checkout/status/job-1.json"}, "batch_size": 2}


@dataclass(frozen=True)
class Case:
    seed: Callable[[Path, BlobStoreFactory], dict]
    work_task: str  # the looping task the failure scenarios replace


CASES = {
    "blob-copy": Case(_copy_world, "copy-parts"),
    "sync-large-blob": Case(_copy_world, "copy-parts"),
    "blob-copy-write-metadata": Case(_metadata_world, "copy-parts"),
    "file-checkout": Case(_copy_world, "copy-parts"),
    "bundle-checkout": Case(_bundle_world, "checkout-copy-files"),
}


def test_every_definition_has_a_parity_case() -> None:
    assert sorted(CASES) == definitions.names()


def _registry(scenario: str, work_task: str):
    base = default_registry()
    if scenario == "retry":
        return base.overlay({work_task: failing_first(base.get(work_task), 2, BlobStoreUnavailable)})
    if scenario == "catch":
        return base.overlay({work_task: always_failing(ChecksumMismatch)})
    return base


class World:
    """One directory of stores, re-created identically before each engine's run (so that outputs,
    which name store URLs, compare equal)."""

    def __init__(self, root: Path, seed: Callable[[Path, BlobStoreFactory], dict]) -> None:
        self.root, self.seed = root, seed
        self.context = TaskContext()

    def reset(self) -> dict:
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.context = TaskContext(stores=BlobStoreFactory())  # stores cache their directories
        return self.seed(self.root, self.context.stores)

    def listing(self) -> list[tuple[str, int]]:
        return list(store_listing(self.root))


def _both(moto_factory, tmp_path: Path, definition: dict, seed, registry_for: Callable) -> tuple:
    world = World(tmp_path / "world", seed)
    data = world.reset()
    reference = moto_factory(registry_for(), world.context).run(definition, data)
    reference_objects = world.listing()
    data = world.reset()
    with Executor(tmp_path / "journal.sqlite3", registry=registry_for(), context=world.context,
                  task_time_budget=0.0, max_workers=2) as executor:
        record = executor.run(executor.load(definition, "under-test"), data, timeout=300)
    return reference, Outcome.of(record), reference_objects, world.listing()


@pytest.fixture
def moto_factory(monkeypatch: pytest.MonkeyPatch):
    from moto import mock_aws

    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        harnesses: list[MotoStepFunctions] = []

        def make(registry, context) -> MotoStepFunctions:
            if not harnesses:
                harnesses.append(MotoStepFunctions(monkeypatch, registry, context, task_budget=0.0))
            harnesses[0].registry, harnesses[0].context = registry, context
            return harnesses[0]

        yield make


@pytest.mark.parametrize("scenario", ["success", "retry", "catch"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_definition_parity(name: str, scenario: str, moto_factory, tmp_path: Path) -> None:
    case = CASES[name]
    definition = fast_retries(definitions.load(name))
    reference, ours, reference_objects, our_objects = _both(
        moto_factory, tmp_path, definition, case.seed, lambda: _registry(scenario, case.work_task))
    assert ours == reference
    assert our_objects == reference_objects
    if scenario == "catch":
        assert ours.status == "FAILED" and ours.error == "ChecksumMismatch"
        assert json.loads(ours.cause or "{}")["errorType"] == "ChecksumMismatch"
    else:
        assert ours.status == "SUCCEEDED", ours


# --- the other constructs the executor supports, on a test definition ---------------------------------
class Flake(Exception):
    pass


def _add(payload: dict, context: TaskContext) -> Any:
    return payload["a"] + payload["b"]


def _echo(payload: dict, context: TaskContext) -> Any:
    return {"echo": payload}


def _flaky(payload: dict, context: TaskContext) -> Any:
    raise Flake("always")


CONSTRUCTS = {
    "Comment": "Parallel, Wait, Pass, Choice combinators, Map with Iterator/Parameters, Retry then Catch, Fail.",
    "StartAt": "Prepare",
    "States": {
        "Prepare": {"Type": "Pass", "Result": {"threshold": 3}, "ResultPath": "$.config", "Next": "Fork"},
        "Fork": {"Type": "Parallel", "ResultPath": "$.forked", "Next": "Classify", "Branches": [
            {"StartAt": "Add", "States": {"Add": {
                "Type": "Task", "Resource": placeholder("test-add"),
                "Parameters": {"a.$": "$.numbers[0]", "b.$": "$.numbers[1]"}, "End": True}}},
            {"StartAt": "Pause", "States": {
                "Pause": {"Type": "Wait", "Seconds": 1, "Next": "Echo"},
                "Echo": {"Type": "Task", "Resource": placeholder("test-echo"), "InputPath": "$.config",
                         "ResultSelector": {"threshold.$": "$.echo.threshold"}, "End": True}}}]},
        "Classify": {"Type": "Choice", "Default": "Summary", "Choices": [
            {"Variable": "$.name", "StringEquals": "fail", "Next": "Refuse"},
            {"And": [{"Variable": "$.forked[0]", "NumericGreaterThanEquals": 3},
                     {"Not": {"Variable": "$.missing", "IsPresent": True}},
                     {"Or": [{"Variable": "$.flag", "BooleanEquals": True},
                             {"Variable": "$.forked[0]", "NumericLessThan": 10}]}],
             "Next": "Each"}]},
        "Each": {"Type": "Map", "ItemsPath": "$.numbers", "MaxConcurrency": 2, "ResultPath": "$.doubled",
                 "Parameters": {"value.$": "$$.Map.Item.Value", "index.$": "$$.Map.Item.Index", "name.$": "$.name"},
                 "Iterator": {"StartAt": "Double", "States": {"Double": {
                     "Type": "Task", "Resource": placeholder("test-add"),
                     "Parameters": {"a.$": "$.value", "b.$": "$.value"},
                     "ResultPath": "$.doubled", "End": True}}},
                 "Next": "Risky"},
        "Risky": {"Type": "Task", "Resource": placeholder("test-flaky"), "ResultPath": "$.risk", "Next": "Summary",
                  "Retry": [{"ErrorEquals": ["Flake"], "IntervalSeconds": 1, "MaxAttempts": 1, "BackoffRate": 1.0}],
                  "Catch": [{"ErrorEquals": ["States.TaskFailed"], "ResultPath": "$.risk", "Next": "Summary"}]},
        "Summary": {"Type": "Pass", "Parameters": {"forked.$": "$.forked", "input.$": "$$.Execution.Input"},
                    "ResultPath": "$.summary", "OutputPath": "$", "Next": "Finish"},
        "Finish": {"Type": "Succeed", "OutputPath": "$"},
        "Refuse": {"Type": "Fail", "Error": "Refused", "Cause": "the input asked for it"},
    },
}


@pytest.mark.parametrize("data", [
    {"name": "main", "numbers": [1, 2, 5], "flag": False},   # through the Map, the retry and the catch
    {"name": "small", "numbers": [1, 1], "flag": True},      # the Choice default
    {"name": "fail", "numbers": [1, 2]},                     # a Fail state
], ids=["map-retry-catch", "choice-default", "fail"])
def test_constructs_parity(data: dict, moto_factory, tmp_path: Path) -> None:
    registry = default_registry().overlay({"test-add": _add, "test-echo": _echo, "test-flaky": _flaky})
    reference, ours, _, _ = _both(moto_factory, tmp_path, CONSTRUCTS, lambda root, stores: data, lambda: registry)
    assert ours == reference
    if data["name"] == "main":
        assert [item["doubled"] for item in ours.output["doubled"]] == [2, 4, 10]
        assert ours.output["risk"]["Error"] == "Flake"


def test_runtime_error_parity(moto_factory, tmp_path: Path) -> None:
    """A path that names nothing is States.Runtime on both engines (the causes are worded differently)."""
    definition = {"StartAt": "Echo", "States": {"Echo": {
        "Type": "Task", "Resource": placeholder("test-echo"), "InputPath": "$.absent", "End": True,
        "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Caught"}]}, "Caught": {"Type": "Succeed"}}}
    registry = default_registry().overlay({"test-echo": _echo})
    reference, ours, _, _ = _both(moto_factory, tmp_path, definition, lambda root, stores: {"here": 1},
                                  lambda: registry)
    assert (ours.status, ours.error) == (reference.status, reference.error) == ("FAILED", "States.Runtime")
