"""Choice rules: the comparison operators the definitions use, plus And/Or/Not.

A comparison whose variable holds a value of the wrong type is false, as in AWS (a string is never
`NumericEquals` anything); a variable that names nothing is a `States.Runtime` error except under
`IsPresent`. Operators not listed in `COMPARATORS` are refused when a definition loads.
"""
from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dss.workflows.asl.jsonpath import JsonPath
from dss.workflows.errors import DefinitionError

__all__ = ["Rule", "parse_rule", "COMPARATORS"]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numeric(compare: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    return lambda value, operand: _number(value) and compare(value, operand)


# operator name → (operand check, test(value, operand))
COMPARATORS: dict[str, tuple[Callable[[Any], bool], Callable[[Any, Any], bool]]] = {
    "StringEquals": (lambda x: isinstance(x, str), lambda v, o: isinstance(v, str) and v == o),
    "BooleanEquals": (lambda x: isinstance(x, bool), lambda v, o: isinstance(v, bool) and v == o),
    "NumericEquals": (_number, _numeric(operator.eq)),
    "NumericLessThan": (_number, _numeric(operator.lt)),
    "NumericGreaterThan": (_number, _numeric(operator.gt)),
    "NumericLessThanEquals": (_number, _numeric(operator.le)),
    "NumericGreaterThanEquals": (_number, _numeric(operator.ge)),
    "IsNull": (lambda x: isinstance(x, bool), lambda v, o: (v is None) == o),
    "IsPresent": (lambda x: isinstance(x, bool), lambda v, o: True),  # handled in Rule.matches
}


@dataclass(frozen=True)
class Rule:
    kind: str  # "And" | "Or" | "Not" | a comparator name
    variable: JsonPath | None = None
    operand: Any = None
    children: tuple[Rule, ...] = ()

    def matches(self, data: Any, context: Any) -> bool:
        if self.kind == "And":
            return all(child.matches(data, context) for child in self.children)
        if self.kind == "Or":
            return any(child.matches(data, context) for child in self.children)
        if self.kind == "Not":
            return not self.children[0].matches(data, context)
        assert self.variable is not None
        if self.kind == "IsPresent":
            return self.variable.exists(data, context) == self.operand
        return COMPARATORS[self.kind][1](self.variable.get(data, context), self.operand)


def parse_rule(raw: Any, *, where: str, top: bool) -> tuple[Rule, str | None]:
    """A rule and, for a top-level rule, the state it leads to."""
    if not isinstance(raw, dict):
        raise DefinitionError(f"{where}: a choice rule must be an object")
    fields = set(raw) - {"Comment"}
    target = raw.get("Next")
    if top != ("Next" in raw) or (top and not isinstance(target, str)):
        raise DefinitionError(f"{where}: {'a top-level' if top else 'a nested'} choice rule "
                              f"{'needs' if top else 'may not have'} a Next")
    fields.discard("Next")
    for combinator in ("And", "Or", "Not"):
        if combinator in fields:
            if fields != {combinator}:
                raise DefinitionError(f"{where}: {combinator} may not be combined with {sorted(fields - {combinator})}")
            operands = [raw[combinator]] if combinator == "Not" else raw[combinator]
            if not isinstance(operands, list) or not operands:
                raise DefinitionError(f"{where}.{combinator}: expected a non-empty list of rules")
            children = tuple(parse_rule(child, where=f"{where}.{combinator}[{i}]", top=False)[0]
                             for i, child in enumerate(operands))
            return Rule(combinator, children=children), target
    operators = fields - {"Variable"}
    if "Variable" not in fields or len(operators) != 1:
        raise DefinitionError(f"{where}: a comparison needs a Variable and exactly one operator, got {sorted(fields)}")
    (name,) = operators
    if name not in COMPARATORS:
        raise DefinitionError(f"{where}: unsupported choice operator {name!r} "
                              f"(supported: {', '.join(sorted(COMPARATORS))}, And, Or, Not)")
    if not COMPARATORS[name][0](raw[name]):
        raise DefinitionError(f"{where}: {name} has an operand of the wrong type: {raw[name]!r}")
    return Rule(name, JsonPath.parse(raw["Variable"], where=f"{where}.Variable"), raw[name]), target
