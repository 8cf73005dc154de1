"""The embedded executor's semantics on small test definitions: data flow, choice rules, Map and task-pool
concurrency, Retry/Catch, idempotent starts, close-and-resume, the history API and the CLI verbs."""
from __future__ import annotations

import argparse
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dss.workflows import (
    ExecutionAlreadyExists,
    ExecutionNotFound,
    Executor,
    TaskContext,
    default_registry,
    history,
)
from dss.workflows.binding import placeholder

pytestmark = pytest.mark.timeout(300)


class Flake(Exception):
    pass


class Recorder:
    """Test tasks that record their calls and how many ran at once."""

    def __init__(self, pause: float = 0.0) -> None:
        self.calls: list[Any] = []
        self.running = self.most = 0
        self.pause = pause
        self.lock = threading.Lock()

    def __call__(self, payload: Any, context: TaskContext) -> Any:
        with self.lock:
            self.calls.append(payload)
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.pause)
        with self.lock:
            self.running -= 1
        return {"seen": payload}


def _executor(tmp_path: Path, tasks: dict, **options: Any) -> Executor:
    return Executor(tmp_path / "journal.sqlite3", registry=default_registry().overlay(tasks), **options)


def _task(name: str, **fields: Any) -> dict:
    return {"Type": "Task", "Resource": placeholder(name), **fields}


def _one(state: dict) -> dict:
    return {"StartAt": "Only", "States": {"Only": {**state, "End": True}}}


def test_data_flow_through_a_task(tmp_path: Path) -> None:
    definition = _one(_task("test-echo", InputPath="$.inner", ResultPath="$.inner.result",
                            Parameters={"value.$": "$.value", "fixed": [1, {"x": "y"}], "name.$": "$$.Execution.Name",
                                        "state.$": "$$.State.Name"},
                            ResultSelector={"got.$": "$.echo.value"}, OutputPath="$.inner"))
    with _executor(tmp_path, {"test-echo": lambda p, c: {"echo": p}}) as executor:
        record = executor.run(executor.load(definition, "flow"), {"inner": {"value": 7}, "outer": 1}, name="n1",
                              timeout=60)
    assert record.status == "SUCCEEDED", record
    assert record.output == {"value": 7, "result": {"got": 7}}


def test_null_paths_discard(tmp_path: Path) -> None:
    definition = _one(_task("test-echo", InputPath=None, ResultPath=None))
    with _executor(tmp_path, {"test-echo": lambda p, c: {"echo": p}}) as executor:
        record = executor.run(executor.load(definition, "nulls"), {"keep": True}, timeout=60)
    assert record.output == {"keep": True}


@pytest.mark.parametrize(("rule", "data", "expected"), [
    ({"Variable": "$.n", "NumericEquals": 2}, {"n": 2}, "yes"),
    ({"Variable": "$.n", "NumericEquals": 2}, {"n": "2"}, "no"),  # the wrong type is false, not an error
    ({"Variable": "$.n", "NumericGreaterThan": 1.5}, {"n": 2}, "yes"),
    ({"Variable": "$.n", "NumericLessThanEquals": 2}, {"n": 2}, "yes"),
    ({"Variable": "$.b", "BooleanEquals": False}, {"b": False}, "yes"),
    ({"Variable": "$.b", "BooleanEquals": True}, {"b": 1}, "no"),
    ({"Variable": "$.s", "StringEquals": "a"}, {"s": "a"}, "yes"),
    ({"Variable": "$.s", "IsPresent": False}, {}, "yes"),
    ({"Variable": "$.s", "IsNull": True}, {"s": None}, "yes"),
    ({"Or": [{"Variable": "$.n", "NumericEquals": 1}, {"Not": {"Variable": "$.n", "NumericEquals": 3}}]},
     {"n": 3}, "no"),
    ({"And": [{"Variable": "$.n", "NumericEquals": 3}, {"Variable": "$$.Execution.Input.n", "NumericEquals": 3}]},
     {"n": 3}, "yes"),
])
def test_choice_rules(rule: dict, data: dict, expected: str, tmp_path: Path) -> None:
    definition = {"StartAt": "C", "States": {
        "C": {"Type": "Choice", "Choices": [{**rule, "Next": "Yes"}], "Default": "No"},
        "Yes": {"Type": "Pass", "Result": "yes", "End": True}, "No": {"Type": "Pass", "Result": "no", "End": True}}}
    with _executor(tmp_path, {}) as executor:
        record = executor.run(executor.load(definition, "choice"), data, timeout=60)
    assert record.output == expected


