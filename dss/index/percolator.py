"""Subscription queries matched against one new document at a time (Elasticsearch's percolator).

Each stored query is parsed once, against the mapping of the moment, into a predicate over analysed
documents plus its anchor keys (`dss.index.matcher`). A new document is analysed once; its keys pick
the few subscriptions it could match, and only those predicates run. A query is re-parsed only when
it depends on something that changed: a field it named that was unmapped and now is (or that the new
document itself introduces), a field pattern that now matches more fields, or `now` in a date.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dss.index.backend import InvalidQuery, QueryError
from dss.index.mapping import Field, FieldMap, IndexedDoc, wildcard_names
from dss.index.matcher import Key, Predicate, anchors, compile_predicate, doc_keys
from dss.index.query import QueryParser

__all__ = ["Percolator", "CompiledQuery", "compile_subscription", "subscription_query"]

logger = logging.getLogger(__name__)


class _RecordingFields:
    """A mapping view that remembers which lookups a query made, to know when it must be re-parsed."""

    def __init__(self, fields: FieldMap) -> None:
        self._fields = fields
        self.missing: set[str] = set()
        self.patterns: set[str] = set()
        self.all_fields = False

    def resolve(self, name: str) -> Field | None:
        found = self._fields.resolve(name)
        if found is None:
            self.missing.add(name)
        return found

    def expand(self, pattern: str) -> list[str]:
        if "*" not in pattern:
            return [pattern] if self.resolve(pattern) else []
        self.patterns.add(pattern)
        return self._fields.expand(pattern)

    def queryable_names(self) -> list[str]:
        self.all_fields = True
        return self._fields.queryable_names()


@dataclass
class CompiledQuery:
    predicate: Predicate
    anchors: frozenset[Key] | None
    missing: frozenset[str] = frozenset()
    patterns: tuple[str, ...] = ()
    all_fields: bool = False
    volatile: bool = False  # uses `now`

    def depends_on(self, new_names: Iterable[str]) -> bool:
        if self.volatile or self.all_fields:
            return True
        names = list(new_names)
        if any(name in self.missing for name in names):
            return True
        return any(wildcard_names(pattern).match(name) for pattern in self.patterns for name in names)


def subscription_query(es_query: Any) -> Mapping[str, Any]:
    """The query of a subscription body `{"query": {…}}`."""
    if not isinstance(es_query, Mapping) or set(es_query) != {"query"}:
        raise InvalidQuery('a subscription es_query must be an object with exactly one key, "query"')
    return es_query["query"]


def compile_subscription(es_query: Mapping[str, Any], fields: FieldMap) -> CompiledQuery:
    recorder = _RecordingFields(fields)
    parser = QueryParser(recorder)  # type: ignore[arg-type]
    node = parser.parse(subscription_query(es_query))
    return CompiledQuery(compile_predicate(node), anchors(node), frozenset(recorder.missing),
                         tuple(sorted(recorder.patterns)), recorder.all_fields, parser.used_now)


@dataclass
class _State:
    fields: FieldMap
    queries: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    compiled: dict[str, CompiledQuery] = field(default_factory=dict)
    by_anchor: dict[Key, set[str]] = field(default_factory=dict)
    unanchored: set[str] = field(default_factory=set)
    version: Any = None


def _new_names(old: FieldMap, new: FieldMap) -> set[str]:
    known = set(old.queryable_names())
    return {name for name in new.queryable_names() if name not in known} | \
        {name for name, _ in new.items() if name not in old}


class Percolator:
    """The compiled subscriptions of one replica. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _State(FieldMap())

    @property
    def version(self) -> Any:
        return self._state.version

    def load(self, queries: Mapping[str, Mapping[str, Any]], fields: FieldMap, version: Any) -> None:
        """Replace every subscription (after another process changed them)."""
        state = _State(fields, version=version)
        for sub_id, es_query in queries.items():
            try:
                self._install(state, sub_id, es_query, compile_subscription(es_query, fields))
            except QueryError as error:  # stored before the mapping made it invalid: it matches nothing
                logger.warning("Subscription %s no longer parses: %s", sub_id, error)
        with self._lock:
            self._state = state

    def add(self, sub_id: str, es_query: Mapping[str, Any], compiled: CompiledQuery, version: Any) -> None:
        with self._lock:
            self._uninstall(self._state, sub_id)
            self._install(self._state, sub_id, es_query, compiled)
            self._state.version = version

    def remove(self, sub_id: str, version: Any) -> None:
        with self._lock:
            self._uninstall(self._state, sub_id)
            self._state.version = version

    def match(self, doc: IndexedDoc, stored: FieldMap) -> list[str]:
        """Ids of the subscriptions matching `doc`, analysed under the stored mapping `stored`."""
        with self._lock:
            state = self._state
            if len(stored) != len(state.fields):
                self._remap(state, stored)  # the stored mapping grew: re-parse what depends on it
            candidates = self._candidates(state, doc)
            fields, affected = stored, set()
            if doc.new_types:
                # Fields only this document has: queries naming them were parsed without them.
                fields = stored.extended(doc.new_types)
                extra = _new_names(stored, fields)
                affected = {sub_id for sub_id, compiled in state.compiled.items() if compiled.depends_on(extra)}
            compiled = state.compiled
            matched = []
            for sub_id in candidates | affected:
                entry = compiled[sub_id]
                if entry.volatile or sub_id in affected:
                    predicate = self._reparsed(state, sub_id, fields)
                else:
                    predicate = entry.predicate
                if predicate(doc):
                    matched.append(sub_id)
            return sorted(matched)

    @staticmethod
    def _reparsed(state: _State, sub_id: str, fields: FieldMap) -> Predicate:
        try:
            return compile_subscription(state.queries[sub_id], fields).predicate
        except QueryError:
            return lambda doc: False

    @staticmethod
    def _candidates(state: _State, doc: IndexedDoc) -> set[str]:
        found = set(state.unanchored)
        by_anchor = state.by_anchor
        for key in doc_keys(doc):
            subs = by_anchor.get(key)
            if subs:
                found.update(subs)
        return found

    def _remap(self, state: _State, fields: FieldMap) -> None:
        new_names = _new_names(state.fields, fields)
        state.fields = fields
        for sub_id, compiled in list(state.compiled.items()):
            if compiled.depends_on(new_names):
                es_query = state.queries[sub_id]
                self._uninstall(state, sub_id)
                try:
                    self._install(state, sub_id, es_query, compile_subscription(es_query, fields))
                except QueryError as error:
                    logger.warning("Subscription %s no longer parses: %s", sub_id, error)

    @staticmethod
    def _install(state: _State, sub_id: str, es_query: Mapping[str, Any], compiled: CompiledQuery) -> None:
        state.queries[sub_id] = es_query
        state.compiled[sub_id] = compiled
        if compiled.anchors is None or compiled.volatile:
            state.unanchored.add(sub_id)
            return
        for key in compiled.anchors:
            state.by_anchor.setdefault(key, set()).add(sub_id)

    @staticmethod
    def _uninstall(state: _State, sub_id: str) -> None:
        compiled = state.compiled.pop(sub_id, None)
        state.queries.pop(sub_id, None)
        state.unanchored.discard(sub_id)
        if compiled is not None and compiled.anchors:
            for key in compiled.anchors:
                subs = state.by_anchor.get(key)
                if subs is not None:
                    subs.discard(sub_id)
                    if not subs:
                        del state.by_anchor[key]
