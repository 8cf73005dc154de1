"""Storage of the embedded search engine: one SQLite database (or table prefix) per replica.

Tables:
* `docs`: id, document id, source JSON, and `skey`, a string whose order is the forced search order;
* `fields`: the dynamic mapping, one row (and id) per leaf field, `.text` sub-field and object field;
* `postings`: the inverted index, clustered on `(field, value, doc)`; keywords and numbers under their
  field, tokens (with positions) under the `.text` sub-field, an empty marker under each object field
  (and under `<field>.text#empty` for values that gave no token); a token equal to one of the
  document's keyword values of the field is kept only in that keyword's row, as its positions;
* `pending`: documents written but not yet in `postings`;
* `subscriptions` and `meta` for the percolator.

Why `pending`: an inverted index spreads one document over hundreds of B-tree pages, and committing
them one document at a time costs a page write each. So a write commits only the document (a few
pages); postings are added for many pending documents at once (`merge`), which shares the page
writes. Until then searches test pending documents one by one with the same predicate percolation
uses (`dss.index.matcher`), from an in-process cache of their analysed form.

WAL mode: readers keep a consistent snapshot while one writer commits; each thread has a connection.
"""
from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dss.index.backend import DocumentRejected, InvalidQuery, SearchUnavailable
from dss.index.mapping import EMPTY_TEXT_SUFFIX, TEXT_SUFFIX, FieldMap, FieldType, IndexedDoc, analyse
from dss.sqlite import immediate

__all__ = ["ReplicaStore", "Fields", "Writer", "sort_key", "sort_values", "values_of_key", "after_key"]

logger = logging.getLogger(__name__)

