"""Resolved queries evaluated against one analysed document, for percolation.

`compile_predicate(node)` turns a query into a plain Python function over an `IndexedDoc`, built once
per subscription. `anchors(node)` lists index keys of which a matching document must contain at least
one (a term, a token, a number, or just the presence of a field), so that a new document is tested only
against the subscriptions it could possibly match; `doc_keys(doc)` gives the keys a document holds.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Iterable, Iterator
from typing import Any

from dss.index.mapping import TEXT_SUFFIX, IndexedDoc
from dss.index.query_ir import (
    Bool,
    Exists,
    Ids,
    MatchAll,
    MatchNone,
    Node,
    Phrase,
    Prefix,
    Range,
    Terms,
    Wildcard,
    wildcard_regex,
)

__all__ = ["Predicate", "compile_predicate", "anchors", "doc_keys", "phrase_matches", "phrase_in", "field_terms"]

Predicate = Callable[[IndexedDoc], bool]
Key = tuple[Hashable, ...]
_EMPTY: frozenset[Any] = frozenset()
_NO_TOKENS: dict[str, list[int]] = {}


def field_terms(doc: IndexedDoc, space: str, name: str) -> Iterable[Any]:
    if space == "kw":
        return doc.keywords.get(name, _EMPTY)
    if space == "num":
        return doc.numbers.get(name, _EMPTY)
    return doc.tokens.get(name, _NO_TOKENS).keys()


def _in_range(node: Range) -> Callable[[Any], bool]:
    lower, upper = node.lower, node.upper

    def check(value: Any) -> bool:
        if lower is not None and (value < lower if node.include_lower else value <= lower):
            return False
        return upper is None or (value <= upper if node.include_upper else value < upper)
    return check


def _compile_range(node: Range) -> Predicate:
    check, space, name = _in_range(node), node.space, node.field
    if space == "num":
        def numbers_in_range(doc: IndexedDoc) -> bool:
            for number in doc.numbers.get(name, _EMPTY):
                if check(number):
                    return True
            return False
        return numbers_in_range
    return lambda doc: any(check(term) for term in field_terms(doc, space, name))


def _compile_terms(node: Terms) -> Predicate:
    space, name = node.space, node.field
    if node.case_insensitive:
        lowered = frozenset(str(value).lower() for value in node.values)
        return lambda doc: any(term.lower() in lowered for term in field_terms(doc, space, name))
    values = frozenset(node.values)
    if space == "kw":
        return lambda doc: not values.isdisjoint(doc.keywords.get(name, _EMPTY))
    if space == "num":
        return lambda doc: not values.isdisjoint(doc.numbers.get(name, _EMPTY))
    return lambda doc: any(value in doc.tokens.get(name, _NO_TOKENS) for value in values)


def _compile_leaf(node: Node) -> Predicate:
    if isinstance(node, Terms):
        return _compile_terms(node)
    if isinstance(node, Range):
        return _compile_range(node)
    if isinstance(node, Prefix):
        prefix = node.prefix.lower() if node.case_insensitive else node.prefix
        fold: Callable[[str], str] = str.lower if node.case_insensitive else str
        return lambda doc: any(fold(term).startswith(prefix) for term in field_terms(doc, node.space, node.field))
    if isinstance(node, Wildcard):
        regex = wildcard_regex(node.pattern, node.case_insensitive)
        return lambda doc: any(regex.match(term) for term in field_terms(doc, node.space, node.field))
    if isinstance(node, Phrase):
        return lambda doc: phrase_in(doc.tokens.get(node.field, _NO_TOKENS), node)
    if isinstance(node, Exists):
        names = node.names
        return lambda doc: any(name in doc.present for name in names)
    if isinstance(node, Ids):
        ids = frozenset(node.values)
        return lambda doc: doc.doc_id in ids
    raise TypeError(f"cannot evaluate {node!r}")


def compile_predicate(node: Node) -> Predicate:
    if isinstance(node, MatchAll):
        return lambda doc: True
    if isinstance(node, MatchNone):
        return lambda doc: False
    if isinstance(node, Bool):
        return _compile_bool(node)
    return _compile_leaf(node)


def _compile_bool(node: Bool) -> Predicate:
    must = [compile_predicate(child) for child in node.must]
    must_not = [compile_predicate(child) for child in node.must_not]
    should = [compile_predicate(child) for child in node.should]
    required = node.min_should

    def matches(doc: IndexedDoc) -> bool:
        if not all(check(doc) for check in must) or any(check(doc) for check in must_not):
            return False
        if required == 0:
            return True
        found = 0
        for check in should:
            if check(doc):
                found += 1
                if found >= required:
                    return True
        return False
    return matches


def phrase_in(tokens: dict[str, list[int]], node: Phrase) -> bool:
    """Does a field with these token positions have the phrase?"""
    lists = []
    for token in node.tokens:
        positions = tokens.get(token)
        if not positions:
            return False
        lists.append(positions)
    return phrase_matches(lists, node.slop)


def phrase_matches(position_lists: list[list[int]], slop: int) -> bool:
    """Do the tokens occur in order (slop 0) or within `slop` moves of it, as Lucene scores phrases?

    `position_lists[i]` are the positions of the phrase's i-th token. A match picks one position per
    token (distinct ones for repeated tokens); its length is the spread of `position - i`.
    """
    if slop == 0:
        later = [set(positions) for positions in position_lists[1:]]
        return any(all(start + offset in positions for offset, positions in enumerate(later, 1))
                   for start in position_lists[0])
    offsets = [sorted(p - index for p in positions) for index, positions in enumerate(position_lists)]
    return any(max(choice) - min(choice) <= slop and _distinct(choice)
               for choice in _choices(offsets, slop))


def _choices(offsets: list[list[int]], slop: int) -> Iterator[tuple[int, ...]]:
    """Combinations of offsets, pruned to windows no wider than `slop`."""
    for low in sorted(set(itertools.chain.from_iterable(offsets))):
        window = [[o for o in options if low <= o <= low + slop] for options in offsets]
        if all(window):
            yield from itertools.product(*window)


def _distinct(choice: tuple[int, ...]) -> bool:
    positions = [offset + index for index, offset in enumerate(choice)]
    return len(set(positions)) == len(positions)


# ------------------------------------------------------------------------------------ pre-filter

def _leaf_anchors(node: Node) -> frozenset[Key] | None:
    if isinstance(node, Terms):
        if node.case_insensitive:
            return frozenset({("present", node.field)})
        return frozenset((node.space, node.field, value) for value in node.values)
    if isinstance(node, Phrase):
        return frozenset({("tok", node.field, node.tokens[0])})
    if isinstance(node, (Range, Prefix, Wildcard)):
        name = node.field + TEXT_SUFFIX if node.space == "tok" else node.field
        return frozenset({("present", name)})
    if isinstance(node, Exists):
        return frozenset(("present", name) for name in node.names)
    if isinstance(node, (Ids, MatchNone)):
        return _EMPTY
    return None


def _rank(keys: frozenset[Key]) -> tuple[bool, int]:
    """Prefer anchors on terms over anchors on mere presence, then fewer keys."""
    return (all(key[0] == "present" for key in keys), len(keys))


def anchors(node: Node) -> frozenset[Key] | None:
    """Keys of which any matching document holds at least one; None when there is no such set."""
    if not isinstance(node, Bool):
        return _leaf_anchors(node)
    candidates = [keys for keys in map(anchors, node.must) if keys is not None]
    if node.min_should > 0:
        should = [anchors(child) for child in node.should]
        if all(keys is not None for keys in should):
            candidates.append(frozenset().union(*should))  # type: ignore[arg-type]
    return min(candidates, key=_rank) if candidates else None


def doc_keys(doc: IndexedDoc) -> Iterator[Key]:
    for name, values in doc.keywords.items():
        for value in values:
            yield ("kw", name, value)
    for name, numbers in doc.numbers.items():
        for number in numbers:
            yield ("num", name, number)
    for name, tokens in doc.tokens.items():
        for token in tokens:
            yield ("tok", name, token)
    for name in doc.present:
        yield ("present", name)
