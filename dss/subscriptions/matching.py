"""Matching one document against many JMESPath expressions at once, fast.

`jmespath.search` walks each expression's syntax tree with a visitor: about 10 µs for a simple
comparison, so 10,000 subscriptions would cost ~100 ms per bundle. An :class:`ExpressionSet` instead

1. parses every expression once and *interns* the trees, so equal sub-expressions in different
   subscriptions (typically the path in ``files.project_json[0].project_core.project_short_name == 'x'``)
   become one shared node;
2. compiles each node once into a Python closure, which is several times cheaper to call than the visitor;
3. memoises shared nodes per document, so a path that 10,000 subscriptions compare against is walked once.

Semantics are jmespath's own: the closures reproduce `jmespath.visitor.TreeInterpreter` node by node
(reusing its comparison helpers and its function table), and any node type not compiled here is handed
to the reference interpreter. The tests compare the results with `jmespath.search` on a corpus.
Evaluation is pure, which is what makes memoising sound.
"""
from __future__ import annotations

import json
import logging
import numbers
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, cast

import jmespath
from jmespath import functions as jmespath_functions

# The interpreter's private comparison helpers too, so that equality and ordering are exactly its own
# (0/1 versus booleans, which types order). Private API: an upgrade that drops them fails loudly here.
from jmespath.visitor import (  # type: ignore[attr-defined]
    TreeInterpreter,
    _equals,
    _is_actual_number,
    _is_comparable,
)

__all__ = ["ExpressionSet", "is_truthy"]

logger = logging.getLogger(__name__)

# (value, memo) -> result; the memo holds, per document, the results of shared root-level nodes.
Compiled = Callable[[Any, dict], Any]
Node = dict[str, Any]

# Nodes cheaper to evaluate than to look up in the memo.
_NOT_MEMOISED = frozenset({"field", "literal", "current", "identity", "index", "slice", "key_val_pair", "expref"})
_PLAIN_COMPARABLE = (int, float, str)  # exact types: bool is not int here, so True stays incomparable
_ORDERING = {"lt": lambda x, y: x < y, "gt": lambda x, y: x > y, "lte": lambda x, y: x <= y,
             "gte": lambda x, y: x >= y}


def is_truthy(value: Any) -> bool:
    """JMESPath truth: false, null, "", [] and {} are false; everything else (0 included) is true."""
    return not (value == "" or value == [] or value == {} or value is None or value is False)


def _value_identity(value: Any) -> Hashable:
    """A key equal only for interchangeable node values: the type is part of it, since 1 == True == 1.0."""
    if value is None or type(value) in (str, int, bool):
        return type(value).__name__, value
    return "json", json.dumps(value, sort_keys=True, default=repr)


class _Interner:
    """Hash-consing: structurally equal (sub)trees become one node object, and each node's uses are counted."""

    def __init__(self) -> None:
        self._nodes: dict[Hashable, Node] = {}
        self.uses: dict[int, int] = {}

    def intern(self, node: Node) -> Node:
        # New dicts throughout: the parsed trees come from jmespath's parser cache and must stay untouched.
        children = [self.intern(c) if isinstance(c, dict) else c for c in node.get("children", [])]
        key = (node["type"], _value_identity(node.get("value")),
               tuple(id(c) if isinstance(c, dict) else repr(c) for c in children))
        canonical = self._nodes.get(key)
        if canonical is None:
            canonical = self._nodes[key] = {**node, "children": children}
        self.uses[id(canonical)] = self.uses.get(id(canonical), 0) + 1
        return canonical