@pytest.mark.parametrize(("choices", "error"), [
    ([{"Variable": "$.absent", "NumericEquals": 1, "Next": "Yes"}], "States.Runtime"),
    ([{"Variable": "$.n", "NumericEquals": 1, "Next": "Yes"}], "States.NoChoiceMatched"),
])
def test_choice_errors(choices: list, error: str, tmp_path: Path) -> None:
    definition = {"StartAt": "C", "States": {"C": {"Type": "Choice", "Choices": choices},
                                             "Yes": {"Type": "Succeed"}}}
    with _executor(tmp_path, {}) as executor:
        record = executor.run(executor.load(definition, "choice"), {"n": 2}, timeout=60)
    assert (record.status, record.error) == ("FAILED", error)


def _map(concurrency: int, **fields: Any) -> dict:
    return _one({"Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": concurrency,
                 "ItemSelector": {"value.$": "$$.Map.Item.Value", "index.$": "$$.Map.Item.Index"},
                 "ItemProcessor": {"StartAt": "Work", "States": {"Work": _task("test-record", End=True)}}, **fields})


def test_map_respects_max_concurrency_and_keeps_order(tmp_path: Path) -> None:
    recorder = Recorder(pause=0.2)
    with _executor(tmp_path, {"test-record": recorder}, max_workers=8) as executor:
        record = executor.run(executor.load(_map(2), "map"), {"items": list("abcdefgh")}, timeout=120)
    assert record.status == "SUCCEEDED", record
    assert [item["seen"] for item in record.output] == [{"value": v, "index": i} for i, v in enumerate("abcdefgh")]
    assert 1 <= recorder.most <= 2


def test_task_pool_bounds_all_task_work(tmp_path: Path) -> None:
    recorder = Recorder(pause=0.1)
    with _executor(tmp_path, {"test-record": recorder}, max_workers=1) as executor:
        record = executor.run(executor.load(_map(4), "map"), {"items": list(range(6))}, timeout=120)
    assert record.status == "SUCCEEDED"
    assert recorder.most == 1


def test_empty_map(tmp_path: Path) -> None:
    with _executor(tmp_path, {"test-record": Recorder()}) as executor:
        record = executor.run(executor.load(_map(0), "map"), {"items": []}, timeout=60)
    assert record.output == []


def _always_flaky(payload: Any, context: TaskContext) -> Any:
    raise Flake("again")


def test_retry_attempts_then_failure(tmp_path: Path) -> None:
    calls: list[float] = []

    def flaky(payload: Any, context: TaskContext) -> Any:
        calls.append(time.monotonic())
        raise Flake("again")

    definition = _one(_task("test-flaky", Retry=[{"ErrorEquals": ["States.TaskFailed"], "IntervalSeconds": 1,
                                                   "MaxAttempts": 2, "BackoffRate": 1.0}]))
    with _executor(tmp_path, {"test-flaky": flaky}) as executor:
        record = executor.run(executor.load(definition, "retry"), {}, timeout=60)
        events = [e.type for e in executor.history(record.id)]
    assert (record.status, record.error) == ("FAILED", "Flake")
    assert json.loads(record.cause or "") == {"errorMessage": "again", "errorType": "Flake"}
    assert len(calls) == 3 and events.count("RetryScheduled") == 2
    assert all(later - earlier >= 0.9 for earlier, later in zip(calls, calls[1:]))  # the back-off was honoured


