"""Turning pending documents into segments, in the background, one merger at a time per replica.

A write only stores the document as pending (`dss.index.sqlite_store.Writer.put`). A merger thread
picks pending documents up once there are `threshold` of them (or after `idle` seconds without
reaching it), has them built on every core (`dss.index.segment_builder`) outside any transaction,
and adds every few built chunks as one new segment in a short write transaction, while the next
chunks are still being built. Then it compacts the segments.

Several processes may serve one index: an exclusive lock on a file beside the database lets one of
them merge at a time (the others' mergers wait for it); the operating system releases it if the
holder dies. If writes outpace merging, writers wait once `backlog` documents are pending, so that
searches, which test pending documents one by one, stay fast.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from dss.index.segment_builder import Built, build_all
from dss.index.sqlite_store import MAX_CHUNKS, ReplicaStore, SegmentWriter, read_pending

__all__ = ["SegmentMerger"]

logger = logging.getLogger(__name__)

_BATCH = 4096  # pending documents read (and sent to the builders) at a time


class SegmentMerger:
    def __init__(self, store: ReplicaStore, lock_path: Path, *, threshold: int, background: bool,
                 idle: float = 2.0, backlog: int | None = None) -> None:
        self.store = store
        self.threshold = threshold
        self.background = background
        self.idle = idle
        self.backlog = backlog if backlog is not None else max(16 * threshold, 2048)
        self._lock_path = lock_path
        self._lock = threading.Lock()  # one merge at a time in this process
        self._thread_lock = threading.Lock()
        self._wake = threading.Event()
        self._progress = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------ after writes

    def written(self, pending: int) -> None:
        """Called after a write committed, with the number of pending documents it left."""
        if not self.background:
            if pending >= self.threshold:
                self.merge(drain=False)
            return
        self._start()  # even below the threshold: what is pending gets merged once writes pause
        if pending >= self.threshold:
            self._wake.set()
        if pending > self.backlog:
            self._wait_below(self.backlog)

    def _wait_below(self, limit: int) -> None:
        while not self._stopped and self.pending() > limit:
            with self._progress:
                self._progress.wait(timeout=1.0)

    def pending(self) -> int:
        with self.store.read() as (conn, _):
            return conn.execute(f"SELECT count(*) FROM {self.store.tables['pending']}").fetchone()[0]

    # ----------------------------------------------------------------------------------- merging

    def merge(self, *, drain: bool = True) -> int:
        """Merge pending documents now: all of them (`drain`), or while at least `threshold` are."""
        merged = 0
        with self._exclusive(), tempfile.TemporaryDirectory(prefix="dss-segment-") as scratch:
            segments = SegmentWriter(self.store, Path(scratch))
            try:
                while not self._stopped or drain:
                    with self.store.read() as (conn, fields):
                        sources = read_pending(conn, self.store.tables, _BATCH)
                        types = {name: field_type.value for name, field_type in fields.map.items()}
                    if not sources or (not drain and len(sources) < self.threshold):
                        break
                    done: list[Built] = []
                    for built in build_all(types, sources, Path(scratch)):
                        done.append(built)
                        if len(done) == MAX_CHUNKS:
                            merged += self._add(segments, done)
                            done = []
                    if done:
                        merged += self._add(segments, done)
            finally:
                segments.close()
        return merged

    def _add(self, segments: SegmentWriter, chunks: list[Built]) -> int:
        added = segments.add(chunks)
        segments.compact()
        with self._progress:
            self._progress.notify_all()
        return added

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._lock, open(self._lock_path, "a+b") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    # ------------------------------------------------------------------------------------ thread

    def _start(self) -> None:
        if self._thread is not None:
            return
        with self._thread_lock:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name="dss-index-merger", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stopped:
            woken = self._wake.wait(timeout=self.idle)
            self._wake.clear()
            if self._stopped:
                break
            try:
                self.merge(drain=not woken)  # idle: whatever is pending, however few
            except Exception:  # noqa: BLE001 - the thread must survive; the next round retries
                logger.exception("Merging pending search documents failed")
                time.sleep(self.idle)

    def stop(self) -> None:
        with self._thread_lock:
            self._stopped = True
        self._wake.set()
        with self._progress:
            self._progress.notify_all()
        if self._thread is not None:
            self._thread.join()
