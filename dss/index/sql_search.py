"""Resolved queries evaluated over the embedded engine's SQLite tables.

The index is a set of segments (`dss.index.sqlite_store`); each leaf is one indexed scan per segment
(`seg IN (…)` on the clustered key `(seg, field, value)`), whose rows list documents (expanded here
into row ids) and, for `.text` tokens, positions. Keywords and numbers are under their field's id,
tokens under the id of the `.text` sub-field (except those of values that are one ASCII word, found
under their keyword, whose row is marked with positions ''), and an empty-string marker under each
object field a document has values in. Boolean structure is set algebra in Python. A set may be
held as its complement (`negated`), so that `must_not` and `match_all` never enumerate the whole
index. Leaves that need per-term logic (wildcards, case-insensitive terms) first list the field's
distinct terms that qualify, then fetch their documents.
"""
from __future__ import annotations

import itertools
import json
import operator
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from dss.index.analysis import POSITION_GAP
from dss.index.mapping import EMPTY_TEXT_SUFFIX, TEXT_SUFFIX, FieldMap, analyse
from dss.index.matcher import phrase_in, phrase_matches
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
from dss.index.segment_builder import DOC_WIDTH, decode_docs

__all__ = ["DocSet", "SqlEvaluator", "prefix_bounds"]

_CHUNK = 500
_ESTIMATE_CAP = 20000  # counting stops here: beyond it, the order of clauses hardly matters
_WITHIN_LIMIT = 20000  # candidates are passed down to later clauses only while they are this few


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


_FIRST = operator.itemgetter(0)


