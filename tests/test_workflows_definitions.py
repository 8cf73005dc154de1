"""The definitions themselves: valid ASL by an independent validator (npm `asl-validator`, installed by
`make .node-tools/.installed`), loadable by the embedded executor with every task registered, and
consistent with each other (the copy-shaped workflows share one copy shape)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from dss.workflows import Executor, bind, default_registry, definitions, lambda_arns, task_names
from dss.workflows.binding import PLACEHOLDER_PREFIX, placeholder, task_name

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = ROOT / ".node-tools" / "node_modules" / ".bin" / "asl-validator"
COPY_SHAPED = ["blob-copy", "blob-copy-write-metadata", "sync-large-blob", "file-checkout"]
COPY_STATES = ["Setup", "AlreadyCopied", "CopyParts", "Finalize", "Abort", "RecordFailure", "CopyFailed"]


def _validate(path: Path) -> subprocess.CompletedProcess:
    if not VALIDATOR.exists():
        pytest.fail(f"{VALIDATOR} is missing: run `make .node-tools/.installed` (make test does)")
    return subprocess.run([str(VALIDATOR), "--json-path", str(path)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", definitions.names())
def test_definition_is_valid_asl(name: str) -> None:
    result = _validate(definitions.path(name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout


def test_validator_rejects_a_broken_definition(tmp_path: Path) -> None:
    """The validator really checks: a transition to a missing state fails it."""
    broken = definitions.load("blob-copy")
    broken["States"]["Setup"]["Next"] = "Nowhere"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    result = _validate(path)
    assert result.returncode != 0, result.stdout


def test_there_are_the_workflows_the_issue_lists() -> None:
    assert set(definitions.names()) >= {"blob-copy", "blob-copy-write-metadata", "sync-large-blob",
                                        "file-checkout", "bundle-checkout"}


@pytest.mark.parametrize("name", definitions.names())
def test_executor_loads_every_definition(name: str, tmp_path: Path) -> None:
    with Executor(tmp_path / "journal.sqlite3") as executor:
        workflow = executor.workflow(name)
    assert workflow.machine.start_at in workflow.definition["States"]
    assert task_names(workflow.definition) <= default_registry().names()


def _walk(machine: dict):
    for state in machine["States"].values():
        yield state
        for branch in state.get("Branches", []):
            yield from _walk(branch)
        for nested in ("Iterator", "ItemProcessor"):
            if nested in state:
                yield from _walk(state[nested])


def _paths(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str) and value.startswith("$") and (key.endswith(("Path", ".$")) or key == "Variable"):
                yield value
            yield from _paths(value)
    elif isinstance(node, list):
        for item in node:
            yield from _paths(item)


@pytest.mark.parametrize("name", definitions.names())
def test_definitions_stay_in_the_portable_subset(name: str) -> None:
    """Task Resources are placeholders, and paths use field steps only: moto's interpreter reads
    `$.a[0].b` differently from AWS (see test_workflows_parity), so the definitions avoid indices."""
    definition = definitions.load(name)
    for state in _walk(definition):
        if state["Type"] == "Task":
            assert task_name(state["Resource"]), state["Resource"]
    for path in _paths(definition):
        assert re.fullmatch(r"\$\$?(\.[A-Za-z_][\w-]*)*", path), path


def test_copy_shaped_workflows_share_the_copy_states() -> None:
    reference = definitions.load("blob-copy")["States"]
    for name in COPY_SHAPED:
        states = definitions.load(name)["States"]
        for state in COPY_STATES:
            if state == "AlreadyCopied" or state == "Finalize":
                # Only where they go next differs (straight on, or to WriteMetadata).
                assert {k: v for k, v in states[state].items() if k not in ("Next", "Choices")} == \
                    {k: v for k, v in reference[state].items() if k not in ("Next", "Choices")}, (name, state)
            else:
                assert states[state] == reference[state], (name, state)


def test_resumable_tasks_loop_until_finished() -> None:
    """Each Map item loops its task through a Choice on `$.finished` (the TimedThread pattern)."""
    for name in definitions.names():
        for state in _walk(definitions.load(name)):
            if state["Type"] == "Map":
                inner = state["ItemProcessor"]["States"]
                loops = [s for s in inner.values() if s["Type"] == "Choice"
                         and s["Choices"][0]["Variable"] == "$.finished" and s["Default"] in inner]
                assert loops, name
                assert state["MaxConcurrency"] > 0


def test_binding_to_lambda_arns() -> None:
    definition = definitions.load("bundle-checkout")
    bound = bind(definition, lambda_arns("eu-west-1", "111122223333", "dss-dev-"))
    resources = [state["Resource"] for state in _walk(bound) if state["Type"] == "Task"]
    assert resources and all(re.fullmatch(r"arn:aws:lambda:eu-west-1:111122223333:function:dss-dev-[a-z-]+", r)
                             for r in resources)
    assert PLACEHOLDER_PREFIX not in json.dumps(bound)
    assert bind(definition, placeholder) == definition  # the local rendering is the definition itself
    assert definitions.load("bundle-checkout") == definition  # bind copies
