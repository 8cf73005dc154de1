"""Runs one execution of a loaded state machine, recording every transition in the journal.

A *scope* is one running state machine: the execution's top level, a Parallel branch or a Map item
(`dss.workflows.journal` explains their names and what is recorded). `Run.scope` starts a scope, or
picks it up where the journal says it is, and steps through its states; Parallel and Map states run
their child scopes on threads (Map at most MaxConcurrency at once) and collect the outputs in order.
Task functions run on the executor's bounded task pool.

Errors follow the States language: a state's failure is a `StatesError`; Retry (first retrier whose
ErrorEquals matches; when its attempts are spent the error goes to Catch) and Catch (first matching
catcher, error output `{"Error", "Cause"}` at its ResultPath in the state's input) apply to Task,
Parallel and Map. `States.ALL` matches every error but `States.Runtime`, which is never retried or
caught; `States.TaskFailed` matches every error not named `States.*`. When one branch or item fails, the
others stop at their next transition and the state fails with that error.

Two signals unwind a run without recording anything, so that it can be picked up again: `Interrupted`
(the executor is closing; the execution stays RUNNING and resumes when an executor opens the journal)
and `Cancelled` (a sibling branch or item failed).
"""
from __future__ import annotations

import concurrent.futures
import datetime
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dss.workflows.asl.model import NOTHING, Machine, State
from dss.workflows.errors import ALL, NO_CHOICE_MATCHED, RUNTIME, TASK_FAILED, StatesError
from dss.workflows.journal import FAILED, RUNNING, SUCCEEDED, Event, ExecutionRecord, Journal, ScopeRecord
from dss.workflows.registry import TaskContext, TaskRegistry

__all__ = ["Run", "Services", "Interrupted", "Cancelled", "Cancel"]

logger = logging.getLogger(__name__)
_POLL = 0.2  # seconds between checks for a stop while waiting


class Interrupted(Exception):
    """The executor is closing: leave everything as recorded."""


class Cancelled(Exception):
    """A sibling branch or item failed: stop this one at its next transition."""


class Cancel:
    """A cancellation flag chained to its parent's; the root one is the executor's stop event."""

    def __init__(self, stop: threading.Event, parent: Cancel | None = None) -> None:
        self._stop = stop
        self._parent = parent
        self._flag = threading.Event()

    def child(self) -> Cancel:
        return Cancel(self._stop, self)

    def set(self) -> None:
        self._flag.set()

    def check(self) -> None:
        if self._stop.is_set():
            raise Interrupted()
        node: Cancel | None = self
        while node is not None:
            if node._flag.is_set():
                raise Cancelled()
            node = node._parent

    def sleep_until(self, wake_at: float) -> None:
        while (left := wake_at - time.time()) > 0:
            self.check()
            self._stop.wait(min(left, _POLL))
        self.check()


@dataclass
class Services:
    """What every run of one executor shares."""
    journal: Journal
    registry: TaskRegistry
    context: TaskContext
    tasks: concurrent.futures.Executor
    stop: threading.Event
    map_concurrency: int
    task_time_budget: float | None


@dataclass
class Outcome:
    next: str | None
    output: Any
    events: list[Event] = field(default_factory=list)


def _matches(names: tuple[str, ...], error: str) -> bool:
    if error == RUNTIME:
        return False
    return ALL in names or error in names or (TASK_FAILED in names and not error.startswith("States."))


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat().replace("+00:00", "Z")


