"""Load an Amazon States Language definition into a checked, immutable model — or refuse it.

The embedded executor supports exactly the subset the DSS definitions use, and this loader is where the
line is drawn: any state type, field, operator or path it does not know is a `DefinitionError` naming
it, raised when the definition loads rather than halfway through an execution.

Supported: state types Task, Choice, Wait, Parallel, Map (inline), Pass, Succeed, Fail; fields Next/End,
InputPath, OutputPath, Parameters, ResultSelector, ResultPath, Retry (ErrorEquals, IntervalSeconds,
MaxAttempts, BackoffRate), Catch (ErrorEquals, ResultPath, Next); Wait by Seconds or SecondsPath; Fail by
Error/Cause or ErrorPath/CausePath; Map by ItemsPath, MaxConcurrency, Iterator or ItemProcessor (INLINE),
Parameters or ItemSelector. Refused, among others: TimeoutSeconds and HeartbeatSeconds, JSONata
(QueryLanguage), variables (Assign), intrinsic functions, distributed Map (ItemReader, ResultWriter …),
Retry's MaxDelaySeconds/JitterStrategy, Wait by Timestamp, and choice operators beyond `COMPARATORS`.
Task resources must be DSS task placeholders (see `dss.workflows.binding`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from dss.workflows.asl.choice import Rule, parse_rule
from dss.workflows.asl.dataflow import ROOT, Paths, Template
from dss.workflows.asl.jsonpath import JsonPath
from dss.workflows.binding import task_name
from dss.workflows.errors import ALL, DefinitionError

__all__ = ["Machine", "State", "Retrier", "Catcher", "load_machine", "NOTHING"]

NOTHING: Any = object()  # "field absent", where JSON null is a meaningful value (Pass.Result)

_FLOW = {"Next", "End"}
_IO = {"InputPath", "OutputPath"}
_RESULT = {"Parameters", "ResultSelector", "ResultPath"}
_RECOVERY = {"Retry", "Catch"}
_FIELDS: dict[str, set[str]] = {
    "Task": {"Resource"} | _FLOW | _IO | _RESULT | _RECOVERY,
    "Pass": {"Result"} | _FLOW | _IO | {"Parameters", "ResultPath"},
    "Choice": {"Choices", "Default"} | _IO,
    "Wait": {"Seconds", "SecondsPath"} | _FLOW | _IO,
    "Succeed": _IO,
    "Fail": {"Error", "Cause", "ErrorPath", "CausePath"},
    "Parallel": {"Branches"} | _FLOW | _IO | _RESULT | _RECOVERY,
    "Map": ({"Iterator", "ItemProcessor", "ItemsPath", "MaxConcurrency", "ItemSelector"}
            | _FLOW | _IO | _RESULT | _RECOVERY),
}
_MACHINE_FIELDS = {"StartAt", "States", "Comment", "Version"}
_PROCESSOR_FIELDS = {"StartAt", "States", "Comment", "ProcessorConfig"}


@dataclass(frozen=True)
class Retrier:
    errors: tuple[str, ...]
    interval: float = 1.0
    max_attempts: int = 3
    backoff: float = 2.0

    def delay(self, retries_so_far: int) -> float:
        return self.interval * self.backoff ** retries_so_far


@dataclass(frozen=True)
class Catcher:
    errors: tuple[str, ...]
    next: str
    result_path: JsonPath | None = ROOT


@dataclass(frozen=True)
class State:
    name: str
    type: str
    next: str | None = None  # None: the state ends its machine
    paths: Paths = field(default_factory=Paths)
    retry: tuple[Retrier, ...] = ()
    catch: tuple[Catcher, ...] = ()
    task: str | None = None  # Task: the registered task name
    result: Any = NOTHING  # Pass
    choices: tuple[tuple[Rule, str], ...] = ()  # Choice
    default: str | None = None
    seconds: float | None = None  # Wait
    seconds_path: JsonPath | None = None
    error: str | None = None  # Fail
    cause: str | None = None
    error_path: JsonPath | None = None
    cause_path: JsonPath | None = None
    branches: tuple[Machine, ...] = ()  # Parallel
    iterator: Machine | None = None  # Map
    items_path: JsonPath = ROOT
    item_selector: Template | None = None
    max_concurrency: int = 0


@dataclass(frozen=True)
class Machine:
    start_at: str
    states: dict[str, State]


def load_machine(raw: Any, *, where: str = "definition") -> Machine:
    return _machine(raw, where, _MACHINE_FIELDS)


def _machine(raw: Any, where: str, allowed: set[str]) -> Machine:
    if not isinstance(raw, dict):
        raise DefinitionError(f"{where}: a state machine must be a JSON object")
    _only(raw, allowed, where)
    states_raw = raw.get("States")
    if not isinstance(states_raw, dict) or not states_raw:
        raise DefinitionError(f"{where}: States must be a non-empty object")
    states = {name: _state(name, body, f"{where}.States.{name}") for name, body in states_raw.items()}
    start = raw.get("StartAt")
    if not isinstance(start, str) or start not in states:
        raise DefinitionError(f"{where}: StartAt {start!r} is not a state of this machine")
    for state in states.values():
        targets = [state.next, state.default, *(c.next for c in state.catch), *(n for _, n in state.choices)]
        for target in targets:
            if target is not None and target not in states:
                raise DefinitionError(f"{where}.States.{state.name}: transition to unknown state {target!r}")
    return Machine(start, states)


def _only(raw: dict, allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise DefinitionError(f"{where}: unsupported field(s) {', '.join(unknown)}")


def _state(name: str, raw: Any, where: str) -> State:
    if not isinstance(raw, dict):
        raise DefinitionError(f"{where}: a state must be a JSON object")
    kind = raw.get("Type")
    if kind not in _FIELDS:
        raise DefinitionError(f"{where}: unsupported state type {kind!r} (supported: {', '.join(sorted(_FIELDS))})")
    where = f"{where} ({kind})"
    _only(raw, _FIELDS[kind] | {"Type", "Comment"}, where)
    # A Map's Parameters select each item's input (see `_map`); they are not applied to the Map's input.
    io_fields = {key: value for key, value in raw.items() if not (kind == "Map" and key == "Parameters")}
    common: dict[str, Any] = {"name": name, "type": kind, "paths": Paths.parse(io_fields, where)}
    if "Next" in _FIELDS[kind]:
        common["next"] = _flow(raw, where)
    if _RECOVERY <= _FIELDS[kind]:
        common["retry"] = tuple(_retrier(r, f"{where}.Retry[{i}]") for i, r in enumerate(_list(raw, "Retry", where)))
        _check_all_last(common["retry"], where)
        common["catch"] = tuple(_catcher(c, f"{where}.Catch[{i}]") for i, c in enumerate(_list(raw, "Catch", where)))
    return State(**common, **_SPECIFIC[kind](raw, where))


def _flow(raw: dict, where: str) -> str | None:
    if ("Next" in raw) == bool(raw.get("End")):
        raise DefinitionError(f"{where}: exactly one of Next and End (true) is required")
    if "Next" in raw and not isinstance(raw["Next"], str):
        raise DefinitionError(f"{where}: Next must be a state name")
    return raw.get("Next")


def _list(raw: dict, field_name: str, where: str) -> list:
    value = raw.get(field_name, [])
    if not isinstance(value, list):
        raise DefinitionError(f"{where}: {field_name} must be a list")
    return value


def _errors(raw: dict, where: str) -> tuple[str, ...]:
    errors = raw.get("ErrorEquals")
    if not isinstance(errors, list) or not errors or not all(isinstance(e, str) for e in errors):
        raise DefinitionError(f"{where}: ErrorEquals must be a non-empty list of error names")
    if ALL in errors and len(errors) > 1:
        raise DefinitionError(f"{where}: {ALL} must appear alone in ErrorEquals")
    return tuple(errors)


def _check_all_last(items: tuple, where: str) -> None:
    for item in items[:-1]:
        if ALL in item.errors:
            raise DefinitionError(f"{where}: a {ALL} retrier must be the last one")


def _retrier(raw: Any, where: str) -> Retrier:
    if not isinstance(raw, dict):
        raise DefinitionError(f"{where}: a retrier must be an object")
    _only(raw, {"ErrorEquals", "IntervalSeconds", "MaxAttempts", "BackoffRate", "Comment"}, where)
    interval, attempts, backoff = raw.get("IntervalSeconds", 1), raw.get("MaxAttempts", 3), raw.get("BackoffRate", 2.0)
    if not (isinstance(interval, int) and interval >= 1 and isinstance(attempts, int) and attempts >= 0
            and isinstance(backoff, int | float) and math.isfinite(backoff) and backoff >= 1):
        raise DefinitionError(f"{where}: IntervalSeconds ≥ 1, MaxAttempts ≥ 0 (integers) and BackoffRate ≥ 1 required")
    return Retrier(_errors(raw, where), float(interval), attempts, float(backoff))


def _catcher(raw: Any, where: str) -> Catcher:
    if not isinstance(raw, dict):
        raise DefinitionError(f"{where}: a catcher must be an object")
    _only(raw, {"ErrorEquals", "ResultPath", "Next", "Comment"}, where)
    if not isinstance(raw.get("Next"), str):
        raise DefinitionError(f"{where}: Next is required")
    result_path = Paths.parse({"ResultPath": raw["ResultPath"]} if "ResultPath" in raw else {}, where).result_path
    return Catcher(_errors(raw, where), raw["Next"], result_path)


def _task(raw: dict, where: str) -> dict[str, Any]:
    name = task_name(raw.get("Resource"))
    if name is None:
        raise DefinitionError(f"{where}: Resource {raw.get('Resource')!r} is not a DSS task placeholder")
    return {"task": name}


def _pass(raw: dict, where: str) -> dict[str, Any]:
    return {"result": raw.get("Result", NOTHING)}


def _choice(raw: dict, where: str) -> dict[str, Any]:
    rules = raw.get("Choices")
    if not isinstance(rules, list) or not rules:
        raise DefinitionError(f"{where}: Choices must be a non-empty list")
    parsed = tuple(parse_rule(rule, where=f"{where}.Choices[{i}]", top=True) for i, rule in enumerate(rules))
    return {"choices": tuple((rule, target) for rule, target in parsed if target), "default": raw.get("Default")}


def _wait(raw: dict, where: str) -> dict[str, Any]:
    if ("Seconds" in raw) == ("SecondsPath" in raw):
        raise DefinitionError(f"{where}: exactly one of Seconds and SecondsPath is required")
    if "Seconds" in raw:
        seconds = raw["Seconds"]
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 0:
            raise DefinitionError(f"{where}: Seconds must be a non-negative integer")
        return {"seconds": float(seconds)}
    return {"seconds_path": JsonPath.parse(raw["SecondsPath"], where=f"{where}.SecondsPath")}


def _fail(raw: dict, where: str) -> dict[str, Any]:
    for static, dynamic in (("Error", "ErrorPath"), ("Cause", "CausePath")):
        if static in raw and dynamic in raw:
            raise DefinitionError(f"{where}: {static} and {dynamic} are exclusive")
    paths = {key: JsonPath.parse(raw[key], where=f"{where}.{key}") if key in raw else None
             for key in ("ErrorPath", "CausePath")}
    return {"error": raw.get("Error"), "cause": raw.get("Cause"),
            "error_path": paths["ErrorPath"], "cause_path": paths["CausePath"]}


def _parallel(raw: dict, where: str) -> dict[str, Any]:
    branches = _list(raw, "Branches", where)
    if not branches:
        raise DefinitionError(f"{where}: Branches must be a non-empty list")
    return {"branches": tuple(_machine(branch, f"{where}.Branches[{i}]", {"StartAt", "States", "Comment"})
                              for i, branch in enumerate(branches))}


def _map(raw: dict, where: str) -> dict[str, Any]:
    if ("Iterator" in raw) == ("ItemProcessor" in raw):
        raise DefinitionError(f"{where}: exactly one of Iterator and ItemProcessor is required")
    if "ItemSelector" in raw and "Parameters" in raw:
        raise DefinitionError(f"{where}: ItemSelector and Parameters are exclusive")
    processor = raw.get("ItemProcessor") or raw["Iterator"]
    config = processor.get("ProcessorConfig", {}) if isinstance(processor, dict) else {}
    if config not in ({}, {"Mode": "INLINE"}):
        raise DefinitionError(f"{where}: only the INLINE Map processor is supported, got {config!r}")
    concurrency = raw.get("MaxConcurrency", 0)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 0:
        raise DefinitionError(f"{where}: MaxConcurrency must be a non-negative integer")
    selector = raw.get("ItemSelector", raw.get("Parameters"))
    return {
        "iterator": _machine(processor, f"{where}.{'ItemProcessor' if 'ItemProcessor' in raw else 'Iterator'}",
                             _PROCESSOR_FIELDS),
        "items_path": JsonPath.parse(raw.get("ItemsPath", "$"), where=f"{where}.ItemsPath"),
        "item_selector": Template(selector, where=f"{where}.ItemSelector") if selector is not None else None,
        "max_concurrency": concurrency,
    }


_SPECIFIC = {"Task": _task, "Pass": _pass, "Choice": _choice, "Wait": _wait, "Succeed": lambda raw, where: {},
             "Fail": _fail, "Parallel": _parallel, "Map": _map}
