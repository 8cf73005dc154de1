"""The JSONPath subset the States language needs: reference paths, nothing more.

`$` is the state's input and `$$` the context object; steps are `.name`, `['name']` and `[index]`.
Wildcards, slices, filters and recursive descent (`*`, `:`, `?()`, `..`) are refused when a definition
loads, so a path either names exactly one value or fails at run time with `States.Runtime`.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from typing import Any

from dss.workflows.errors import RUNTIME, DefinitionError, StatesError

__all__ = ["JsonPath", "PathNotFound"]

_STEP = re.compile(r"\.([^.\[\]'\"*?@:$ ]+)|\['([^'\[\]]*)'\]|\[(\d+)\]")


class PathNotFound(StatesError):
    def __init__(self, path: str, data_kind: str) -> None:
        super().__init__(RUNTIME, f"the JSONPath {path!r} could not be found in the {data_kind}")


@dataclass(frozen=True)
class JsonPath:
    text: str
    context: bool  # `$$…`: read from the context object, not the state's data
    steps: tuple[str | int, ...]

    @classmethod
    def parse(cls, text: Any, *, where: str = "") -> JsonPath:
        if not isinstance(text, str) or not text.startswith("$"):
            raise DefinitionError(f"{where}: {text!r} is not a JSONPath (it must start with '$')")
        context = text.startswith("$$")
        rest = text[2:] if context else text[1:]
        steps: list[str | int] = []
        position = 0
        while position < len(rest):
            match = _STEP.match(rest, position)
            if not match:
                raise DefinitionError(f"{where}: unsupported JSONPath {text!r}: only $, $$, .name, ['name'] "
                                      "and [index] steps are supported")
            name, quoted, index = match.groups()
            steps.append(int(index) if index is not None else (name if name is not None else quoted))
            position = match.end()
        return cls(text, context, tuple(steps))

    def get(self, data: Any, context: Any = None) -> Any:
        """The value the path names; `States.Runtime` if it names nothing."""
        value = context if self.context else data
        for step in self.steps:
            if isinstance(step, int) and isinstance(value, list) and step < len(value):
                value = value[step]
            elif isinstance(step, str) and isinstance(value, dict) and step in value:
                value = value[step]
            else:
                raise PathNotFound(self.text, "context object" if self.context else "input")
        return value

    def exists(self, data: Any, context: Any = None) -> bool:
        try:
            self.get(data, context)
        except PathNotFound:
            return False
        return True

    def put(self, data: Any, value: Any) -> Any:
        """A copy of `data` with `value` placed at the path (creating objects on the way), as ResultPath does."""
        if not self.steps:
            return value
        if not isinstance(data, dict):
            raise StatesError(RUNTIME, f"ResultPath {self.text!r} needs an object input, got {type(data).__name__}")
        result = copy.copy(data)
        node = result
        for step in self.steps[:-1]:
            child = node.get(step)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise StatesError(RUNTIME, f"ResultPath {self.text!r}: {step!r} is not an object")
            node[step] = child = copy.copy(child)  # type: ignore[index]
            node = child
        node[self.steps[-1]] = value  # type: ignore[index]
        return result

    def check_reference(self, *, where: str) -> JsonPath:
        """ResultPath and similar write targets: field names into the data, no indices, no context."""
        if self.context or any(isinstance(step, int) for step in self.steps):
            raise DefinitionError(f"{where}: {self.text!r} must name fields of the state's data ($.a.b)")
        return self