def test_first_matching_retrier_decides(tmp_path: Path) -> None:
    calls: list[int] = []
    definition = _one(_task("test-flaky", Retry=[{"ErrorEquals": ["Flake"], "MaxAttempts": 0},
                                                 {"ErrorEquals": ["States.ALL"], "MaxAttempts": 3}]))
    with _executor(tmp_path, {"test-flaky": lambda p, c: calls.append(1) or _always_flaky(p, c)}) as executor:
        record = executor.run(executor.load(definition, "retry"), {}, timeout=60)
    assert record.error == "Flake" and len(calls) == 1


def test_catch_puts_the_error_at_its_result_path(tmp_path: Path) -> None:
    definition = {"StartAt": "T", "States": {
        "T": _task("test-flaky", Next="Done",
                   Catch=[{"ErrorEquals": ["Flake"], "ResultPath": "$.error", "Next": "Done"}]),
        "Done": {"Type": "Succeed"}}}
    with _executor(tmp_path, {"test-flaky": _always_flaky}) as executor:
        record = executor.run(executor.load(definition, "catch"), {"kept": 1}, timeout=60)
    assert record.status == "SUCCEEDED"
    assert record.output["kept"] == 1 and record.output["error"]["Error"] == "Flake"


def test_runtime_errors_are_not_caught(tmp_path: Path) -> None:
    definition = {"StartAt": "T", "States": {
        "T": _task("test-flaky", InputPath="$.absent", Next="Done",
                   Catch=[{"ErrorEquals": ["States.ALL"], "Next": "Done"}]),
        "Done": {"Type": "Succeed"}}}
    with _executor(tmp_path, {"test-flaky": _always_flaky}) as executor:
        record = executor.run(executor.load(definition, "runtime"), {}, timeout=60)
    assert (record.status, record.error) == ("FAILED", "States.Runtime")


def test_parallel_branch_failure_fails_the_state(tmp_path: Path) -> None:
    definition = {"StartAt": "P", "States": {
        "P": {"Type": "Parallel", "Next": "Done", "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Caught"}],
              "Branches": [{"StartAt": "A", "States": {"A": {"Type": "Pass", "End": True}}},
                           {"StartAt": "B", "States": {"B": {"Type": "Fail", "Error": "Broken", "Cause": "b"}}}]},
        "Done": {"Type": "Succeed"},
        "Caught": {"Type": "Pass", "Result": "caught", "End": True}}}
    with _executor(tmp_path, {}) as executor:
        record = executor.run(executor.load(definition, "parallel"), {}, timeout=60)
    assert record.output == "caught"


def test_wait_seconds_path_and_fail_paths(tmp_path: Path) -> None:
    definition = {"StartAt": "W", "States": {
        "W": {"Type": "Wait", "SecondsPath": "$.wait", "Next": "F"},
        "F": {"Type": "Fail", "ErrorPath": "$.error", "CausePath": "$.cause"}}}
    with _executor(tmp_path, {}) as executor:
        started = time.monotonic()
        record = executor.run(executor.load(definition, "wait"), {"wait": 1, "error": "E", "cause": "C"}, timeout=60)
    assert time.monotonic() - started >= 0.9
    assert (record.status, record.error, record.cause) == ("FAILED", "E", "C")


def test_execution_names_are_idempotency_keys(tmp_path: Path) -> None:
    recorder = Recorder()
    definition = _one(_task("test-record"))
    with _executor(tmp_path, {"test-record": recorder}) as executor:
        workflow = executor.load(definition, "named")
        first = executor.run(workflow, {"a": 1}, name="copy-x", timeout=60)
        again = executor.start(workflow, {"a": 1}, name="copy-x")
        with pytest.raises(ExecutionAlreadyExists):
            executor.start(workflow, {"a": 2}, name="copy-x")
        with pytest.raises(ExecutionNotFound):
            executor.describe("nope")
    assert first.id == again == "copy-x" and len(recorder.calls) == 1


