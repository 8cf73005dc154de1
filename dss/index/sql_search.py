"""Resolved queries evaluated over the embedded engine's SQLite tables.

All index entries live in one `postings` table clustered on `(field, value, doc)`: keywords and
numbers under their field's id, tokens under the id of the `.text` sub-field (except tokens equal to
a keyword value of the document, found in that keyword's row, which then has positions), and an empty-string
marker under each object field a document has values in. Each leaf is one indexed range scan
returning document row ids; boolean structure is set algebra in Python. A set may be held as
its complement (`negated`), so that `must_not` and `match_all` never enumerate the whole index.
Leaves that need per-term logic (wildcards, case-insensitive terms) first list the field's distinct
terms that qualify, then fetch their documents.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dss.index.mapping import EMPTY_TEXT_SUFFIX, TEXT_SUFFIX
from dss.index.matcher import phrase_matches
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
    literal_prefix,
    wildcard_regex,
)

__all__ = ["DocSet", "SqlEvaluator", "prefix_bounds", "encode_positions", "decode_positions"]

_CHUNK = 500
_ESTIMATE_CAP = 20000  # counting stops here: beyond it, the order of clauses hardly matters
_WITHIN_LIMIT = 20000  # candidates are looked up one by one only while they are this few


@dataclass(frozen=True)
class DocSet:
    """Row ids of matching documents, or (negated) of the documents that do not match."""
    ids: frozenset[int]
    negated: bool = False

    def __and__(self, other: DocSet) -> DocSet:
        if not self.negated and not other.negated:
            return DocSet(self.ids & other.ids)
        if not self.negated:
            return DocSet(self.ids - other.ids)
        if not other.negated:
            return DocSet(other.ids - self.ids)
        return DocSet(self.ids | other.ids, True)

    def __or__(self, other: DocSet) -> DocSet:
        if not self.negated and not other.negated:
            return DocSet(self.ids | other.ids)
        if self.negated and other.negated:
            return DocSet(self.ids & other.ids, True)
        positive, negative = (self, other) if other.negated else (other, self)
        return DocSet(negative.ids - positive.ids, True)

    def __invert__(self) -> DocSet:
        return DocSet(self.ids, not self.negated)


ALL = DocSet(frozenset(), True)
NONE = DocSet(frozenset())


def encode_positions(positions: list[int]) -> int | str:
    """Token positions as stored: most tokens occur once in a field, so a bare integer is common."""
    return positions[0] if len(positions) == 1 else json.dumps(positions)


def decode_positions(stored: int | str) -> list[int]:
    return [stored] if isinstance(stored, int) else json.loads(stored)


def prefix_bounds(prefix: str) -> tuple[str, str | None]:
    """[low, high) holding every string that starts with `prefix` (high None: unbounded)."""
    stem = prefix
    while stem:
        last = ord(stem[-1])
        if last < 0x10FFFF and not 0xD7FF <= last < 0xDFFF:
            return prefix, stem[:-1] + chr(last + 1)
        stem = stem[:-1]
    return prefix, None


Where = tuple[str, list[Any]]  # an SQL condition on postings and its parameters
Within = frozenset[int] | None  # when given, a result only has to be right for these documents


class SqlEvaluator:
    """Evaluates nodes in one read transaction. `field_ids` maps field names to their ids.

    Conjunctions are evaluated most selective clause first (sizes estimated by bounded counts); once
    the candidates are few, later clauses only look those candidates up (`within`) instead of
    listing every document they match.
    """

    def __init__(self, conn: sqlite3.Connection, tables: Mapping[str, str], field_ids: Mapping[str, int]) -> None:
        self.conn = conn
        self.docs = tables["docs"]
        self.postings = tables["postings"]
        self.field_ids = field_ids
        self._leaves: dict[type, Callable[[Any, Within], DocSet]] = {
            Terms: self._terms, Range: self._range, Prefix: self._prefix, Wildcard: self._wildcard,
            Phrase: self._phrase, Exists: self._exists, Ids: self._ids,
        }

    def evaluate(self, node: Node, within: Within = None) -> DocSet:
        if isinstance(node, MatchAll):
            return ALL
        if isinstance(node, MatchNone):
            return NONE
        if isinstance(node, Bool):
            return self._bool(node, within)
        return self._leaves[type(node)](node, within)

    # ---------------------------------------------------------------------------------- booleans

    def _bool(self, node: Bool, within: Within) -> DocSet:
        result = ALL if within is None else DocSet(within)
        must = self._by_selectivity(node.must)
        if len(must) > 1 and self._leaf_query(must[0]) is not None:
            result, must = self._probed(must, within)
        for child in must:
            result = result & self.evaluate(child, self._candidates(result, within))
            if not result.negated and not result.ids:
                return NONE
        for child in node.must_not:
            result = result & ~self.evaluate(child, self._candidates(result, within))
        if node.min_should == 1:
            candidates = self._candidates(result, within)
            any_should = NONE
            for child in node.should:
                any_should = any_should | self.evaluate(child, candidates)
            result = result & any_should
        elif node.min_should > 1:
            result = result & self._at_least(node.should, node.min_should, self._candidates(result, within))
        return result

    def _probed(self, must: list[Node], within: Within) -> tuple[DocSet, list[Node]]:
        """The most selective clause, filtered inside SQLite by index probes for the term clauses.

        Each candidate row of the first clause is kept only if a `(field, value, doc)` key of every
        term clause exists, so that only the survivors reach Python. Returns them and what is left.
        """
        sql, params = self._leaf_query(must[0])  # type: ignore[misc]
        rest = []
        for child in must[1:]:
            if isinstance(child, Terms) and not child.case_insensitive and len(child.values) <= _CHUNK:
                marks = ",".join("?" * len(child.values))
                where, field_params = self._field(child.space, child.field, "probe.") or ("0", [])
                sql += (f" AND EXISTS (SELECT 1 FROM {self.postings} AS probe WHERE {where} AND "
                        f"probe.value IN ({marks}) AND probe.doc = {self.postings}.doc)")
                params += [*field_params, *child.values]
            else:
                rest.append(child)
        return DocSet(self._rows(sql, params, within)), rest

    @staticmethod
    def _candidates(result: DocSet, within: Within) -> Within:
        if not result.negated and len(result.ids) <= _WITHIN_LIMIT:
            return result.ids
        return within

    def _by_selectivity(self, clauses: tuple[Node, ...]) -> list[Node]:
        if len(clauses) < 2:
            return list(clauses)
        return sorted(clauses, key=self._estimate)

    def _estimate(self, node: Node) -> int:
        """How many documents a clause matches, counted up to a cap; compound clauses go last."""
        if isinstance(node, MatchNone):
            return 0
        if isinstance(node, Ids):
            return len(node.values)
        query = self._leaf_query(node)
        if query is None:
            return _ESTIMATE_CAP + (1 if isinstance(node, (Bool, MatchAll)) else 0)
        sql, params = query
        return self.conn.execute(f"SELECT count(*) FROM ({sql} LIMIT {_ESTIMATE_CAP})", params).fetchone()[0]

    def _at_least(self, clauses: tuple[Node, ...], required: int, within: Within) -> DocSet:
        sets = [self.evaluate(child, within) for child in clauses]
        if any(docset.negated for docset in sets):
            universe = within if within is not None else frozenset(
                row for (row,) in self.conn.execute(f"SELECT id FROM {self.docs}"))
            sets = [DocSet(universe - s.ids) if s.negated else s for s in sets]
        counts: dict[int, int] = {}
        for docset in sets:
            for row in docset.ids:
                counts[row] = counts.get(row, 0) + 1
        return DocSet(frozenset(row for row, count in counts.items() if count >= required))

    # ------------------------------------------------------------------------------------- leaves

    def _rows(self, sql: str, params: Iterable[Any], within: Within = None) -> frozenset[int]:
        params = list(params)
        if within is not None:
            sql += " AND doc IN (SELECT value FROM json_each(?))"
            params.append(json.dumps(list(within)))
        return frozenset(row for (row,) in self.conn.execute(sql, params))

    def _field(self, space: str, name: str, alias: str = "") -> Where | None:
        """The condition selecting a field's entries, None when the field has none.

        A `.text` token equal to one of the document's keyword values of the field is stored once, in
        the keyword entry, which then carries its positions: `.text` entries are its own plus the
        keyword entries with positions (keyword entries without a token equal to them have none).
        """
        if space != "tok":
            field_id = self.field_ids.get(name)
            return None if field_id is None else (f"{alias}field = ?", [field_id])
        text_id = self.field_ids.get(name + TEXT_SUFFIX)
        if text_id is None:
            return None
        keyword_id = self.field_ids.get(name)
        if keyword_id is None:
            return f"{alias}field = ?", [text_id]
        return f"{alias}field IN (?, ?) AND {alias}positions IS NOT NULL", [text_id, keyword_id]

    def _leaf_query(self, node: Node) -> tuple[str, list[Any]] | None:
        """`SELECT doc FROM postings WHERE …` for the leaves that are one index scan, else None."""
        if isinstance(node, Exists):
            names = [*node.names, *(name[:-len(TEXT_SUFFIX)] + EMPTY_TEXT_SUFFIX for name in node.names
                                    if name.endswith(TEXT_SUFFIX))]
            # a keyword value is also a `.text` value: its tokens, or the marker of none
            names += [name[:-len(TEXT_SUFFIX)] for name in node.names if name.endswith(TEXT_SUFFIX)]
            field_ids = [self.field_ids[name] for name in names if name in self.field_ids]
            marks = ",".join("?" * len(field_ids))
            return f"SELECT doc FROM {self.postings} WHERE field IN ({marks})", field_ids
        if isinstance(node, Prefix) and not node.case_insensitive:
            low, high = prefix_bounds(node.prefix)
            node = Range(node.space, node.field, low or None, high, True, False)
        if isinstance(node, Terms) and not node.case_insensitive and len(node.values) <= _CHUNK:
            where, params = self._field(node.space, node.field) or ("0", [])
            marks = ",".join("?" * len(node.values))
            return f"SELECT doc FROM {self.postings} WHERE {where} AND value IN ({marks})", [*params, *node.values]
        if isinstance(node, Range):
            return self._range_query(node)
        return None

    def _range_query(self, node: Range) -> tuple[str, list[Any]]:
        where, field_params = self._field(node.space, node.field) or ("0", [])
        sql = f"SELECT doc FROM {self.postings} WHERE {where}"
        params: list[Any] = list(field_params)
        if node.lower is not None:
            sql += " AND value >= ?" if node.include_lower else " AND value > ?"
            params.append(node.lower)
        if node.upper is not None:
            sql += " AND value <= ?" if node.include_upper else " AND value < ?"
            params.append(node.upper)
        return sql, params

    def _docs_with_values(self, field: Where, values: list[Any], within: Within) -> DocSet:
        rows: set[int] = set()
        for start in range(0, len(values), _CHUNK):
            chunk = values[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            rows.update(self._rows(f"SELECT doc FROM {self.postings} WHERE {field[0]} AND value IN ({marks})",
                                   [*field[1], *chunk], within))
        return DocSet(frozenset(rows))

    def _distinct_values(self, field: Where, low: str | None = None, high: str | None = None) -> list[str]:
        sql = f"SELECT DISTINCT value FROM {self.postings} WHERE {field[0]}"
        params: list[Any] = list(field[1])
        if low:
            sql += " AND value >= ?"
            params.append(low)
        if high is not None:
            sql += " AND value < ?"
            params.append(high)
        return [value for (value,) in self.conn.execute(sql, params)]

    def _terms(self, node: Terms, within: Within) -> DocSet:
        field = self._field(node.space, node.field)
        if field is None:
            return NONE
        values = list(node.values)
        if node.case_insensitive:
            lowered = {str(value).lower() for value in values}
            values = [v for v in self._distinct_values(field) if v.lower() in lowered]
        return self._docs_with_values(field, values, within) if values else NONE

    def _range(self, node: Range, within: Within) -> DocSet:
        if self._field(node.space, node.field) is None:
            return NONE
        sql, params = self._range_query(node)
        return DocSet(self._rows(sql, params, within))

    def _prefix(self, node: Prefix, within: Within) -> DocSet:
        field = self._field(node.space, node.field)
        if field is None:
            return NONE
        if node.case_insensitive:
            prefix = node.prefix.lower()
            values = [v for v in self._distinct_values(field) if v.lower().startswith(prefix)]
            return self._docs_with_values(field, values, within) if values else NONE
        low, high = prefix_bounds(node.prefix)
        return self._range(Range(node.space, node.field, low or None, high, True, False), within)

    def _wildcard(self, node: Wildcard, within: Within) -> DocSet:
        field = self._field(node.space, node.field)
        if field is None:
            return NONE
        regex = wildcard_regex(node.pattern, node.case_insensitive)
        low, high = prefix_bounds(literal_prefix(node.pattern)) if not node.case_insensitive else ("", None)
        values = [v for v in self._distinct_values(field, low, high) if regex.match(v)]
        return self._docs_with_values(field, values, within) if values else NONE

    def _phrase(self, node: Phrase, within: Within) -> DocSet:
        field = self._field("tok", node.field)
        if field is None:
            return NONE
        postings: list[dict[int, list[int]]] = []
        candidates: set[int] | None = None
        for token in node.tokens:
            sql = f"SELECT doc, positions FROM {self.postings} WHERE {field[0]} AND value = ?"
            params: list[Any] = [*field[1], token]
            restriction = within if candidates is None else candidates
            if restriction is not None:
                sql += " AND doc IN (SELECT value FROM json_each(?))"
                params.append(json.dumps(list(restriction)))
            posting = {doc: decode_positions(positions) for doc, positions in self.conn.execute(sql, params)}
            candidates = set(posting) if candidates is None else candidates & posting.keys()
            if not candidates:
                return NONE
            postings.append(posting)
        assert candidates is not None
        return DocSet(frozenset(doc for doc in candidates
                                if phrase_matches([posting[doc] for posting in postings], node.slop)))

    def _exists(self, node: Exists, within: Within) -> DocSet:
        """Any entry under the field: a keyword or number, a token of a `.text` field, an object's marker."""
        query = self._leaf_query(node)
        if query is None or not query[1]:
            return NONE
        return DocSet(self._rows(query[0], query[1], within))

    def _ids(self, node: Ids, within: Within) -> DocSet:
        marks = ",".join("?" * len(node.values))
        return DocSet(self._rows(f"SELECT id FROM {self.docs} WHERE doc_id IN ({marks})", node.values))
