"""The resolved form of a query: what the embedded engine evaluates, in SQL or against one document.

The Elasticsearch DSL is translated into these nodes with every field already resolved against the
mapping and every query value already analysed or parsed (`dss.index.query`), so that the evaluators
are simple and agree. Terms live in one of three spaces: `kw` (keywords, normalised where the field
is), `tok` (tokens of `.text` sub-fields, addressed by their keyword field) and `num` (numbers, dates
as epoch milliseconds, booleans as 0/1).
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dss.index.analysis import float32

__all__ = [
    "Node", "MatchAll", "MatchNone", "Terms", "Range", "Prefix", "Wildcard", "Phrase", "Exists", "Ids", "Bool",
    "MATCH_ALL", "MATCH_NONE", "all_of", "any_of", "negate", "wildcard_regex", "literal_prefix",
    "minimum_should_match",
]


class Node:
    __slots__ = ()


@dataclass(frozen=True)
class MatchAll(Node):
    pass


@dataclass(frozen=True)
class MatchNone(Node):
    pass


MATCH_ALL = MatchAll()
MATCH_NONE = MatchNone()


@dataclass(frozen=True)
class Terms(Node):
    """The field holds one of `values` (compared case-insensitively when asked)."""
    space: str
    field: str
    values: tuple[Any, ...]
    case_insensitive: bool = False


@dataclass(frozen=True)
class Range(Node):
    """The field holds a term between the bounds (None: unbounded); strings compare as UTF-8 bytes."""
    space: str
    field: str
    lower: Any
    upper: Any
    include_lower: bool = True
    include_upper: bool = True


@dataclass(frozen=True)
class Prefix(Node):
    space: str
    field: str
    prefix: str
    case_insensitive: bool = False


@dataclass(frozen=True)
class Wildcard(Node):
    """Lucene wildcard over whole terms: `*` any run, `?` one character, `\\` escapes."""
    space: str
    field: str
    pattern: str
    case_insensitive: bool = False


@dataclass(frozen=True)
class Phrase(Node):
    """Tokens of a `.text` field at consecutive positions, or within `slop` moves of them."""
    field: str
    tokens: tuple[str, ...]
    slop: int = 0


@dataclass(frozen=True)
class Exists(Node):
    """At least one of the named fields (leaf, `.text` or object) has an indexed value."""
    names: tuple[str, ...]


@dataclass(frozen=True)
class Ids(Node):
    values: tuple[str, ...]


@dataclass(frozen=True)
class Bool(Node):
    """All of `must`, none of `must_not`, and at least `min_should` of `should`."""
    must: tuple[Node, ...] = ()
    should: tuple[Node, ...] = ()
    must_not: tuple[Node, ...] = ()
    min_should: int = 0


def all_of(nodes: Iterable[Node]) -> Node:
    parts = [node for node in nodes if node is not MATCH_ALL]
    if any(node is MATCH_NONE for node in parts):
        return MATCH_NONE
    if not parts:
        return MATCH_ALL
    return parts[0] if len(parts) == 1 else Bool(must=tuple(parts))


def any_of(nodes: Iterable[Node]) -> Node:
    parts = _merge_terms(node for node in nodes if node is not MATCH_NONE)
    if any(node is MATCH_ALL for node in parts):
        return MATCH_ALL
    if not parts:
        return MATCH_NONE
    return parts[0] if len(parts) == 1 else Bool(should=tuple(parts), min_should=1)


def negate(node: Node) -> Node:
    if node is MATCH_ALL:
        return MATCH_NONE
    if node is MATCH_NONE:
        return MATCH_ALL
    return Bool(must_not=(node,))


def _merge_terms(nodes: Iterable[Node]) -> list[Node]:
    """Alternatives of terms in the same field become one Terms node (one lookup instead of many)."""
    merged: list[Node] = []
    by_field: dict[tuple[str, str, bool], int] = {}
    for node in nodes:
        if isinstance(node, Terms):
            key = (node.space, node.field, node.case_insensitive)
            if key in by_field:
                earlier = merged[by_field[key]]
                assert isinstance(earlier, Terms)
                values = earlier.values + tuple(v for v in node.values if v not in earlier.values)
                merged[by_field[key]] = Terms(node.space, node.field, values, node.case_insensitive)
                continue
            by_field[key] = len(merged)
        merged.append(node)
    return merged


_WILDCARD_PART = re.compile(r"\\(.)|(\*)|(\?)|(.)", re.DOTALL)


def wildcard_regex(pattern: str, case_insensitive: bool = False) -> re.Pattern[str]:
    parts = []
    for escaped, star, question, char in _WILDCARD_PART.findall(pattern):
        if star:
            parts.append(".*")
        elif question:
            parts.append(".")
        else:
            parts.append(re.escape(escaped or char))
    flags = re.DOTALL | (re.IGNORECASE if case_insensitive else 0)
    return re.compile("".join(parts) + r"\Z", flags)


def literal_prefix(pattern: str) -> str:
    """The fixed text a wildcard pattern starts with."""
    prefix = []
    for escaped, star, question, char in _WILDCARD_PART.findall(pattern):
        if star or question:
            break
        prefix.append(escaped or char)
    return "".join(prefix)


def minimum_should_match(optional: int, spec: Any) -> int:
    """Elasticsearch's reading of `minimum_should_match` for `optional` clauses (ints, %, `3<90%`)."""
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise ValueError(f"minimum_should_match must be a number or a string, got {spec!r}")
    text = re.sub(r"\s*<\s*", "<", str(spec).strip())
    if "<" in text:
        result = optional
        for condition in text.split():
            bound, _, then = condition.partition("<")
            if optional <= int(bound):
                return result
            result = minimum_should_match(optional, then)
        return result
    if text.endswith("%"):
        # Java computes this in single precision: (clauses * percent) * (1 / 100f)
        calc = float32(float32(optional * int(text[:-1])) * float32(1 / 100))
        result = optional + int(calc) if calc < 0 else int(calc)
    else:
        calc_int = int(text)
        result = optional + calc_int if calc_int < 0 else calc_int
    return max(result, 0)