def test_close_then_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    recorder = Recorder()
    # Hold blocks until the test lets it go, so that close() comes while it is in flight however late:
    # Second cannot have run, whatever the load.
    holding, release, holds = threading.Event(), threading.Event(), [0]

    def hold(payload: Any, context: TaskContext) -> Any:
        holds[0] += 1
        holding.set()
        release.wait(120)  # a hang guard: released right after close()
        return payload

    definition = {"StartAt": "First", "States": {
        "First": _task("test-record", ResultPath="$.first", Next="Pause"),
        "Pause": {"Type": "Wait", "Seconds": 1, "Next": "Hold"},
        "Hold": _task("test-hold", ResultPath=None, Next="Second"),
        "Second": _task("test-record", ResultPath="$.second", End=True)}}
    tasks = {"test-record": recorder, "test-hold": hold}
    executor = _executor(tmp_path, tasks)
    try:
        execution_id = executor.start(executor.load(definition, "pausing"), {"x": 1})
        assert holding.wait(60), "the execution never reached its Hold state"
    finally:
        executor.close()
        release.set()  # the interrupted call returns into the void; the resumed execution's returns at once
    assert len(recorder.calls) == 1
    with _executor(tmp_path, tasks) as restarted:
        assert restarted.describe(execution_id).status == "RUNNING"
        assert restarted.resume() == [execution_id]
        record = restarted.wait(execution_id, timeout=60)
        events = [e.type for e in restarted.history(execution_id)]
    assert "ExecutionResumed" in events
    assert record.status == "SUCCEEDED", record
    assert len(recorder.calls) == 2  # First did not run again
    assert events.count("WaitStarted") == 1  # nor did the Wait before Hold
    assert holds[0] == 2  # the task in flight at close() ran again
    assert record.output["second"]["seen"]["first"]["seen"] == {"x": 1}


def test_history_and_cli(tmp_path: Path) -> None:
    with _executor(tmp_path, {"test-record": Recorder(), "test-flaky": _always_flaky}) as executor:
        record = executor.run(executor.load(_map(2), "map"), {"items": [1, 2, 3]}, name="listed", timeout=60)
        failed = executor.run(executor.load(_one(_task("test-flaky")), "failing"), {}, name="broken", timeout=60)
    journal = tmp_path / "journal.sqlite3"
    out = io.StringIO()
    assert history.cmd_list(journal, out=out) == 0
    assert "listed" in out.getvalue() and "broken" in out.getvalue()
    listed = io.StringIO()
    history.cmd_list(journal, as_json=True, out=listed)
    assert {e["id"]: e["status"] for e in json.loads(listed.getvalue())} == {"listed": "SUCCEEDED",
                                                                              "broken": "FAILED"}
    shown = io.StringIO()
    assert history.cmd_show(journal, record.id, out=shown) == 0
    assert "Only" in shown.getvalue() and "3/3" in shown.getvalue() and "ExecutionSucceeded" in shown.getvalue()
    detail = io.StringIO()
    history.cmd_show(journal, failed.id, as_json=True, out=detail)
    assert json.loads(detail.getvalue())["error"] == "Flake"
    assert history.cmd_show(journal, "nope", out=io.StringIO()) == 1
    assert history.cmd_list(tmp_path / "absent.sqlite3", out=io.StringIO()) == 0

    top = argparse.ArgumentParser()
    history.add_cli(top.add_subparsers(dest="command", required=True), lambda: journal)
    args = top.parse_args(["workflows", "show", "listed", "--json", "--no-events"])
    assert args.verb == "show" and args.execution_id == "listed"
    assert top.parse_args(["workflows", "list", "--status", "FAILED"]).func is not None


def test_lambda_handler_gives_tasks_the_lambda_deadline() -> None:
    seen: list[float] = []
    registry = default_registry().overlay({"test-deadline": lambda p, c: seen.append(c.time_left()) or p})

    class LambdaContext:
        @staticmethod
        def get_remaining_time_in_millis() -> int:
            return 120_000

    handler = registry.lambda_handler("test-deadline", TaskContext, margin=10)
    assert handler({"a": 1}, LambdaContext()) == {"a": 1}
    assert 100 < seen[0] <= 110