class Run:
    """One execution. Call it (on a thread of its own) to run or resume it to the end or to an interruption."""

    def __init__(self, services: Services, record: ExecutionRecord, machine: Machine,
                 on_done: Callable[[str], None] = lambda execution_id: None) -> None:
        self.services = services
        self.journal = services.journal
        self.record = record
        self.machine = machine
        self.on_done = on_done

    def __call__(self) -> None:
        execution_id = self.record.id
        try:
            output = self.scope(self.machine, "", self.record.input, Cancel(self.services.stop))
        except Interrupted:
            logger.info("Workflow execution %s interrupted; it resumes when the executor restarts", execution_id)
            return
        except StatesError as err:
            self.journal.finish_execution(execution_id, FAILED, error=err.error, cause=err.cause)
        except Exception as exc:  # noqa: BLE001 - a bug or a journal failure: record it, do not lose the thread
            logger.exception("Workflow execution %s failed unexpectedly", execution_id)
            self.journal.finish_execution(execution_id, FAILED, error=RUNTIME, cause=f"{type(exc).__name__}: {exc}")
        else:
            self.journal.finish_execution(execution_id, SUCCEEDED, output=output)
        self.on_done(execution_id)

    # --- scopes -----------------------------------------------------------------------------------
    def scope(self, machine: Machine, scope: str, data: Any, cancel: Cancel) -> Any:
        """Run (or resume, or read back) one state machine; its output, or its error raised."""
        opened: list[Event] = [("ScopeStarted", None, {"input": data})] if scope else []
        cursor = self.journal.open_scope(self.record.id, scope, machine.start_at, data,
                                         [*opened, ("StateEntered", machine.start_at, {"input": data})])
        if cursor.status == SUCCEEDED:
            return cursor.output
        if cursor.status == FAILED:
            raise StatesError(cursor.error or "", cursor.cause or "")
        while True:
            cancel.check()
            state = machine.states[cursor.state]
            try:
                outcome = self._state(state, cursor, scope, cancel)
            except StatesError as err:
                self.journal.close_scope(self.record.id, scope, FAILED,
                                         [("StateFailed", state.name, {"error": err.error, "cause": err.cause})],
                                         error=err.error, cause=err.cause)
                raise
            events = [*outcome.events, ("StateExited", state.name, {"output": outcome.output})]
            if outcome.next is None:
                closed: list[Event] = [("ScopeSucceeded", None, {})] if scope else []
                self.journal.close_scope(self.record.id, scope, SUCCEEDED, [*events, *closed], output=outcome.output)
                return outcome.output
            cursor = ScopeRecord(scope, RUNNING, cursor.step + 1, outcome.next, outcome.output)
            self.journal.advance(self.record.id, scope, cursor.step, outcome.next, outcome.output,
                                 [*events, ("StateEntered", outcome.next, {"input": outcome.output})])

    def _state(self, state: State, cursor: ScopeRecord, scope: str, cancel: Cancel) -> Outcome:
        try:
            if cursor.wake_at:
                cancel.sleep_until(cursor.wake_at)
            if state.type in ("Task", "Parallel", "Map"):
                return self._recovering(state, cursor, scope, cancel)
            return getattr(self, f"_{state.type.lower()}")(state, cursor, scope, cancel, 0)
        except (StatesError, Interrupted, Cancelled):
            raise
        except Exception as exc:  # noqa: BLE001 - a malformed payload or a bug is the States.Runtime error
            logger.exception("Workflow state %s failed unexpectedly", state.name)
            raise StatesError(RUNTIME, f"{type(exc).__name__}: {exc}") from exc

    def _recovering(self, state: State, cursor: ScopeRecord, scope: str, cancel: Cancel) -> Outcome:
        handler = getattr(self, f"_{state.type.lower()}")
        while True:
            attempt = sum(cursor.retries.values())
            try:
                return handler(state, cursor, scope, cancel, attempt)
            except StatesError as err:
                failure = err
            delay = self._retry_delay(state, cursor, failure)
            if delay is None:
                caught = self._catch(state, cursor, failure)
                if caught is None:
                    raise failure
                return caught
            cursor.wake_at = time.time() + delay
            self.journal.pause(self.record.id, scope, cursor.retries, cursor.wake_at, [
                ("RetryScheduled", state.name, {"error": failure.error, "attempt": attempt + 1, "delay": delay})])
            cancel.sleep_until(cursor.wake_at)

    @staticmethod
    def _retry_delay(state: State, cursor: ScopeRecord, err: StatesError) -> float | None:
        """The back-off before the next attempt (counting it in `cursor.retries`), or None: no retry."""
        for index, retrier in enumerate(state.retry):
            if _matches(retrier.errors, err.error):
                done = cursor.retries.get(str(index), 0)
                if done >= retrier.max_attempts:
                    return None  # the first matching retrier decides, even when it is spent
                cursor.retries[str(index)] = done + 1
                return retrier.delay(done)
        return None

    @staticmethod
    def _catch(state: State, cursor: ScopeRecord, err: StatesError) -> Outcome | None:
        for catcher in state.catch:
            if _matches(catcher.errors, err.error):
                error_output = {"Error": err.error, "Cause": err.cause}
                output = (cursor.data if catcher.result_path is None
                          else catcher.result_path.put(cursor.data, error_output))
                return Outcome(catcher.next, output, [("Caught", state.name, {**error_output, "next": catcher.next})])
        return None

    def _context(self, state: State, attempt: int, item: tuple[int, Any] | None = None) -> dict[str, Any]:
        context: dict[str, Any] = {
            "Execution": {"Id": self.record.id, "Name": self.record.id, "Input": self.record.input,
                          "StartTime": _iso(self.record.started)},
            "StateMachine": {"Id": self.record.workflow, "Name": self.record.workflow},
            "State": {"Name": state.name, "RetryCount": attempt},
        }
        if item is not None:
            context["Map"] = {"Item": {"Index": item[0], "Value": item[1]}}
        return context

    # --- state types ------------------------------------------------------------------------------
    def _task(self, state: State, cursor: ScopeRecord, scope: str, cancel: Cancel, attempt: int) -> Outcome:
        assert state.task is not None
        context = self._context(state, attempt)
        payload = state.paths.effective_input(cursor.data, context)
        self.journal.record(self.record.id, scope, [("TaskScheduled", state.name,
                                                     {"task": state.task, "input": payload, "attempt": attempt})])
        budget = self.services.task_time_budget
        future = self.services.tasks.submit(self.services.registry.invoke, state.task, payload,
                                            self.services.context.with_budget(budget))
        while True:
            try:
                result = future.result(timeout=_POLL)
                break
            except concurrent.futures.TimeoutError:
                if self.services.stop.is_set():
                    raise Interrupted() from None  # the task finishes on its own; it runs again on resume
            except StatesError as err:
                self.journal.record(self.record.id, scope, [("TaskFailed", state.name,
                                                             {"error": err.error, "cause": err.cause})])
                raise
        output = state.paths.output(cursor.data, result, context)
        return Outcome(state.next, output, [("TaskSucceeded", state.name, {"output": result})])

    def _pass(self, state: State, cursor: ScopeRecord, scope: str, cancel: Cancel, attempt: int) -> Outcome:
        context = self._context(state, attempt)
        result = state.result if state.result is not NOTHING else state.paths.effective_input(cursor.data, context)
        return Outcome(state.next, state.paths.output(cursor.data, result, context))

    def _choice(self, state: State, cursor: ScopeRecord, scope: str, cancel: Cancel, attempt: int) -> Outcome:
        context = self._context(state, attempt)
        data = state.paths.effective_input(cursor.data, context)
        target = next((target for rule, target in state.choices if rule.matches(data, context)), state.default)
        if target is None:
            raise StatesError(NO_CHOICE_MATCHED, f"no choice rule of state {state.name!r} matched")
        return Outcome(target, state.paths.select_output(data, context))

    def _wait(self, state: State, cursor: ScopeRecord, scope: str, cancel: Cancel, attempt: int) -> Outcome:
        context = self._context(state, attempt)
        data = state.paths.effective_input(cursor.data, context)
        seconds = state.seconds if state.seconds_path is None else state.seconds_path.get(data, context)
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
            raise StatesError(RUNTIME, f"Wait {state.name!r}: {seconds!r} is not a number of seconds")
        if cursor.wake_at is None:  # on resume, the wake-up time recorded at entry stands
            cursor.wake_at = time.time() + seconds
            self.journal.pause(self.record.id, scope, cursor.retries, cursor.wake_at,
                               [("WaitStarted", state.name, {"until": _iso(cursor.wake_at)})])
        cancel.sleep_until(cursor.wake_at)
        return Outcome(state.next, state.paths.select_output(data, context))

    def _succeed(self, state: State, cursor: ScopeRecord, scope: str, cancel: Cancel, attempt: int) -> Outcome:
        context = self._context(state, attempt)
        return Outcome(None, state.paths.select_output(state.paths.effective_input(cursor.data, context), context))

    def _fail(self, state: State, cursor: ScopeRecord, scope: str, cancel: Cancel, attempt: int) -> Outcome:
        context = self._context(state, attempt)
        error = state.error if state.error_path is None else state.error_path.get(cursor.data, context)
        cause = state.cause if state.cause_path is None else state.cause_path.get(cursor.data, context)
        raise StatesError(str(error or ""), str(cause or ""))

    def _parallel(self, state: State, cursor: ScopeRecord, scope: str, cancel: Cancel, attempt: int) -> Outcome:
        context = self._context(state, attempt)
        data = state.paths.effective_input(cursor.data, context)
        prefix = f"{scope}/{state.name}@{cursor.step}.{attempt}#"
        self.journal.record(self.record.id, scope, [("ParallelStarted", state.name,
                                                     {"branches": len(state.branches), "prefix": prefix})])
        jobs = [(branch, f"{prefix}{i}", data) for i, branch in enumerate(state.branches)]
        results = self._fan_out(jobs, len(jobs), cancel)
        return Outcome(state.next, state.paths.output(cursor.data, results, context))

    def _map(self, state: State, cursor: ScopeRecord, scope: str, cancel: Cancel, attempt: int) -> Outcome:
        assert state.iterator is not None
        context = self._context(state, attempt)
        data = state.paths.effective_input(cursor.data, context)
        items = state.items_path.get(data, context)
        if not isinstance(items, list):
            raise StatesError(RUNTIME, f"Map {state.name!r}: ItemsPath {state.items_path.text!r} is not an array")
        prefix = f"{scope}/{state.name}@{cursor.step}.{attempt}#"
        self.journal.record(self.record.id, scope, [("MapStarted", state.name, {"length": len(items),
                                                                                "prefix": prefix})])
        jobs = []
        for index, value in enumerate(items):
            item_input = (state.item_selector.render(data, self._context(state, attempt, (index, value)))
                          if state.item_selector else value)
            jobs.append((state.iterator, f"{prefix}{index}", item_input))
        limit = state.max_concurrency or self.services.map_concurrency
        results = self._fan_out(jobs, limit, cancel)
        return Outcome(state.next, state.paths.output(cursor.data, results, context))

    def _fan_out(self, jobs: list[tuple[Machine, str, Any]], limit: int, cancel: Cancel) -> list[Any]:
        """Run child scopes, at most `limit` at once; their outputs in order, or the first failure raised."""
        if not jobs:
            return []
        siblings = cancel.child()
        results: list[Any] = [None] * len(jobs)
        failures: list[StatesError] = []
        interrupted = threading.Event()

        def run(index: int) -> None:
            machine, name, data = jobs[index]
            try:
                siblings.check()
                results[index] = self.scope(machine, name, data, siblings)
            except StatesError as err:
                failures.append(err)
                siblings.set()
            except Cancelled:
                pass
            except Interrupted:
                interrupted.set()
            except Exception as exc:  # noqa: BLE001 - reported as the state's failure
                logger.exception("Workflow scope %s failed unexpectedly", name)
                failures.append(StatesError(RUNTIME, f"{type(exc).__name__}: {exc}"))
                siblings.set()

        with concurrent.futures.ThreadPoolExecutor(max(1, min(limit, len(jobs))),
                                                   thread_name_prefix="dss-workflow-scope") as pool:
            list(pool.map(run, range(len(jobs))))
        if interrupted.is_set() or self.services.stop.is_set():
            raise Interrupted()
        if failures:
            raise failures[0]
        cancel.check()
        return results

