"""Bounds on what a subscription may hold, so that storing, matching and notifying it stay cheap.

* A JMESPath expression (`jmespath_query`, each attachment's `expression`) is at most
  :data:`MAX_EXPRESSION_LENGTH` characters. Before it is parsed, its nesting — brackets, parentheses,
  braces, and the projections (`[*]`, `[]`, `[?…]`, `*`) and prefix operators (`!`, `&`) that make
  jmespath's recursive parser call itself — must stay within :data:`MAX_NESTING`, and so must the JSON of
  its literals (the lexer parses them with `json.loads`). After parsing, the syntax tree must be at most
  :data:`MAX_TREE_DEPTH` deep: `a.b.c…`, `x || y || …` and `p | q | …` parse in a loop but nest the tree,
  and the interpreter and :mod:`dss.subscriptions.matching` recurse once per level.
* A subscription, stored as JSON (secret included), is at most :data:`MAX_SUBSCRIPTION_SIZE` bytes.

Every check runs in linear time without recursion, so nothing here can raise RecursionError.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import jmespath
from jmespath.parser import ParsedResult

from dss.jsonlimits import UnsafeJSON, check_json

__all__ = ["compile_expression", "ExpressionTooComplex", "serialised_size", "MAX_EXPRESSION_LENGTH", "MAX_NESTING",
           "MAX_TREE_DEPTH", "MAX_SUBSCRIPTION_SIZE"]

MAX_EXPRESSION_LENGTH = 16 * 1024  # characters
MAX_NESTING = 64  # jmespath's parser takes up to 4 frames per level: ~256 of Python's 1,000
MAX_TREE_DEPTH = 100  # jmespath's interpreter takes 2 frames per level, dss.subscriptions.matching 4
MAX_SUBSCRIPTION_SIZE = 64 * 1024  # bytes of the stored record

# The tokens that matter for nesting, found the way jmespath's lexer finds them; strings and literals are
# matched whole so that brackets inside them do not count (a literal's JSON is checked on its own).
_TOKENS = re.compile(r"""
      '(?:[^'\\]|\\.)*'             # raw string
    | "(?:[^"\\]|\\.)*"             # quoted identifier
    | `(?:[^`\\]|\\.)*`             # JSON literal
    | \[\?|\[\]|[\[\](){}]          # filter, flatten, brackets
    | \|\||&&|==|!=|<=|>=           # operators that end a projection (two characters)
    | [|,:<>]                       # ... and one
    | [!&*]                         # prefix operators and wildcards, which nest
""", re.VERBOSE | re.DOTALL)
_OPENERS = frozenset({"(", "[", "{", "[?"})
_CLOSERS = frozenset({")", "]", "}"})
_CHAINING = frozenset({"!", "&", "*", "[]"})


class ExpressionTooComplex(ValueError):
    """An expression refused before (or instead of) parsing; the message says why, for the client."""


def compile_expression(text: str) -> ParsedResult:
    """`jmespath.compile(text)` for an expression within the bounds above; ExpressionTooComplex if it is
    not, a JMESPathError if it does not parse."""
    if len(text) > MAX_EXPRESSION_LENGTH:
        raise ExpressionTooComplex(f"is longer than {MAX_EXPRESSION_LENGTH} characters")
    if _nesting(text) > MAX_NESTING:
        raise ExpressionTooComplex(f"is nested more than {MAX_NESTING} levels deep")
    parsed = jmespath.compile(text)
    if _tree_depth(parsed.parsed) > MAX_TREE_DEPTH:
        raise ExpressionTooComplex(f"has more than {MAX_TREE_DEPTH} levels of sub-expressions")
    return parsed


def serialised_size(record: Mapping[str, Any]) -> int:
    return len(json.dumps(record).encode())


def _nesting(text: str) -> int:
    """An upper bound on how deep jmespath's parser recurses for `text`: one level per open bracket, plus one
    per projection or prefix operator since the last operator that ends them (`|`, `||`, `&&`, `,`, `:`, a
    comparison). Every `[…]` counts as a projection, which over-counts indexes (`a[0]`), safely."""
    enclosing: list[int] = []  # the chain count of each enclosing level, as it was at its opener
    outer = chain = deepest = 0  # outer == len(enclosing) + sum(enclosing)
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token[0] == "`":
            try:
                check_json(token[1:-1].replace("\\`", "`"), max_depth=MAX_NESTING)
            except UnsafeJSON as e:
                raise ExpressionTooComplex(f"has a literal that is refused: {e}") from None
        elif token in _OPENERS:
            enclosing.append(chain)
            outer += 1 + chain
            chain = 0
        elif token in _CLOSERS:
            if not enclosing:
                return deepest  # unbalanced: the parser refuses it before recursing further
            chain = enclosing.pop()
            outer -= 1 + chain
            chain += token == "]"
        elif token in _CHAINING:
            chain += 1
        elif token[0] not in "'\"":
            chain = 0
        deepest = max(deepest, outer + chain)
    return deepest


def _tree_depth(root: Mapping[str, Any]) -> int:
    """The depth of a parsed expression, walked without recursion (stopping once over the bound)."""
    deepest = 0
    stack: list[tuple[Mapping[str, Any], int]] = [(root, 1)]
    while stack and deepest <= MAX_TREE_DEPTH:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in node.get("children", ()) if isinstance(child, Mapping))
    return deepest