def _expand(codes: str) -> Iterable[int]:
    """The documents of a posting list; most hold one document."""
    return (int(codes, 16),) if len(codes) == DOC_WIDTH else decode_docs(codes)


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
    """Evaluates nodes in one read transaction. `field_ids` maps field names to their ids, `mapping`
    their types.

    Conjunctions are evaluated most selective clause first (sizes estimated by bounded counts); once
    the candidates are few, later clauses keep only those (`within`), which spares phrase checks
    and large sets; a posting list is read whole either way.
    """

    def __init__(self, conn: sqlite3.Connection, tables: Mapping[str, str], field_ids: Mapping[str, int],
                 mapping: FieldMap) -> None:
        self.conn = conn
        self.mapping = mapping
        self.docs = tables["docs"]
        self.postings = tables["postings"]
        segments = ",".join(str(seg) for (seg,) in conn.execute(f"SELECT id FROM {tables['segments']}"))
        self._in_segments = f"seg IN ({segments})" if segments else "0"
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
        for child in self._by_selectivity(node.must):
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
        count = self.conn.execute(f"SELECT sum(length(docs)) FROM ({sql} LIMIT {_ESTIMATE_CAP})", params).fetchone()[0]
        return (count or 0) // DOC_WIDTH

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
        """The documents of the posting lists `sql` selects (as `docs`), restricted to `within`. Each
        set is built once, in C: with `within`, only its members are kept as the postings stream by."""
        docs = itertools.chain.from_iterable(map(_expand, map(_FIRST, self.conn.execute(sql, list(params)))))
        return frozenset(docs) if within is None else within.intersection(docs)

    def _field(self, space: str, name: str) -> Where | None:
        """The condition selecting a field's entries, None when it has none. Tokens are those of its
        `.text` sub-field and its keywords marked as their own token (positions '')."""
        if space != "tok":
            field_id = self.field_ids.get(name)
            return None if field_id is None else (f"{self._in_segments} AND field = ?", [field_id])
        text_id, keyword_id = self.field_ids.get(name + TEXT_SUFFIX), self.field_ids.get(name)
        if text_id is None:
            return None
        return f"{self._in_segments} AND field IN (?, ?) AND positions IS NOT NULL", [text_id, keyword_id or text_id]

    def _leaf_query(self, node: Node) -> tuple[str, list[Any]] | None:
        """`SELECT docs FROM postings WHERE …` for the leaves that are one index scan, else None."""
        if isinstance(node, Exists):
            names = [*node.names, *(name[:-len(TEXT_SUFFIX)] + EMPTY_TEXT_SUFFIX for name in node.names
                                    if name.endswith(TEXT_SUFFIX))]
            # a keyword value is also a `.text` value: its tokens, or the marker of none
            names += [name[:-len(TEXT_SUFFIX)] for name in node.names if name.endswith(TEXT_SUFFIX)]
            field_ids = [self.field_ids[name] for name in names if name in self.field_ids]
            marks = ",".join("?" * len(field_ids))
            return f"SELECT docs FROM {self.postings} WHERE {self._in_segments} AND field IN ({marks})", field_ids
        if isinstance(node, Prefix) and not node.case_insensitive:
            low, high = prefix_bounds(node.prefix)
            node = Range(node.space, node.field, low or None, high, True, False)
        if isinstance(node, Terms) and not node.case_insensitive and len(node.values) <= _CHUNK:
            where, params = self._field(node.space, node.field) or ("0", [])
            marks = ",".join("?" * len(node.values))
            return f"SELECT docs FROM {self.postings} WHERE {where} AND value IN ({marks})", [*params, *node.values]
        if isinstance(node, Range):
            return self._range_query(node)
        return None

    def _range_query(self, node: Range) -> tuple[str, list[Any]]:
        where, field_params = self._field(node.space, node.field) or ("0", [])
        sql = f"SELECT docs FROM {self.postings} WHERE {where}"
        params: list[Any] = list(field_params)
        if node.lower is not None:
            sql += " AND value >= ?" if node.include_lower else " AND value > ?"
            params.append(node.lower)
        if node.upper is not None:
            sql += " AND value <= ?" if node.include_upper else " AND value < ?"
            params.append(node.upper)
        return sql, params

    def _docs_with_values(self, field: Where, values: list[Any], within: Within) -> DocSet:
        found = []
        for start in range(0, len(values), _CHUNK):
            chunk = values[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found.append(self._rows(f"SELECT docs FROM {self.postings} WHERE {field[0]} AND value IN ({marks})",
                                    [*field[1], *chunk], within))
        return DocSet(found[0] if len(found) == 1 else frozenset().union(*found))

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
        # Tokens of one-word values have no positions here (they are found under the keyword): only a
        # slop reaching from one value to the next (POSITION_GAP) can make them part of a phrase.
        across_values = node.slop >= POSITION_GAP
        postings: list[dict[int, list[int]]] = []
        spelled: set[int] = set()  # documents where a token is such a value: their positions are unknown
        candidates: set[int] | None = None if within is None else set(within)
        for token in node.tokens:
            posting = dict(self._positions(field, token, candidates))
            found = set(posting)
            if across_values:
                words = self._rows(f"SELECT docs FROM {self.postings} WHERE {field[0]} AND value = ? "
                                   f"AND positions = ''", [*field[1], token],
                                   None if candidates is None else frozenset(candidates))
                spelled |= words
                found |= words
            candidates = found if candidates is None else candidates & found
            if not candidates:
                return NONE
            postings.append(posting)
        assert candidates is not None
        matched = {doc for doc in candidates - spelled
                   if phrase_matches([posting[doc] for posting in postings], node.slop)}
        return DocSet(frozenset(matched | self._phrase_in_sources(node, candidates & spelled)))

    def _phrase_in_sources(self, node: Phrase, rows: set[int]) -> set[int]:
        """The documents among `rows` that have the phrase, analysed again from their sources."""
        matched = set()
        for row, source in self.conn.execute(f"SELECT id, source FROM {self.docs} WHERE id IN "
                                             f"(SELECT value FROM json_each(?))", [json.dumps(sorted(rows))]):
            if phrase_in(analyse(json.loads(source), self.mapping).tokens.get(node.field, {}), node):
                matched.add(row)
        return matched

    def _positions(self, field: Where, token: str, candidates: set[int] | None) -> Iterator[tuple[int, list[int]]]:
        """(document, positions) of a token, for the candidates only when there are some (positions
        of `.text` tokens only, not of one-word values)."""
        for codes, positions in self.conn.execute(
                f"SELECT docs, positions FROM {self.postings} WHERE {field[0]} AND value = ? AND positions <> ''",
                [*field[1], token]):
            for doc, entry in zip(_expand(codes), json.loads("[" + positions + "]")):
                if candidates is None or doc in candidates:
                    yield doc, entry if isinstance(entry, list) else [entry]

    def _exists(self, node: Exists, within: Within) -> DocSet:
        """Any entry under the field: a keyword or number, a token of a `.text` field, an object's marker."""
        query = self._leaf_query(node)
        if query is None or not query[1]:
            return NONE
        return DocSet(self._rows(query[0], query[1], within))

    def _ids(self, node: Ids, within: Within) -> DocSet:
        marks = ",".join("?" * len(node.values))
        rows = self.conn.execute(f"SELECT id FROM {self.docs} WHERE doc_id IN ({marks})", node.values)
        return DocSet(frozenset(row for (row,) in rows))
