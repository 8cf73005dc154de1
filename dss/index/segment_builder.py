"""Turning pending documents into the posting rows of a new segment, on every core.

Analysing a bundle (walking its JSON, typing and tokenising values) and grouping its hundreds of
postings by term is pure Python and costs more than everything SQLite does with the result, so a
batch is cut into chunks that worker processes build while the writer adds the chunks already
done. A worker writes its chunk's rows to a scratch SQLite file, which the writer attaches and
copies into the index in one statement: no posting passes through the writer's Python code. Small
batches are built in-process: a round trip to a worker would cost more than it saves.

Workers are spawned (forking a process with threads and open SQLite connections is unsafe), so a
program that embeds the engine needs the usual `if __name__ == "__main__":` guard: without it,
each worker re-runs the program's top-level code and fails, and building falls back to
in-process with a warning.

A chunk is analysed against the mapping as the writer saw it, extended in document order by the
chunk's own new fields (`Built.new_types`). The writer checks those against the fields registered
by earlier chunks and rebuilds a chunk whose guess was wrong (two chunks typing a new field
differently), so the result is the same as analysing the whole batch in order.
"""
from __future__ import annotations

import atexit
import gc
import json
import logging
import multiprocessing
import os
import sqlite3
import sys
import threading
import uuid
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dss.index.mapping import EMPTY_TEXT_SUFFIX, TEXT_SUFFIX, FieldMap, FieldType, IndexedDoc, analyse

__all__ = [
    "Built", "build", "build_all", "segment_rows", "encode_doc", "decode_docs", "DOC_WIDTH", "MAX_DOC_ROW", "CHUNK",
    "PAGE_SIZE",
]

logger = logging.getLogger(__name__)

DOC_WIDTH = 8  # hex digits of a document row id in a posting list
MAX_DOC_ROW = 16 ** DOC_WIDTH - 1
_SWAP = sys.byteorder == "little"  # codes are big-endian, so that their text order is their numeric order
assert array("I").itemsize * 2 == DOC_WIDTH
_PARALLEL_MIN = 64  # documents below which a batch is built in-process
CHUNK = 256  # documents per built chunk, and per new segment
# Postings are written in bulk, rows of a few dozen bytes: 16 KiB pages (SQLite's default is 4 KiB)
# mean fewer B-tree pages to split, write and checkpoint; it cut the writer's CPU time by a tenth.
PAGE_SIZE = 16384
Source = tuple[int, str, str]  # document row, document id, source JSON
Row = tuple[str, Any, str, str | None]  # field name, term, document codes, positions


def encode_doc(row: int) -> str:
    return f"{row:0{DOC_WIDTH}x}"


def decode_docs(codes: str) -> array[int]:
    """The document rows of a posting list."""
    rows = array("I", bytes.fromhex(codes))
    if _SWAP:
        rows.byteswap()
    return rows


@dataclass
class Built:
    """A chunk of documents, built: its rows are in the `rows` table of the SQLite file at `path`
    (field name, term, document codes, positions), for the writer to attach and copy in SQL."""
    docs: list[Source]
    new_types: dict[str, str]  # fields the chunk adds to the mapping it was given, in order
    path: Path


def build(types: Mapping[str, str], docs: list[Source], directory: Path) -> Built:
    """Analyse `docs` in order under the mapping `types` (name → FieldType value), group their
    postings and write them to a new file in `directory`."""
    return Built(docs, *_build(types, docs, directory))


