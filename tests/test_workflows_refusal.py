"""The executor refuses, when a definition loads, every construct outside the subset it supports — with
an error that names the construct — rather than failing halfway through an execution."""
from __future__ import annotations

import copy
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from dss.workflows import DefinitionError, Executor, UnknownTask, default_registry
from dss.workflows.binding import placeholder

ECHO = placeholder("test-echo")


def _base() -> dict:
    return {"StartAt": "Work", "States": {
        "Work": {"Type": "Task", "Resource": ECHO, "Next": "Check"},
        "Check": {"Type": "Choice", "Choices": [{"Variable": "$.x", "NumericEquals": 1, "Next": "Done"}],
                  "Default": "Done"},
        "Done": {"Type": "Succeed"}}}


def _set(path: str, value) -> Callable[[dict], None]:
    *parents, last = path.split("/")

    def mutate(definition: dict) -> None:
        node = definition
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[last] = value

    return mutate


def _map_state(**fields) -> dict:
    return {"Type": "Map", "ItemsPath": "$.items", "End": True,
            "ItemProcessor": {"StartAt": "Inner", "States": {"Inner": {"Type": "Task", "Resource": ECHO, "End": True}}},
            **fields}


REFUSED = {
    "unknown state type": (_set("States/Done", {"Type": "Sleep"}), "unsupported state type 'Sleep'"),
    "task timeout": (_set("States/Work/TimeoutSeconds", 60), "TimeoutSeconds"),
    "task heartbeat": (_set("States/Work/HeartbeatSeconds", 60), "HeartbeatSeconds"),
    "machine timeout": (_set("TimeoutSeconds", 3600), "TimeoutSeconds"),
    "JSONata": (_set("QueryLanguage", "JSONata"), "QueryLanguage"),
    "variables": (_set("States/Work/Assign", {"a": 1}), "Assign"),
    "arguments": (_set("States/Work/Arguments", {"a": 1}), "Arguments"),
    "intrinsic function": (_set("States/Work/Parameters", {"s.$": "States.Format('{}', $.x)"}), "intrinsic"),
    "wildcard path": (_set("States/Work/InputPath", "$.items[*].x"), "unsupported JSONPath"),
    "recursive descent": (_set("States/Work/OutputPath", "$..x"), "unsupported JSONPath"),
    "filter path": (_set("States/Work/InputPath", "$.items[?(@.x > 1)]"), "unsupported JSONPath"),
    "not a path": (_set("States/Work/InputPath", "items"), "is not a JSONPath"),
    "result path index": (_set("States/Work/ResultPath", "$.a[0]"), "must name fields"),
    "result path context": (_set("States/Work/ResultPath", "$$.Execution"), "must name fields"),
    "non-placeholder resource": (_set("States/Work/Resource", "arn:aws:states:::sqs:sendMessage"), "placeholder"),
    "retry max delay": (_set("States/Work/Retry", [{"ErrorEquals": ["States.ALL"], "MaxDelaySeconds": 5}]),
                        "MaxDelaySeconds"),
    "retry jitter": (_set("States/Work/Retry", [{"ErrorEquals": ["States.ALL"], "JitterStrategy": "FULL"}]),
                     "JitterStrategy"),
    "negative attempts": (_set("States/Work/Retry", [{"ErrorEquals": ["States.ALL"], "MaxAttempts": -1}]),
                          "MaxAttempts"),
    "States.ALL not alone": (_set("States/Work/Catch", [{"ErrorEquals": ["States.ALL", "X"], "Next": "Done"}]),
                             "must appear alone"),
    "States.ALL retrier not last": (_set("States/Work/Retry", [{"ErrorEquals": ["States.ALL"]},
                                                                {"ErrorEquals": ["X"]}]), "must be the last"),
    "choice operator": (_set("States/Check/Choices", [{"Variable": "$.x", "StringMatches": "a*", "Next": "Done"}]),
                        "unsupported choice operator 'StringMatches'"),
    "timestamp operator": (_set("States/Check/Choices", [{"Variable": "$.t", "TimestampEquals": "2020-01-01T00:00:00Z",
                                                          "Next": "Done"}]), "TimestampEquals"),
    "path comparison": (_set("States/Check/Choices", [{"Variable": "$.x", "NumericEqualsPath": "$.y",
                                                       "Next": "Done"}]), "NumericEqualsPath"),
    "choice without next": (_set("States/Check/Choices", [{"Variable": "$.x", "NumericEquals": 1}]), "needs a Next"),
    "wait timestamp": (_set("States/Done", {"Type": "Wait", "Timestamp": "2030-01-01T00:00:00Z", "End": True}),
                       "Timestamp"),
    "distributed map": (_set("States/Done", _map_state(ItemReader={"Resource": "arn:aws:states:::s3:getObject"})),
                        "ItemReader"),
    "distributed processor": (_set("States/Done", _map_state(ItemProcessor={
        "ProcessorConfig": {"Mode": "DISTRIBUTED"}, "StartAt": "I",
        "States": {"I": {"Type": "Pass", "End": True}}})), "INLINE"),
    "map tolerance": (_set("States/Done", _map_state(ToleratedFailurePercentage=5)), "ToleratedFailurePercentage"),
    "unknown transition": (_set("States/Work/Next", "Nowhere"), "unknown state 'Nowhere'"),
    "missing start": (_set("StartAt", "Nowhere"), "StartAt"),
    "next and end": (_set("States/Work/End", True), "exactly one of Next and End"),
    "fail with both error fields": (_set("States/Done", {"Type": "Fail", "Error": "E", "ErrorPath": "$.e"}),
                                    "exclusive"),
    "pass result selector": (_set("States/Done", {"Type": "Pass", "ResultSelector": {}, "End": True}),
                             "ResultSelector"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_construct_is_refused_at_load(case: str, tmp_path: Path) -> None:
    mutate, message = REFUSED[case]
    definition = copy.deepcopy(_base())
    mutate(definition)
    registry = default_registry().overlay({"test-echo": lambda payload, context: payload})
    with Executor(tmp_path / "journal.sqlite3", registry=registry) as executor:
        executor.load(_base(), "base")  # the unmutated definition is fine
        with pytest.raises(DefinitionError, match=re.escape(message)):
            executor.load(definition, "mutated")
        assert executor.executions() == []  # nothing was started


def test_unregistered_task_is_refused(tmp_path: Path) -> None:
    with Executor(tmp_path / "journal.sqlite3") as executor, pytest.raises(UnknownTask, match="test-echo"):
        executor.load(_base(), "base")
