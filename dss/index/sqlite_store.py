"""Storage of the embedded search engine: one SQLite database (or table prefix) per replica.

Tables:
* `docs`: id, document id, source JSON, and `skey`, a string whose order is the forced search order;
* `fields`: the dynamic mapping, one row (and id) per leaf field, `.text` sub-field and object field;
* `postings`: the inverted index as immutable segments, clustered on `(seg, field, value)`; each row
  lists the documents of one term in one segment (fixed-width hex codes of their row ids, `DOC_WIDTH`
  characters each) and, for text tokens, their positions. Keywords and numbers are under their field,
  tokens under the `.text` sub-field, an empty marker under each object field (and under
  `<field>.text#empty` for values that gave no token);
* `segments`: each segment's level, the range of document rows it covers and its document count;
* `deleted`: replaced documents whose postings are still in a segment (searches leave them out);
* `pending`: documents written but not yet in a segment;
* `subscriptions` and `meta` for the percolator.

Why segments: an inverted index spreads a document over hundreds of terms. Adding them to one big
B-tree dirties a page per term, and those writes grow with the index. Instead, a batch of pending
documents becomes a new segment (`SegmentWriter.add`): one row per distinct term, in a key range
of its own at the end of the table. Segments are merged in tiers (`fanout` of a level make one of
the next), inside SQLite: posting lists concatenate as strings, so a merge never decodes them in
Python unless it has deleted documents to drop. A term lookup is one seek per segment, and the
tiers keep segments few.

Why `pending`: a write commits only the document (a few pages); until the batch becomes a segment,
searches test pending documents one by one with the same predicate percolation uses
(`dss.index.matcher`), from an in-process cache of their analysed form.

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
from dss.index.segment_builder import DOC_WIDTH, MAX_DOC_ROW, PAGE_SIZE, Built, Source, build, decode_docs
from dss.sqlite import immediate

__all__ = ["ReplicaStore", "Fields", "Writer", "sort_key", "sort_values", "values_of_key", "after_key"]

logger = logging.getLogger(__name__)

_MARKER = "marker"  # the type of the EMPTY_TEXT_SUFFIX pseudo-fields
_TABLES = ("docs", "fields", "postings", "segments", "deleted", "pending", "subscriptions", "meta")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS {docs} (id INTEGER PRIMARY KEY AUTOINCREMENT, doc_id TEXT NOT NULL UNIQUE,
                                   skey TEXT NOT NULL, source TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS {docs}_skey ON {docs} (skey);
CREATE TABLE IF NOT EXISTS {fields} (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, type TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS {postings} (seg INTEGER NOT NULL, field INTEGER NOT NULL, value NOT NULL,
                                       docs TEXT NOT NULL, positions TEXT,
                                       PRIMARY KEY (seg, field, value)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS {segments} (id INTEGER PRIMARY KEY AUTOINCREMENT, level INTEGER NOT NULL,
                                       lo INTEGER NOT NULL, hi INTEGER NOT NULL, docs INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS {deleted} (id INTEGER PRIMARY KEY);
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

    def __init__(self, path: Path, prefix: str, cache_kib: int, fanout: int) -> None:
        self.path = path
        self.tables = {name: f"{prefix}{name}" for name in _TABLES}
        self._cache_kib = cache_kib
        self.fanout = fanout
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
            rebuild = self._drop_unsegmented_postings(conn)
            for statement in _SCHEMA.format(**self.tables).split(";"):
                conn.execute(statement)
            self.registry.add(conn, self.registry.current(conn), dict(FieldMap().items()))
            # databases written before empty-text markers existed lack their pseudo-fields
            conn.execute(f"INSERT OR IGNORE INTO {self.tables['fields']} (name, type) "
                         f"SELECT name || '{EMPTY_TEXT_SUFFIX}', '{_MARKER}' FROM {self.tables['fields']} "
                         f"WHERE type = '{FieldType.KEYWORD.value}'")
            if rebuild:  # the segment merger takes it from there
                conn.execute(f"INSERT OR IGNORE INTO {self.tables['pending']} (id) "
                             f"SELECT id FROM {self.tables['docs']}")

    def _drop_unsegmented_postings(self, conn: sqlite3.Connection) -> bool:
        """Databases written before segments existed keep one row per posting: their postings are
        dropped and rebuilt from the documents (True when that is needed)."""
        columns = [row[1] for row in conn.execute(f"PRAGMA table_info({self.tables['postings']})")]
        if not columns or "seg" in columns:
            return False
        logger.info("Rebuilding the search index postings of %s in the segmented layout", self.path)
        conn.execute(f"DROP TABLE {self.tables['postings']}")
        return True

    def connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            # the page size applies when the file is created (a database made with other pages keeps them)
            for pragma in (f"page_size = {PAGE_SIZE}", "synchronous = NORMAL", f"cache_size = -{self._cache_kib}",
                           "temp_store = MEMORY", "mmap_size = 2147418112"):
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

    def forget(self, rows: Sequence[int]) -> None:
        with self._pending_lock:
            for row in rows:
                self._pending.pop(row, None)

    def deleted_rows(self, conn: sqlite3.Connection) -> frozenset[int]:
        """Replaced documents whose postings are still in a segment."""
        return frozenset(row for (row,) in conn.execute(f"SELECT id FROM {self.tables['deleted']}"))

    def pending_docs(self, conn: sqlite3.Connection, fields: Fields) -> tuple[dict[int, IndexedDoc], FieldMap]:
        """The pending documents of this snapshot, analysed (from the cache, or now), and the mapping
        extended by the fields they add (they are registered only when the documents are merged)."""
        rows = [row for (row,) in conn.execute(f"SELECT id FROM {self.tables['pending']} ORDER BY id")]
        mapping = fields.map
        if not rows:
            return {}, mapping
        cache = self._pending
        missing = [row for row in rows if row not in cache]
        sources = {row: (doc_id, source) for row, doc_id, source in conn.execute(
            f"SELECT id, doc_id, source FROM {self.tables['docs']} WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(missing),))} if missing else {}
        found: dict[int, IndexedDoc] = {}
        for row in rows:  # in the order they were written: the first value of a new field types it
            doc = cache.get(row)
            if doc is None:
                doc_id, source = sources[row]
                doc = analyse(json.loads(source), mapping, doc_id)
            added = {name: field_type for name, field_type in doc.new_types.items() if name not in mapping}
            if added:
                mapping = mapping.extended(added)
            found[row] = doc
        with self._pending_lock:
            if len(cache) > 2 * len(rows) + 64:  # drop what other processes have merged
                self._pending = {row: cache[row] for row in rows if row in cache}
            self._pending.update((row, found[row]) for row in missing)
        return found, mapping

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


@dataclass(frozen=True)
class _Segment:
    id: int
    level: int
    lo: int  # the range of document rows it holds
    hi: int
    docs: int


class Writer:
    """Writes documents inside one write transaction.

    Writing a document stores it as pending, without analysing it: `SegmentWriter` turns pending
    documents into segments later.
    """

    def __init__(self, store: ReplicaStore, conn: sqlite3.Connection) -> None:
        self.store = store
        self.conn = conn
        self.tables = store.tables
        self.fields = store.registry.current(conn)

    def put(self, doc_id: str, doc: Mapping[str, Any]) -> None:
        if not isinstance(doc_id, str) or not doc_id:
            raise DocumentRejected(f"invalid document id {doc_id!r}")
        source = _dump(doc)
        docs, pending = self.tables["docs"], self.tables["pending"]
        old = self.conn.execute(f"SELECT id, source FROM {docs} WHERE doc_id = ?", (doc_id,)).fetchone()
        if old is not None and old[1] == source:
            return  # identical: nothing to rewrite
        if old is not None:
            self._drop(old[0])
        row = self.conn.execute(f"INSERT INTO {docs} (doc_id, skey, source) VALUES (?, ?, ?)",
                                (doc_id, sort_key(sort_values(doc, doc_id)), source)).lastrowid
        assert row is not None
        if row > MAX_DOC_ROW:
            raise SearchUnavailable("the search index has run out of document numbers; rebuild it")
        self.conn.execute(f"INSERT INTO {pending} (id) VALUES (?)", (row,))

    def _drop(self, row: int) -> None:
        """Remove a replaced document. A merged one is listed as deleted until its segment is rewritten."""
        was_pending = self.conn.execute(f"DELETE FROM {self.tables['pending']} WHERE id = ?", (row,)).rowcount
        if not was_pending:
            self.conn.execute(f"INSERT OR IGNORE INTO {self.tables['deleted']} (id) VALUES (?)", (row,))
        self.conn.execute(f"DELETE FROM {self.tables['docs']} WHERE id = ?", (row,))

    def pending_count(self) -> int:
        return self.conn.execute(f"SELECT count(*) FROM {self.tables['pending']}").fetchone()[0]

    def field_types(self) -> dict[str, str]:
        return {name: field_type.value for name, field_type in self.fields.map.items()}


class SegmentWriter:
    """Adds and merges segments, holding the write lock only to copy finished rows in.

    A new segment's rows come grouped from its builder. A merge of segments groups their rows into
    the scratch table `scratch.segment` (a file in `directory`) while reading a snapshot of the
    index, then copies them, already sorted, in one short write transaction, so that documents can
    be written meanwhile. Segments are merged only here, and one SegmentWriter compacts a replica at
    a time (`dss.index.merging` holds a lock), so a snapshot's segments are still there when their
    merge is copied in. Use it from one thread; `close()` it.
    """

    def __init__(self, store: ReplicaStore, directory: Path) -> None:
        self.store = store
        self.tables = store.tables
        self.directory = directory
        self.conn = store.connection()
        self._scratch = False  # attached on first use: only merges need it
        self.merged: list[int] = []

    def close(self) -> None:
        if self._scratch:
            self.conn.execute("DETACH DATABASE scratch")
        self.store.forget(self.merged)

    # --------------------------------------------------------------------------- new segments

    def add(self, built: Built) -> int:
        """Add a built chunk of pending documents as a new segment; returns how many documents it has.

        Documents no longer pending when it starts (replaced meanwhile) are left out, the chunk
        rebuilt; those replaced while it runs are listed as deleted, as their postings are in it.
        The rows are copied as the builder left them (grouped by term, in no particular order):
        sorting them first would cost more than inserting them into the segment's own key range."""
        with self.store.write() as conn:
            writer = Writer(self.store, conn)
            still = self._pending(conn, [row for row, _, _ in built.docs])
            ready = self._claim(writer, built, still)
        if ready is None:
            return 0
        self.conn.execute("ATTACH DATABASE ? AS chunk", (str(ready.path),))
        try:
            with self.store.write() as conn:
                now = self._pending(conn, sorted(still))
                self._copy(conn, 0, min(still), max(still), len(still),
                           f"SELECT fields.id, built.value, built.docs, built.positions FROM chunk.rows AS built "
                           f"JOIN {self.tables['fields']} AS fields ON fields.name = built.field")
                conn.execute(f"DELETE FROM {self.tables['pending']} WHERE id IN (SELECT value FROM json_each(?))",
                             (json.dumps(sorted(now)),))
                conn.execute(f"INSERT OR IGNORE INTO {self.tables['deleted']} (id) SELECT value FROM json_each(?)",
                             (json.dumps(sorted(still - now)),))
        finally:
            self.conn.execute("DETACH DATABASE chunk")
            ready.path.unlink(missing_ok=True)
        self.merged.extend(now)
        return len(still)

    def _pending(self, conn: sqlite3.Connection, rows: list[int]) -> set[int]:
        return {row for (row,) in conn.execute(
            f"SELECT id FROM {self.tables['pending']} WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps(rows),))}

    def _claim(self, writer: Writer, built: Built, still: set[int]) -> Built | None:
        """The chunk as it must be added (rebuilt if its documents or its typing changed); registers
        the fields it adds."""
        if any(row not in still for row, _, _ in built.docs):
            built.path.unlink(missing_ok=True)
            docs = [doc for doc in built.docs if doc[0] in still]
            if not docs:
                return None
            built = build(writer.field_types(), docs, self.directory)
        elif any(writer.fields.map.get(name) not in (None, FieldType(value))
                 for name, value in built.new_types.items()):
            built.path.unlink(missing_ok=True)  # an earlier chunk typed one of its new fields otherwise
            built = build(writer.field_types(), built.docs, self.directory)
        added = {name: FieldType(value) for name, value in built.new_types.items() if name not in writer.fields.map}
        if added:
            writer.fields = self.store.registry.add(writer.conn, writer.fields, added)
        return built

    def _group(self, select: str) -> None:
        """`scratch.segment` := the rows of `select` (field, value, docs, positions), in key order,
        computed over a snapshot of the index."""
        if not self._scratch:
            self.conn.execute("ATTACH DATABASE ? AS scratch", (str(self.directory / "segment.sqlite3"),))
            self.conn.execute(f"PRAGMA scratch.page_size = {PAGE_SIZE}")
            self.conn.execute("PRAGMA scratch.journal_mode = OFF")  # rebuilt from the index if lost
            self.conn.execute("PRAGMA scratch.synchronous = OFF")
            self._scratch = True
        with self.store.read() as (conn, _):
            conn.execute("DROP TABLE IF EXISTS scratch.segment")
            conn.execute("CREATE TABLE scratch.segment (field INTEGER, value, docs TEXT, positions TEXT)")
            conn.execute(f"INSERT INTO scratch.segment {select}")

    def _copy(self, conn: sqlite3.Connection, level: int, lo: int, hi: int, docs: int,
              select: str = "SELECT field, value, docs, positions FROM scratch.segment ORDER BY rowid") -> int:
        """A new segment with the rows (field id, value, docs, positions) of `select`: by default
        those of `scratch.segment`, appended in key order."""
        segment = conn.execute(f"INSERT INTO {self.tables['segments']} (level, lo, hi, docs) VALUES (?, ?, ?, ?)",
                               (level, lo, hi, docs)).lastrowid
        assert segment is not None
        conn.execute(f"INSERT INTO {self.tables['postings']} (seg, field, value, docs, positions) "
                     f"SELECT {int(segment)}, * FROM ({select})")
        return segment

    # ------------------------------------------------------------------------------- compaction

    def compact(self) -> None:
        """Tiered merging: `fanout` segments of one level become one of the next level; a segment with
        a quarter of its documents deleted is rewritten alone."""
        while (plan := self._plan()) is not None:
            self._merge(*plan)

    def _plan(self) -> tuple[list[_Segment], int] | None:
        with self.store.read() as (conn, _):
            segments = [_Segment(*row) for row in conn.execute(
                f"SELECT id, level, lo, hi, docs FROM {self.tables['segments']} ORDER BY id")]
            deleted = self.store.deleted_rows(conn)
        for segment in segments if deleted else ():
            gone = sum(1 for row in deleted if segment.lo <= row <= segment.hi)
            if gone and 4 * gone >= segment.docs:
                return [segment], segment.level
        levels: dict[int, list[_Segment]] = {}
        for segment in segments:
            levels.setdefault(segment.level, []).append(segment)
        full = [level for level, members in sorted(levels.items()) if len(members) >= self.store.fanout]
        return (levels[full[0]], full[0] + 1) if full else None

    def _merge(self, segments: list[_Segment], level: int) -> None:
        """Replace `segments` by one at `level`: posting lists of a term concatenated, deleted documents
        left out. The concatenation is SQLite's: documents are fixed-width codes, positions a list,
        and both aggregates see a group's rows in the same order, so they stay aligned."""
        inputs = ",".join(str(segment.id) for segment in segments)
        with self.store.read() as (conn, _):
            purged = sorted(row for row in self.store.deleted_rows(conn) if any(s.lo <= row <= s.hi for s in segments))
        # a keyword that is its own token keeps its mark ('') rather than a list of empty positions
        docs_sql = "group_concat(docs, '')"
        positions_sql = "CASE WHEN min(positions) = '' THEN '' ELSE group_concat(positions, ',') END"
        if purged:
            _register_purge(self.conn, set(purged))
            docs_sql, positions_sql = f"dss_purge_docs({docs_sql})", f"dss_purge_positions({docs_sql}, {positions_sql})"
        self._group(f"SELECT field, value, {docs_sql} AS merged, {positions_sql} FROM {self.tables['postings']} "
                    f"WHERE seg IN ({inputs}) GROUP BY field, value HAVING merged <> '' ORDER BY field, value")
        with self.store.write() as conn:
            segment = self._copy(conn, level, min(s.lo for s in segments), max(s.hi for s in segments),
                                 sum(s.docs for s in segments) - len(purged))
            conn.execute(f"DELETE FROM {self.tables['postings']} WHERE seg IN ({inputs})")
            conn.execute(f"DELETE FROM {self.tables['segments']} WHERE id IN ({inputs})")
            conn.execute(f"DELETE FROM {self.tables['deleted']} WHERE id IN (SELECT value FROM json_each(?))",
                         (json.dumps(purged),))
        logger.debug("Merged segments %s into segment %s (level %d)", inputs, segment, level)


def read_pending(conn: sqlite3.Connection, tables: Mapping[str, str], limit: int) -> list[Source]:
    return conn.execute(f"SELECT id, doc_id, source FROM {tables['docs']} WHERE id IN "
                        f"(SELECT id FROM {tables['pending']} ORDER BY id LIMIT ?) ORDER BY id", (limit,)).fetchall()


def _register_purge(conn: sqlite3.Connection, purged: set[int]) -> None:
    """SQL functions that drop the documents in `purged` from a posting list and its positions."""
    def kept(docs: str) -> list[bool]:
        return [row not in purged for row in decode_docs(docs)]

    def purge_docs(docs: str) -> str:
        keep = kept(docs)
        if all(keep):
            return docs
        return "".join(docs[i * DOC_WIDTH:(i + 1) * DOC_WIDTH] for i, flag in enumerate(keep) if flag)

    def purge_positions(docs: str, positions: str | None) -> str | None:
        keep = kept(docs)
        if positions is None or all(keep):
            return positions
        entries = json.loads("[" + positions + "]")
        return ",".join(json.dumps(entry, separators=(",", ":")) for entry, flag in zip(entries, keep) if flag)

    conn.create_function("dss_purge_docs", 1, purge_docs, deterministic=True)
    conn.create_function("dss_purge_positions", 2, purge_positions, deterministic=True)