class _Compiler:
    """Closures for interned nodes, built once per (node, context).

    A node is compiled "at the root" when it is evaluated against the document itself (the operands of
    a top-level comparison, the start of a path, …) rather than against a value derived from it (the
    right side of a path or pipe, a projected element). Only such nodes are memoised, under their node
    id alone, because only their input is the same across expressions; shared nodes deeper inside see a
    different value every time, where a memo would cost more than it saves."""

    def __init__(self, uses: Mapping[int, int]) -> None:
        self._uses = uses
        self._compiled: dict[tuple[int, bool], Compiled] = {}
        self._interpreter = TreeInterpreter()
        self._functions = jmespath_functions.Functions()

    def compile(self, node: Node, at_root: bool) -> Compiled:
        found = self._compiled.get((id(node), at_root))
        if found is None:
            build = getattr(self, f"_{node['type']}", None)
            found = build(node, at_root) if build is not None else self._fallback(node)
            if at_root and self._uses.get(id(node), 0) > 1 and node["type"] not in _NOT_MEMOISED:
                found = _memoised(id(node), found)
            self._compiled[(id(node), at_root)] = found
        return found

    def _all(self, node: Node, at_root: bool) -> list[Compiled]:
        """Children that see the same input as ``node``."""
        return [self.compile(c, at_root) for c in node["children"]]

    def _head_then_inner(self, node: Node, at_root: bool) -> list[Compiled]:
        """The first child sees the node's input; the others see values derived from it."""
        head, *rest = node["children"]
        return [self.compile(head, at_root), *(self.compile(c, False) for c in rest)]

    def _fallback(self, node: Node) -> Compiled:
        interpreter = self._interpreter
        tree = cast(Any, node)  # jmespath's own node type: the same dict shape
        return lambda v, m: interpreter.visit(tree, v)

    # --- one method per node type, mirroring TreeInterpreter.visit_<type> ----------------------------
    def _field(self, node: Node, at_root: bool) -> Compiled:
        name = node["value"]

        def field(v: Any, m: dict) -> Any:
            try:
                return v.get(name)
            except AttributeError:
                return None
        return field

    def _subexpression(self, node: Node, at_root: bool) -> Compiled:
        return _chain(self._head_then_inner(node, at_root))

    _index_expression = _subexpression
    _pipe = _subexpression

    def _index(self, node: Node, at_root: bool) -> Compiled:
        position = node["value"]

        def index(v: Any, m: dict) -> Any:
            if not isinstance(v, list):
                return None
            try:
                return v[position]
            except IndexError:
                return None
        return index

    def _literal(self, node: Node, at_root: bool) -> Compiled:
        value = node["value"]
        return lambda v, m: value

    def _current(self, node: Node, at_root: bool) -> Compiled:
        return lambda v, m: v

    _identity = _current

    def _comparator(self, node: Node, at_root: bool) -> Compiled:
        left, right = self._all(node, at_root)
        op = node["value"]
        if op in ("eq", "ne"):
            return _equality(left, right, negate=op == "ne")
        compare = _ORDERING[op]

        def ordering(v: Any, m: dict) -> Any:
            x, y = left(v, m), right(v, m)
            # Ordering only applies to numbers and strings; anything else compares to null.
            if not ((type(x) in _PLAIN_COMPARABLE or _is_comparable(x))
                    and (type(y) in _PLAIN_COMPARABLE or _is_comparable(y))):
                return None
            return compare(x, y)
        return ordering

    def _and_expression(self, node: Node, at_root: bool) -> Compiled:
        left, right = self._all(node, at_root)

        def and_(v: Any, m: dict) -> Any:
            matched = left(v, m)
            return right(v, m) if is_truthy(matched) else matched
        return and_

    def _or_expression(self, node: Node, at_root: bool) -> Compiled:
        left, right = self._all(node, at_root)

        def or_(v: Any, m: dict) -> Any:
            matched = left(v, m)
            return matched if is_truthy(matched) else right(v, m)
        return or_

    def _not_expression(self, node: Node, at_root: bool) -> Compiled:
        (child,) = self._all(node, at_root)

        def not_(v: Any, m: dict) -> Any:
            result = child(v, m)
            if _is_actual_number(result) and result == 0:
                return False  # !0 is false in JMESPath: 0 is not a false value
            return not result
        return not_

    def _projection(self, node: Node, at_root: bool) -> Compiled:
        base, each = self._head_then_inner(node, at_root)

        def projection(v: Any, m: dict) -> Any:
            items = base(v, m)
            if not isinstance(items, list):
                return None
            return [r for r in (each(item, m) for item in items) if r is not None]
        return projection

    def _value_projection(self, node: Node, at_root: bool) -> Compiled:
        base, each = self._head_then_inner(node, at_root)

        def value_projection(v: Any, m: dict) -> Any:
            try:
                items = base(v, m).values()
            except AttributeError:
                return None
            return [r for r in (each(item, m) for item in items) if r is not None]
        return value_projection

    def _filter_projection(self, node: Node, at_root: bool) -> Compiled:
        base, each, condition = self._head_then_inner(node, at_root)

        def filter_projection(v: Any, m: dict) -> Any:
            items = base(v, m)
            if not isinstance(items, list):
                return None
            collected = []
            for item in items:
                if is_truthy(condition(item, m)):
                    result = each(item, m)
                    if result is not None:
                        collected.append(result)
            return collected
        return filter_projection

    def _flatten(self, node: Node, at_root: bool) -> Compiled:
        (child,) = self._all(node, at_root)

        def flatten(v: Any, m: dict) -> Any:
            items = child(v, m)
            if not isinstance(items, list):
                return None
            merged: list[Any] = []
            for item in items:
                if isinstance(item, list):
                    merged.extend(item)
                else:
                    merged.append(item)
            return merged
        return flatten

    def _multi_select_list(self, node: Node, at_root: bool) -> Compiled:
        children = self._all(node, at_root)
        return lambda v, m: None if v is None else [c(v, m) for c in children]

    def _multi_select_dict(self, node: Node, at_root: bool) -> Compiled:
        pairs = [(c["value"], self.compile(c["children"][0], at_root)) for c in node["children"]]
        return lambda v, m: None if v is None else {k: c(v, m) for k, c in pairs}

    def _function_expression(self, node: Node, at_root: bool) -> Compiled:
        # Expression references (sort_by(@, &x)) are compiled by the fallback: the interpreter's own.
        arguments = self._all(node, at_root)
        name = node["value"]
        call = self._functions.call_function
        return lambda v, m: call(name, [a(v, m) for a in arguments])