_MARKER = "marker"  # the type of the EMPTY_TEXT_SUFFIX pseudo-fields
_TABLES = ("docs", "fields", "postings", "pending", "subscriptions", "meta")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS {docs} (id INTEGER PRIMARY KEY AUTOINCREMENT, doc_id TEXT NOT NULL UNIQUE,
                                   skey TEXT NOT NULL, source TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS {docs}_skey ON {docs} (skey);
CREATE TABLE IF NOT EXISTS {fields} (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, type TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {postings} (field INTEGER NOT NULL, value NOT NULL, doc INTEGER NOT NULL, positions,
                                       PRIMARY KEY (field, value, doc)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {pending} (id INTEGER PRIMARY KEY);
CREATE TABLE IF NOT EXISTS {subscriptions} (id TEXT PRIMARY KEY, query TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {meta} (key TEXT PRIMARY KEY, value);
INSERT OR IGNORE INTO {meta} (key, value) VALUES ('subscriptions_version', 0)
"""


# ------------------------------------------------------------------------------------------- sorting

def _keyword(value: Any) -> str | None:
    if isinstance(value, list):
        texts = [text for text in map(_keyword, value) if text is not None]
        return max(texts) if texts else None  # a descending sort uses the largest value
    return value if isinstance(value, str) else None


def sort_values(doc: Mapping[str, Any], doc_id: str) -> list[Any]:
    """`uuid`, `manifest.version` and, to break ties between documents, the document id."""
    manifest = doc.get("manifest")
    version = _keyword(manifest.get("version")) if isinstance(manifest, Mapping) else None
    return [_keyword(doc.get("uuid")), version, doc_id]


def sort_key(values: Sequence[Any]) -> str:
    """A string whose byte order is the forced sort ascending; a missing version sorts below any.

    The separators sort below every printable character, so `abc` sorts before `abcd` as it should.
    """
    uuid, version = values[0], values[1]
    doc_id = values[2] if len(values) > 2 else ""
    return f"{uuid or ''}\x01{'' if version is None else chr(2) + version}\x01{doc_id}"


def values_of_key(key: str) -> list[Any]:
    uuid, version, doc_id = key.split("\x01", 2)
    return [uuid or None, version[1:] if version else None, doc_id]


def after_key(search_after: Sequence[Any] | None) -> str | None:
    if search_after is None:
        return None
    if not isinstance(search_after, (list, tuple)) or len(search_after) not in (2, 3) or \
            not all(value is None or isinstance(value, str) for value in search_after):
        raise InvalidQuery("search_after must hold the sort values of a hit: [uuid, version, id]")
    return sort_key(search_after)


# ----------------------------------------------------------------------------------------- registry

@dataclass(frozen=True)
class Fields:
    """A snapshot of the mapping with the ids of every queryable name (leaf, `.text`, object)."""
    map: FieldMap
    ids: Mapping[str, int]
    last_id: int


class _FieldRegistry:
    """The mapping, cached per process. Only committed fields are cached: ids of a rolled-back
    transaction would otherwise be handed out twice."""

    def __init__(self, table: str) -> None:
        self._table = table
        self._lock = threading.Lock()
        self._snapshot = Fields(FieldMap(), {}, 0)

    def _newer(self, conn: sqlite3.Connection, base: Fields) -> Fields:
        rows = conn.execute(f"SELECT id, name, type FROM {self._table} WHERE id > ? ORDER BY id",
                            (base.last_id,)).fetchall()
        if not rows:
            return base
        types = dict(base.map.items())
        ids = dict(base.ids)
        for field_id, name, type_name in rows:
            ids[name] = field_id
            if type_name not in (FieldType.TEXT.value, _MARKER):
                types[name] = FieldType(type_name)
        return Fields(FieldMap(types), ids, rows[-1][0])

    def current(self, conn: sqlite3.Connection) -> Fields:
        """The mapping as of a read transaction (committed data only)."""
        snapshot = self._newer(conn, self._snapshot)
        if snapshot is not self._snapshot:
            with self._lock:
                if snapshot.last_id > self._snapshot.last_id:
                    self._snapshot = snapshot
        return snapshot

    def add(self, conn: sqlite3.Connection, base: Fields, new_types: Mapping[str, FieldType]) -> Fields:
        """Register fields inside a write transaction; the result is not cached until committed."""
        rows = []
        for name, field_type in new_types.items():
            rows.append((name, field_type.value))
            if field_type is FieldType.KEYWORD:
                rows.append((name + TEXT_SUFFIX, FieldType.TEXT.value))
                rows.append((name + EMPTY_TEXT_SUFFIX, _MARKER))
        conn.executemany(f"INSERT OR IGNORE INTO {self._table} (name, type) VALUES (?, ?)", rows)
        return self._newer(conn, base)


# -------------------------------------------------------------------------------------------- store

class ReplicaStore:
    """One replica's database: connections (one per thread), mapping, pending-document cache."""

    def __init__(self, path: Path, prefix: str, cache_kib: int) -> None:
        self.path = path
        self.tables = {name: f"{prefix}{name}" for name in _TABLES}
        self._cache_kib = cache_kib
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self.registry = _FieldRegistry(self.tables["fields"])
        self._pending: dict[int, IndexedDoc] = {}
        self._pending_lock = threading.Lock()
        self._create()

    def _create(self) -> None:
        self.connection().execute("PRAGMA journal_mode = WAL")
        with self.write() as conn:
            for statement in _SCHEMA.format(**self.tables).split(";"):
                conn.execute(statement)
            self.registry.add(conn, self.registry.current(conn), dict(FieldMap().items()))
            # databases written before empty-text markers existed lack their pseudo-fields
            conn.execute(f"INSERT OR IGNORE INTO {self.tables['fields']} (name, type) "
                         f"SELECT name || '{EMPTY_TEXT_SUFFIX}', '{_MARKER}' FROM {self.tables['fields']} "
                         f"WHERE type = '{FieldType.KEYWORD.value}'")

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            for pragma in ("synchronous = NORMAL", f"cache_size = -{self._cache_kib}", "temp_store = MEMORY",
                           "mmap_size = 1073741824"):
                conn.execute(f"PRAGMA {pragma}")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def read(self) -> Iterator[tuple[sqlite3.Connection, Fields]]:
        conn = self.connection()
        with _translated_errors():
            conn.execute("BEGIN")
            try:
                yield conn, self.registry.current(conn)
            finally:
                conn.execute("COMMIT")

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        with _translated_errors(), immediate(self.connection()) as conn:
            yield conn

    # ----------------------------------------------------------------------- pending documents

    def remember(self, analysed: Mapping[int, IndexedDoc]) -> None:
        """Cache the analysed form of committed pending documents."""
        with self._pending_lock:
            self._pending.update(analysed)

    def cached(self, row: int) -> IndexedDoc | None:
        return self._pending.get(row)

    def forget(self, rows: Sequence[int]) -> None:
        with self._pending_lock:
            for row in rows:
                self._pending.pop(row, None)

    def pending_docs(self, conn: sqlite3.Connection, fields: Fields) -> dict[int, IndexedDoc]:
        """The pending documents of this snapshot, analysed (from the cache, or now)."""
        rows = [row for (row,) in conn.execute(f"SELECT id FROM {self.tables['pending']}")]
        if not rows:
            return {}
        cache = self._pending
        found = {row: cache[row] for row in rows if row in cache}
        missing = [row for row in rows if row not in found]
        if missing:
            loaded = {row: analyse(json.loads(source), fields.map, doc_id) for row, doc_id, source in conn.execute(
                f"SELECT id, doc_id, source FROM {self.tables['docs']} WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(missing),))}
            found.update(loaded)
            self.remember(loaded)
        if len(cache) > 2 * len(rows) + 64:
            with self._pending_lock:  # drop what other processes have merged
                self._pending = {row: cache[row] for row in rows if row in cache}
        return found

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


@contextlib.contextmanager
def _translated_errors() -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as error:
        raise SearchUnavailable(f"search index database: {error}") from error


# ------------------------------------------------------------------------------------------ writing

def _dump(doc: Mapping[str, Any]) -> str:
    if not isinstance(doc, Mapping):
        raise DocumentRejected("a search document must be a JSON object")
    try:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise DocumentRejected(f"the document is not JSON: {error}") from error


def _postings(doc: IndexedDoc, ids: Mapping[str, int], row: int) -> list[tuple[Any, ...]]:
    """The index rows of one document: keywords, numbers, text tokens (with positions), object markers.

    A token equal to one of the field's keyword values in the document (a checksum, a uuid, a one-word
    value) is not stored again under the `.text` sub-field: the keyword row carries its positions
    (`dss.index.sql_search` reads `.text` entries as those rows plus the sub-field's own).
    """
    rows: list[tuple[Any, ...]] = []
    tokens = doc.tokens
    for name, values in doc.keywords.items():
        field_id = ids[name]
        field_tokens = tokens.get(name)
        if field_tokens is None:
            rows += [(field_id, value, row, None) for value in values]
            continue
        for value in values:
            positions = field_tokens.get(value)
            rows.append((field_id, value, row, None if positions is None else
                         positions[0] if len(positions) == 1 else _positions_text(positions)))
    rows += [(ids[name], number, row, None) for name, numbers in doc.numbers.items() for number in numbers]
    for name, field_tokens in tokens.items():
        text_id = ids[name + TEXT_SUFFIX]
        keywords = doc.keywords.get(name, ())
        rows += [(text_id, token, row, positions[0] if len(positions) == 1 else _positions_text(positions))
                 for token, positions in field_tokens.items() if token not in keywords]
    rows += [(ids[name], "", row, None) for name in doc.objects]
    rows += [(ids[name + EMPTY_TEXT_SUFFIX], "", row, None) for name in doc.tokenless]
    return rows


def _positions_text(positions: list[int]) -> str:
    """`encode_positions` of several positions, faster: JSON without spaces."""
    return "[" + ",".join(map(str, positions)) + "]"


def _stale_keys(doc: IndexedDoc, ids: Mapping[str, int], row: int) -> list[tuple[Any, ...]]:
    """The keys of `_postings`, plus the `.text` keys that indexes written before tokens were stored
    once in their keyword rows hold for such tokens."""
    keys = [entry[:3] for entry in _postings(doc, ids, row)]
    for name, field_tokens in doc.tokens.items():
        keywords = doc.keywords.get(name, ())
        text_id = ids[name + TEXT_SUFFIX]
        keys += [(text_id, token, row) for token in field_tokens if token in keywords]
    return keys


class Writer:
    """Writes documents inside one write transaction; call `committed()` once it has committed."""

    def __init__(self, store: ReplicaStore, conn: sqlite3.Connection) -> None:
        self.store = store
        self.conn = conn
        self.tables = store.tables
        self.fields = store.registry.current(conn)
        self._written: dict[int, IndexedDoc] = {}
        self._merged: list[int] = []

    def put(self, doc_id: str, doc: Mapping[str, Any]) -> None:
        if not isinstance(doc_id, str) or not doc_id:
            raise DocumentRejected(f"invalid document id {doc_id!r}")
        source = _dump(doc)
        docs, pending = self.tables["docs"], self.tables["pending"]
        old = self.conn.execute(f"SELECT id, source FROM {docs} WHERE doc_id = ?", (doc_id,)).fetchone()
        if old is not None and old[1] == source:
            return  # identical: nothing to rewrite
        analysed = analyse(doc, self.fields.map, doc_id)
        if analysed.new_types:
            self.fields = self.store.registry.add(self.conn, self.fields, analysed.new_types)
        if old is not None:
            self._drop(old[0], old[1])
        row = self.conn.execute(f"INSERT INTO {docs} (doc_id, skey, source) VALUES (?, ?, ?)",
                                (doc_id, sort_key(sort_values(doc, doc_id)), source)).lastrowid
        assert row is not None
        self.conn.execute(f"INSERT INTO {pending} (id) VALUES (?)", (row,))
        self._written[row] = analysed

    def _drop(self, row: int, source: str) -> None:
        """Remove a replaced document; its postings too, if it had been merged."""
        was_pending = self.conn.execute(f"DELETE FROM {self.tables['pending']} WHERE id = ?", (row,)).rowcount
        self._written.pop(row, None)
        if not was_pending:
            stale = _stale_keys(analyse(json.loads(source), self.fields.map), self.fields.ids, row)
            self.conn.executemany(f"DELETE FROM {self.tables['postings']} WHERE field = ? AND value = ? AND doc = ?",
                                  stale)
        self.conn.execute(f"DELETE FROM {self.tables['docs']} WHERE id = ?", (row,))

    def pending_count(self) -> int:
        return self.conn.execute(f"SELECT count(*) FROM {self.tables['pending']}").fetchone()[0]

    def merge(self) -> int:
        """Move every pending document's postings into the index."""
        rows = [row for (row,) in self.conn.execute(f"SELECT id FROM {self.tables['pending']} ORDER BY id")]
        if not rows:
            return 0
        cache = {row: self.store.cached(row) or self._written.get(row) for row in rows}
        missing = [row for row, doc in cache.items() if doc is None]
        if missing:
            for row, doc_id, source in self.conn.execute(
                    f"SELECT id, doc_id, source FROM {self.tables['docs']} "
                    "WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(missing),)):
                cache[row] = analyse(json.loads(source), self.fields.map, doc_id)
        entries = [entry for row in rows for entry in _postings(cache[row], self.fields.ids, row)]  # type: ignore
        self.conn.executemany(f"INSERT INTO {self.tables['postings']} (field, value, doc, positions) "
                              "VALUES (?, ?, ?, ?)", entries)
        self.conn.execute(f"DELETE FROM {self.tables['pending']}")
        self._merged.extend(rows)
        return len(rows)

    def committed(self) -> None:
        merged = set(self._merged)
        self.store.remember({row: doc for row, doc in self._written.items() if row not in merged})
        self.store.forget(self._merged)
