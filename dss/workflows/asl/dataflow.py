"""How data flows through a state: InputPath → Parameters → (work) → ResultSelector → ResultPath → OutputPath.

A `Template` is a compiled payload template (Parameters, ItemSelector, ResultSelector): keys ending in
`.$` take the value a JSONPath names, in the data or (`$$…`) in the context object; every other value
is copied as it is. Intrinsic functions (`States.Format(…)` and friends) are refused at load time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dss.workflows.asl.jsonpath import JsonPath
from dss.workflows.errors import DefinitionError

__all__ = ["Template", "Paths", "ROOT"]

ROOT = JsonPath.parse("$")


class Template:
    def __init__(self, raw: Any, *, where: str) -> None:
        if not isinstance(raw, dict):
            raise DefinitionError(f"{where}: a payload template must be a JSON object")
        self.raw = raw
        self._compiled = self._compile(raw, where)

    @classmethod
    def _compile(cls, raw: Any, where: str) -> Any:
        if isinstance(raw, list):
            return [cls._compile(item, where) for item in raw]
        if not isinstance(raw, dict):
            return raw
        compiled: dict[str, Any] = {}
        for key, value in raw.items():
            if key.endswith(".$"):
                if isinstance(value, str) and value.startswith("States."):
                    raise DefinitionError(f"{where}: intrinsic functions are not supported ({key!r}: {value!r})")
                compiled[key] = JsonPath.parse(value, where=f"{where}.{key}")
            else:
                compiled[key] = cls._compile(value, where)
        return compiled

    def render(self, data: Any, context: Any) -> Any:
        return self._render(self._compiled, data, context)

    @classmethod
    def _render(cls, node: Any, data: Any, context: Any) -> Any:
        if isinstance(node, list):
            return [cls._render(item, data, context) for item in node]
        if not isinstance(node, dict):
            return node
        rendered: dict[str, Any] = {}
        for key, value in node.items():
            if isinstance(value, JsonPath):
                rendered[key[:-2]] = value.get(data, context)
            else:
                rendered[key] = cls._render(value, data, context)
        return rendered


def _optional_path(raw: dict, field: str, where: str) -> JsonPath | None:
    """A path field: absent → `$`, JSON null → None (meaning "no data"/"discard")."""
    if field not in raw:
        return ROOT
    if raw[field] is None:
        return None
    return JsonPath.parse(raw[field], where=f"{where}.{field}")


@dataclass(frozen=True)
class Paths:
    """The path and template fields of one state (absent ones keep their neutral defaults)."""
    input_path: JsonPath | None = ROOT
    output_path: JsonPath | None = ROOT
    result_path: JsonPath | None = ROOT
    parameters: Template | None = None
    result_selector: Template | None = None

    @classmethod
    def parse(cls, raw: dict, where: str) -> Paths:
        result_path = _optional_path(raw, "ResultPath", where)
        if result_path is not None:
            result_path.check_reference(where=f"{where}.ResultPath")
        return cls(
            input_path=_optional_path(raw, "InputPath", where),
            output_path=_optional_path(raw, "OutputPath", where),
            result_path=result_path,
            parameters=Template(raw["Parameters"], where=f"{where}.Parameters") if "Parameters" in raw else None,
            result_selector=(Template(raw["ResultSelector"], where=f"{where}.ResultSelector")
                             if "ResultSelector" in raw else None),
        )

    def effective_input(self, raw_input: Any, context: Any) -> Any:
        """InputPath, then Parameters."""
        data = {} if self.input_path is None else self.input_path.get(raw_input, context)
        return self.parameters.render(data, context) if self.parameters else data

    def output(self, raw_input: Any, result: Any, context: Any) -> Any:
        """ResultSelector, ResultPath (into the state's raw input), then OutputPath."""
        if self.result_selector is not None:
            result = self.result_selector.render(result, context)
        combined = raw_input if self.result_path is None else self.result_path.put(raw_input, result)
        return self.select_output(combined, context)

    def select_output(self, data: Any, context: Any) -> Any:
        return {} if self.output_path is None else self.output_path.get(data, context)
