"""The embedded search engine: the SearchIndex port over SQLite (`dss.index.sqlite_store`).

A search parses the query against the replica's mapping (`dss.index.query`), evaluates it as a set of
document row ids over the postings (`dss.index.sql_search`) plus the pending documents (tested one by
one, `dss.index.matcher`), and pages through the result in the forced order `uuid desc,
manifest.version desc (missing last)` by walking the `skey` index. Replaced documents whose
postings are still in a segment are left out of every result. Subscriptions are matched by the
percolator (`dss.index.percolator`).

`sqlite://<dir>` keeps `<dir>/<replica>.sqlite3`; `sqlite://<file>.sqlite3` (or `.db`, `.sqlite`) keeps
every replica in that one file, tables prefixed by the replica name.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from dss.index.backend import (
    Hit,
    InvalidQuery,
    SearchIndex,
    SearchPage,
    SearchUnavailable,
    check_replica,
)
from dss.index.mapping import IndexedDoc, analyse
from dss.index.matcher import compile_predicate
from dss.index.merging import SegmentMerger
from dss.index.percolator import Percolator, compile_subscription
from dss.index.query import MAX_RESULT_WINDOW, QueryParser, parse_search_body
from dss.index.query_ir import Node
from dss.index.query_leaves import current_millis
from dss.index.sql_search import DocSet, SqlEvaluator
from dss.index.sqlite_store import ReplicaStore, Writer, after_key, values_of_key

__all__ = ["EmbeddedSearchIndex"]

logger = logging.getLogger(__name__)

_FILE_SUFFIXES = (".sqlite3", ".sqlite", ".db")


class EmbeddedSearchIndex(SearchIndex):
    """`path` is a directory (one database per replica) or a `.sqlite3` file (all replicas in it).

    `merge_threshold`: how many written documents may wait before their postings are written as a
    new segment (1 writes them at once); `merge_in_background`: whether a thread does that
    (`dss.index.merging`) or the write that reached the threshold; `segment_fanout`: how many
    segments of one size are merged into one of the next. `clock` gives "now" in epoch milliseconds
    for date math.
    """

    def __init__(self, path: str | Path, *, cache_mib: int = 64, merge_threshold: int = 128,
                 segment_fanout: int = 32, merge_in_background: bool = True,
                 clock: Callable[[], int] = current_millis) -> None:
        if merge_threshold < 1:
            raise ValueError("merge_threshold must be at least 1")
        if segment_fanout < 2:
            raise ValueError("segment_fanout must be at least 2")
        self._path = Path(path).expanduser()
        self._single_file = self._path.suffix in _FILE_SUFFIXES or self._path.is_file()
        (self._path.parent if self._single_file else self._path).mkdir(parents=True, exist_ok=True)
        self._cache_kib = cache_mib * 1024
        self._merge_threshold = merge_threshold
        self._fanout = segment_fanout
        self._background = merge_in_background
        self._mergers: dict[str, SegmentMerger] = {}
        self._clock = clock
        self._stores: dict[str, ReplicaStore] = {}
        self._percolators: dict[str, Percolator] = {}
        self._lock = threading.Lock()
        self._closed = False

    def _store(self, replica: str) -> ReplicaStore:
        store = self._stores.get(replica)
        if store is not None:
            return store
        check_replica(replica)
        with self._lock:
            if self._closed:
                raise SearchUnavailable("the search index is closed")
            if replica not in self._stores:
                path = self._path if self._single_file else self._path / f"{replica}.sqlite3"
                prefix = f"{replica}_" if self._single_file else ""
                try:
                    self._stores[replica] = ReplicaStore(path, prefix, self._cache_kib, self._fanout)
                except sqlite3.Error as error:
                    raise SearchUnavailable(f"cannot open the search index at {path}: {error}") from error
                self._percolators[replica] = Percolator()
                merger = self._mergers[replica] = SegmentMerger(
                    self._stores[replica], path.with_name(f"{path.name}.{replica}.lock"),
                    threshold=self._merge_threshold, background=self._background)
                merger.written(merger.pending(), wait=False)  # left by a previous run, or an older layout
            return self._stores[replica]

    # ------------------------------------------------------------------------------- documents

    def index(self, replica: str, doc_id: str, doc: Mapping[str, Any]) -> None:
        self.index_many(replica, [(doc_id, doc)])

    def index_many(self, replica: str, docs: Iterable[tuple[str, Mapping[str, Any]]]) -> int:
        store = self._store(replica)
        count = 0
        with store.write() as conn:
            writer = Writer(store, conn)
            for doc_id, doc in docs:
                writer.put(doc_id, doc)
                count += 1
            pending = writer.pending_count()
        self._mergers[replica].written(pending)
        return count

    def refresh(self, replica: str) -> None:
        """Add the postings of every pending document now, and compact the segments (searches see
        pending documents either way)."""
        self._store(replica)
        self._mergers[replica].refresh()

    def get(self, replica: str, doc_id: str) -> dict[str, Any] | None:
        store = self._store(replica)
        with store.read() as (conn, _):
            row = conn.execute(f"SELECT source FROM {store.tables['docs']} WHERE doc_id = ?", (doc_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def existing(self, replica: str, doc_ids: Iterable[str]) -> set[str]:
        store = self._store(replica)
        with store.read() as (conn, _):
            rows = conn.execute(f"SELECT doc_id FROM {store.tables['docs']} WHERE doc_id IN"
                                " (SELECT value FROM json_each(?))", (json.dumps(list(doc_ids)),))
            return {doc_id for (doc_id,) in rows}

    # ---------------------------------------------------------------------------------- search

    def search(self, replica: str, es_query: Mapping[str, Any], *, size: int,
               search_after: Sequence[Any] | None = None, source: bool = True) -> SearchPage:
        request = parse_search_body(es_query)
        _check_window(size, request.from_, search_after)
        after = after_key(search_after)
        store = self._store(replica)
        with store.read() as (conn, fields):
            pending, mapping = store.pending_docs(conn, fields)
            node = QueryParser(mapping, self._clock).parse_request(request)
            docset = SqlEvaluator(conn, store.tables, fields.ids, fields.map).evaluate(node)
            docset = DocSet(docset.ids - store.deleted_rows(conn), docset.negated)
            docset = _with_pending(docset, node, pending)
            pager = _Pager(conn, store.tables["docs"])
            total, keys = pager.page(docset, size, request.from_, after)
            sources = pager.sources(keys) if source and request.source.enabled else {}
        hits = []
        for key in keys:
            values = values_of_key(key)
            document = request.source.apply(sources[key]) if key in sources else None
            hits.append(Hit(id=values[2], score=None, sort=values, source=document))
        return SearchPage(total=total, hits=hits)

    # --------------------------------------------------------------------------- subscriptions

    def add_subscription_query(self, replica: str, sub_id: str, es_query: Mapping[str, Any]) -> None:
        if not isinstance(sub_id, str) or not sub_id:
            raise ValueError(f"invalid subscription id {sub_id!r}")
        store = self._store(replica)
        with store.write() as conn:
            compiled = compile_subscription(es_query, store.registry.current(conn).map)
            version = _bump_version(conn, store.tables["meta"])
            conn.execute(f"INSERT OR REPLACE INTO {store.tables['subscriptions']} (id, query) VALUES (?, ?)",
                         (sub_id, json.dumps(es_query)))
        percolator = self._percolators[replica]
        if percolator.version == version - 1:  # otherwise it reloads everything on next use
            percolator.add(sub_id, es_query, compiled, version)

    def remove_subscription_query(self, replica: str, sub_id: str) -> None:
        store = self._store(replica)
        with store.write() as conn:
            version = _bump_version(conn, store.tables["meta"])
            conn.execute(f"DELETE FROM {store.tables['subscriptions']} WHERE id = ?", (sub_id,))
        percolator = self._percolators[replica]
        if percolator.version == version - 1:
            percolator.remove(sub_id, version)

    def percolate(self, replica: str, doc: Mapping[str, Any]) -> list[str]:
        store = self._store(replica)
        percolator = self._percolators[replica]
        with store.read() as (conn, fields):
            version = _subscriptions_version(conn, store.tables["meta"])
            if version != percolator.version:
                rows = conn.execute(f"SELECT id, query FROM {store.tables['subscriptions']}").fetchall()
                percolator.load({sub_id: json.loads(query) for sub_id, query in rows}, fields.map, version)
        return percolator.match(analyse(doc, fields.map), fields.map)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for merger in self._mergers.values():
                merger.stop()
            for store in self._stores.values():
                store.close()
            self._stores.clear()


def _with_pending(docset: DocSet, node: Node, pending: Mapping[int, IndexedDoc]) -> DocSet:
    """Decide the pending documents with the predicate: the postings do not know them yet."""
    if not pending:
        return docset
    predicate = compile_predicate(node)
    matched = frozenset(row for row, doc in pending.items() if predicate(doc))
    if docset.negated:
        return DocSet((docset.ids | pending.keys()) - matched, True)
    return DocSet((docset.ids - pending.keys()) | matched)


def _subscriptions_version(conn: sqlite3.Connection, meta: str) -> int:
    return conn.execute(f"SELECT value FROM {meta} WHERE key = 'subscriptions_version'").fetchone()[0]


def _bump_version(conn: sqlite3.Connection, meta: str) -> int:
    conn.execute(f"UPDATE {meta} SET value = value + 1 WHERE key = 'subscriptions_version'")
    return _subscriptions_version(conn, meta)


def _check_window(size: int, from_: int, search_after: Sequence[Any] | None) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidQuery(f"[size] parameter cannot be negative, found [{size}]")
    if search_after is not None and from_ > 0:
        raise InvalidQuery("[from] parameter must be set to 0 when [search_after] is used")
    if from_ + size > MAX_RESULT_WINDOW:
        raise InvalidQuery(f"Result window is too large, from + size must be less than or equal to: "
                           f"[{MAX_RESULT_WINDOW}] but was [{from_ + size}]")


class _Pager:
    """Picks one page of a result set in sort order, from whichever end is cheaper."""

    def __init__(self, conn: sqlite3.Connection, docs: str) -> None:
        self.conn = conn
        self.docs = docs

    def page(self, docset: DocSet, size: int, from_: int, after: str | None) -> tuple[int, list[str]]:
        if docset.negated:
            total = self.conn.execute(f"SELECT count(*) FROM {self.docs}").fetchone()[0] - len(docset.ids)
        else:
            total = len(docset.ids)
        wanted = from_ + size
        if size == 0 or total == 0:
            return total, []
        if not docset.negated and self._cheaper_to_sort(len(docset.ids), wanted):
            return total, self._sorted(docset.ids, after)[from_:wanted]
        return total, self._walk(docset, wanted, after)[from_:]

    def _cheaper_to_sort(self, matches: int, wanted: int) -> bool:
        """Sorting the matches costs about 3x more per document than walking past a non-match, and a
        walk in sort order meets a match every `documents / matches` rows."""
        documents = self.conn.execute(f"SELECT max(id) FROM {self.docs}").fetchone()[0] or 0
        return 3 * matches <= wanted * documents / max(matches, 1) + 1000

    def _sorted(self, rows: frozenset[int], after: str | None) -> list[str]:
        keys = [key for (key,) in self.conn.execute(
            f"SELECT skey FROM {self.docs} WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(list(rows)),))]
        keys.sort(reverse=True)
        return [key for key in keys if key < after] if after is not None else keys

    def _walk(self, docset: DocSet, wanted: int, after: str | None) -> list[str]:
        sql = f"SELECT id, skey FROM {self.docs}"
        params: tuple[Any, ...] = ()
        if after is not None:
            sql, params = sql + " WHERE skey < ?", (after,)
        keys: list[str] = []
        ids, negated = docset.ids, docset.negated
        for row, key in self.conn.execute(sql + " ORDER BY skey DESC", params):
            if (row in ids) != negated:
                keys.append(key)
                if len(keys) >= wanted:
                    break
        return keys

    def sources(self, keys: list[str]) -> dict[str, dict[str, Any]]:
        if not keys:
            return {}
        rows = self.conn.execute(f"SELECT skey, source FROM {self.docs} WHERE skey IN (SELECT value FROM json_each(?))",
                                 (json.dumps(keys),))
        return {key: json.loads(source) for key, source in rows}