def _equality(left: Compiled, right: Compiled, *, negate: bool) -> Compiled:
    def eq(v: Any, m: dict) -> Any:
        x, y = left(v, m), right(v, m)
        # Strings are never the 0/1-versus-boolean special case, and are by far the commonest operands.
        equal = x == y if type(x) is str or type(y) is str else _equals(x, y)
        return bool(equal) is not negate
    return eq


def _chain(steps: list[Compiled]) -> Compiled:
    if len(steps) == 2:
        first, second = steps
        return lambda v, m: second(first(v, m), m)

    def chain(v: Any, m: dict) -> Any:
        for step in steps:
            v = step(v, m)
        return v
    return chain


def _memoised(node_id: int, compiled: Compiled) -> Compiled:
    # Only used at the root, where the input is always the document being matched.
    def memoised(v: Any, m: dict) -> Any:
        try:
            return m[node_id]
        except KeyError:
            result = m[node_id] = compiled(v, m)
            return result
    return memoised


def _scalar_key(value: Any) -> Hashable | None:
    """A dict key under which JMESPath-equal scalars meet (None for values no scalar literal equals).

    The tag keeps booleans apart from 0 and 1, as JMESPath does; numbers share one tag because Python
    hashes numerically equal numbers alike (1 == 1.0). NaN equals nothing, so it gets no key."""
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, str):
        return ("str", value)
    if isinstance(value, numbers.Number):
        return None if value != value else ("number", value)
    return None