def _build(types: Mapping[str, str], docs: list[Source], directory: Path) -> tuple[dict[str, str], Path]:
    new_types, rows = _analyse(types, docs)
    path = directory / f"chunk-{uuid.uuid4().hex}.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode = OFF")  # a scratch file: a crash just loses it
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("CREATE TABLE rows (field TEXT NOT NULL, value NOT NULL, docs TEXT NOT NULL, positions TEXT)")
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO rows VALUES (?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return new_types, path


def _analyse(types: Mapping[str, str], docs: list[Source]) -> tuple[dict[str, str], list[Row]]:
    fields = FieldMap({name: FieldType(value) for name, value in types.items()})
    new_types: dict[str, str] = {}
    analysed: dict[int, IndexedDoc] = {}
    for row, doc_id, source in docs:
        doc = analyse(json.loads(source), fields, doc_id)
        for name, field_type in doc.new_types.items():
            fields.add(name, field_type)
            new_types.setdefault(name, field_type.value)
        analysed[row] = doc
    return new_types, segment_rows(analysed)


def segment_rows(docs: Mapping[int, IndexedDoc]) -> list[Row]:
    """One row per distinct (field, term) among `docs`, with the documents that have it.

    Keywords and numbers go under their field, text tokens (with positions) under the `.text`
    sub-field, an empty marker under each object field and under `<field>.text#empty` for values
    that gave no token. A keyword that is one ASCII word is its own token: its row is marked with
    positions `''` and the token's positions from such values are left out of `.text` (a fifth of
    the rows of typical metadata: checksums, identifiers, enumerations). Lists are built as strings,
    which the garbage collector does not track: a batch has hundreds of thousands of postings.
    """
    plain: dict[str, dict[Any, str]] = {}  # field → term → document codes
    words: dict[str, set[str]] = {}  # field → keywords that are their own token
    codes_of: dict[str, dict[str, str]] = {}  # `.text` field → token → document codes
    positions_of: dict[str, dict[str, str]] = {}  # and their positions, one JSON value per document
    for row, doc in docs.items():
        code = encode_doc(row)
        groups: list[tuple[str, Iterable[Any]]] = [*doc.keywords.items(), *doc.numbers.items()]
        for name, terms in groups:
            listed = plain.setdefault(name, {})
            for term in terms:
                listed[term] = listed[term] + code if term in listed else code
        for name, spelled in doc.words.items():
            if name in words:
                words[name].update(spelled)
            else:
                words[name] = set(spelled)
        for name, tokens in doc.tokens.items():
            whole = doc.words.get(name)
            if whole is tokens:
                continue  # one value, a word: found under the keyword
            text = name + TEXT_SUFFIX
            codes, positions = codes_of.setdefault(text, {}), positions_of.setdefault(text, {})
            for token, places in tokens.items():
                if whole is not None and token in whole:
                    if len(whole[token]) == len(places):
                        continue  # every occurrence is a one-word value
                    skip = set(whole[token])
                    places = [place for place in places if place not in skip]
                encoded = str(places[0]) if len(places) == 1 else "[" + ",".join(map(str, places)) + "]"
                if token in codes:
                    codes[token] += code
                    positions[token] += "," + encoded
                else:
                    codes[token] = code
                    positions[token] = encoded
        for marker in (*doc.objects, *(name + EMPTY_TEXT_SUFFIX for name in doc.tokenless)):
            listed = plain.setdefault(marker, {})
            listed[""] = listed[""] + code if "" in listed else code
    rows: list[Row] = []
    for field, listed in plain.items():
        marked = words.get(field)
        if marked is None:
            rows += [(field, term, codes, None) for term, codes in listed.items()]
        else:
            rows += [(field, term, codes, "" if term in marked else None) for term, codes in listed.items()]
    rows += [(field, token, codes, positions_of[field][token])
             for field, codes_by_token in codes_of.items() for token, codes in codes_by_token.items()]
    return rows


def build_all(types: Mapping[str, str], docs: Sequence[Source], directory: Path) -> Iterator[Built]:
    """`build` over consecutive chunks of `docs`, in order; in worker processes when they are many."""
    pool = _pool() if len(docs) >= _PARALLEL_MIN else None
    chunks = [list(docs[start:start + CHUNK]) for start in range(0, len(docs), CHUNK)]
    if pool is None:
        for chunk in chunks:
            yield build(types, chunk, directory)
        return
    types = dict(types)
    futures: list[Future[tuple[dict[str, str], Path]]] = [pool.submit(_worker_build, types, chunk, directory)
                                                          for chunk in chunks]
    try:
        for chunk, future in zip(chunks, futures):
            try:
                yield Built(chunk, *future.result())
            except BrokenProcessPool:
                # e.g. a script without an `if __name__ == "__main__"` guard cannot start spawned workers
                logger.warning("Segment builder processes failed; building in-process from now on")
                _disable_pool()
                yield build(types, chunk, directory)
    finally:
        for future in futures:
            future.cancel()


# ------------------------------------------------------------------------------------------- workers

_COLLECT_EVERY = 50  # chunks a builder process builds between two cyclic collections
_built_here = 0
_lock = threading.Lock()
_executor: ProcessPoolExecutor | None = None
_executor_pid = 0
_disabled = False


def _pool() -> ProcessPoolExecutor | None:
    """The process's pool of builders (None on a single core), started on first use."""
    global _executor, _executor_pid
    workers = min(os.cpu_count() or 1, 4)
    if workers < 2 or _disabled:
        return None
    with _lock:
        if _executor is None or _executor_pid != os.getpid():  # a forked child cannot use its parent's pool
            # spawn, not fork: the writer has threads (and SQLite connections) a fork would copy mid-use
            _executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                            initializer=_start_worker)
            _executor_pid = os.getpid()
            logger.debug("Started %d segment builder processes", workers)
        return _executor


def _start_worker() -> None:
    # Analysis allocates hundreds of thousands of containers per chunk and makes no reference
    # cycles, so the cyclic collector only costs time here (a quarter of it at the default
    # thresholds): it is off in builder processes, with a full collection every few chunks in case.
    gc.disable()


def _worker_build(types: Mapping[str, str], docs: list[Source], directory: Path) -> tuple[dict[str, str], Path]:
    global _built_here
    result = _build(types, docs, directory)
    _built_here += 1
    if _built_here % _COLLECT_EVERY == 0:
        gc.collect()
    return result


def _disable_pool() -> None:
    global _disabled
    _disabled = True
    _stop_pool()


@atexit.register
def _stop_pool() -> None:
    global _executor
    with _lock:
        if _executor is not None and _executor_pid == os.getpid():
            _executor.shutdown(wait=False, cancel_futures=True)
        _executor = None