def _guard(node: Node) -> tuple[Node, Hashable] | None:
    """A `path == literal` test that must hold for ``node`` to be true, if one is easy to see.

    ``a && b`` is true only if both are, so a guard of either side guards the whole; a failing guard (or
    one that raises) means the expression is false or raises, i.e. does not match."""
    if node["type"] == "and_expression":
        return _guard(node["children"][0]) or _guard(node["children"][1])
    if node["type"] == "comparator" and node["value"] == "eq":
        first, second = node["children"]
        for path, literal in ((first, second), (second, first)):
            if literal["type"] == "literal" and path["type"] != "literal":
                key = _scalar_key(literal["value"])
                if key is not None:
                    return path, key
    return None


class _Root:
    __slots__ = ("text", "compiled", "keys", "is_guard")

    def __init__(self, text: str, compiled: Compiled, keys: list[Hashable], is_guard: bool) -> None:
        self.text, self.compiled, self.keys, self.is_guard = text, compiled, keys, is_guard


class ExpressionSet:
    """A fixed set of JMESPath expressions, each naming the keys (subscription ids) that use it.

    Build it once per set of subscriptions (it is immutable and thread-safe), then call :meth:`matching`
    for each document. An expression that raises while evaluating a document does not match it.

    Expressions guarded by a `path == 'literal'` test (alone or in a chain of ``&&``) are filed under
    their path and literal: per document each such path is evaluated once and only the expressions
    filed under its value are looked at, so 10,000 subscriptions that each pick one project cost one
    dictionary lookup. ``parsed`` is a cache of parsed trees by text that a caller may keep between
    builds, since parsing is the slowest part of building.
    """

    def __init__(self, expressions: Iterable[tuple[Hashable, str]], *,
                 parsed: dict[str, Node] | None = None) -> None:
        by_text: dict[str, list[Hashable]] = {}
        for key, text in expressions:
            by_text.setdefault(text, []).append(key)
        cache = parsed if parsed is not None else {}
        interner = _Interner()
        trees = []
        for text, keys in by_text.items():
            tree = cache.get(text)
            if tree is None:
                tree = cache[text] = cast(Node, jmespath.compile(text).parsed)
            trees.append((text, interner.intern(tree), keys))
        compiler = _Compiler(interner.uses)
        self._unguarded: list[_Root] = []
        self._guarded: dict[int, tuple[Compiled, dict[Hashable, list[_Root]]]] = {}
        for text, tree, keys in trees:
            self._file(compiler, text, tree, keys)
        self._size = sum(len(keys) for keys in by_text.values())

    def _file(self, compiler: _Compiler, text: str, tree: Node, keys: list[Hashable]) -> None:
        guard = _guard(tree)
        if guard is None:
            self._unguarded.append(_Root(text, compiler.compile(tree, True), keys, False))
            return
        path, literal = guard
        is_guard = tree["type"] == "comparator"  # the whole expression is the guard itself
        root = _Root(text, compiler.compile(tree, True), keys, is_guard)
        _, buckets = self._guarded.setdefault(id(path), (compiler.compile(path, True), {}))
        buckets.setdefault(literal, []).append(root)

    def __len__(self) -> int:
        return self._size

    def matching(self, document: Any) -> list[Hashable]:
        memo: dict = {}
        matched: list[Hashable] = []
        for path, buckets in self._guarded.values():
            try:
                key = _scalar_key(path(document, memo))
            except Exception:  # noqa: BLE001 - the guarded expressions raise or are false: no match
                continue
            for root in buckets.get(key, ()) if key is not None else ():
                if root.is_guard or self._true(root, document, memo):
                    matched.extend(root.keys)
        for root in self._unguarded:
            if self._true(root, document, memo):
                matched.extend(root.keys)
        return matched

    @staticmethod
    def _true(root: _Root, document: Any, memo: dict) -> bool:
        try:
            return is_truthy(root.compiled(document, memo))
        except Exception as e:  # noqa: BLE001 - one broken expression must not stop the others
            logger.debug("JMESPath %r failed on a document, no match: %s", root.text, e)
            return False
