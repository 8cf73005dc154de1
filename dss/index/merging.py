"""Turning pending documents into segments, in the background, one merger at a time per replica.

A write only stores the document as pending (`dss.index.sqlite_store.Writer.put`). A merger thread
picks pending documents up once there are `threshold` of them (or after `idle` seconds without
reaching it), has them built on every core (`dss.index.segment_builder`) outside any transaction,
and adds each built chunk as a new segment in a short write transaction.

Compaction (merging segments, `SegmentWriter.compact`) runs in a thread of its own, so that a long
merge of large segments does not hold up new ones. Several processes may serve one index: exclusive
locks on files beside the database let one of them add segments and one compact at a time (the
others wait); the operating system releases them if the holder dies. If writes outpace merging,
writers wait once `backlog` documents are pending, so that searches, which test pending documents
one by one, stay fast.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from dss.index.segment_builder import Built, build_all
from dss.index.sqlite_store import ReplicaStore, SegmentWriter, read_pending

__all__ = ["SegmentMerger"]

logger = logging.getLogger(__name__)

_BATCH = 4096  # pending documents read (and sent to the builders) at a time
_BACKLOG_PATIENCE = 60.0  # seconds a writer waits for merging to catch up


class SegmentMerger:
    """Moves one replica's pending documents into segments and keeps the segments compacted."""

    def __init__(self, store: ReplicaStore, lock_path: Path, *, threshold: int, background: bool,
                 idle: float = 2.0, backlog: int | None = None) -> None:
        self.store = store
        self.threshold = threshold
        self.background = background
        self.idle = idle
        self.backlog = backlog if backlog is not None else max(16 * threshold, 2048)
        self._merging = _Exclusive(lock_path.with_name(lock_path.name + ".merge"), lambda: self._stopped)
        self._compacting = _Exclusive(lock_path.with_name(lock_path.name + ".compact"), lambda: self._stopped)
        self._progress = threading.Condition()
        self._stopped = False
        # adding segments and merging them run apart: a long merge must not hold up new segments
        self._merger = _Loop("dss-index-merger", idle, lambda woken: self.merge(drain=not woken))
        self._compactor = _Loop("dss-index-compactor", idle, lambda _: self.compact())

    # ------------------------------------------------------------------------------ after writes

    def written(self, pending: int, *, wait: bool = True) -> None:
        """Called after a write committed, with the number of pending documents it left; `wait`:
        whether to hold the caller while more than `backlog` are pending."""
        if not self.background:
            if pending >= self.threshold:
                self.merge(drain=False)
            return
        self._merger.start()  # even below the threshold: what is pending gets merged once writes pause
        if pending >= self.threshold:
            self._merger.wake()
        if wait and pending > self.backlog:
            self._wait_below(self.backlog)

    def _wait_below(self, limit: int) -> None:
        """Hold the writer while merging catches up, but not for ever: a merger that keeps failing
        must not stop writes (searches get slower instead, and the failure is logged)."""
        deadline = time.monotonic() + _BACKLOG_PATIENCE
        while not self._stopped and self.pending() > limit:
            if time.monotonic() > deadline:
                logger.warning("%d search documents are waiting to be merged; writing on", self.pending())
                return
            with self._progress:
                self._progress.wait(timeout=1.0)

    def pending(self) -> int:
        with self.store.read() as (conn, _):
            return conn.execute(f"SELECT count(*) FROM {self.store.tables['pending']}").fetchone()[0]

    # ----------------------------------------------------------------------------------- merging

    def refresh(self) -> None:
        """Every pending document into segments, and the segments compacted, now."""
        self.merge()
        self.compact()

    def merge(self, *, drain: bool = True) -> int:
        """Add pending documents as segments now: all of them (`drain`), or while at least `threshold` are."""
        merged = 0
        with self._writing(self._merging) as segments:
            while not self._stopped:
                with self.store.read() as (conn, fields):
                    sources = read_pending(conn, self.store.tables, _BATCH)
                    types = {name: field_type.value for name, field_type in fields.map.items()}
                if not sources or (not drain and len(sources) < self.threshold):
                    break
                for built in build_all(types, sources, segments.directory):
                    merged += self._add(segments, built)
        return merged

    def _add(self, segments: SegmentWriter, built: Built) -> int:
        added = segments.add(built)
        if self.background:
            self._compactor.start()
            self._compactor.wake()
        else:
            segments.compact()
        with self._progress:
            self._progress.notify_all()
        return added

    def compact(self) -> None:
        with self._writing(self._compacting) as segments:
            segments.compact()

    @contextlib.contextmanager
    def _writing(self, turn: _Exclusive) -> Iterator[SegmentWriter]:
        """A SegmentWriter with a scratch directory of its own, once it is this one's turn."""
        with turn, tempfile.TemporaryDirectory(prefix="dss-segment-") as scratch:
            segments = SegmentWriter(self.store, Path(scratch))
            try:
                yield segments
            finally:
                segments.close()

    def stop(self) -> None:
        self._stopped = True
        with self._progress:
            self._progress.notify_all()
        self._merger.stop()
        self._compactor.stop()


class Stopped(Exception):
    """The merger stopped while waiting for its turn."""


class _Exclusive:
    """One holder at a time: a thread of this process, holding an exclusive lock on a file that
    other processes lock too (the operating system releases it if the holder dies). Waiting for
    another process ends with `Stopped` once `stopped()` is true, so that shutting down never
    waits for another process's merge."""

    def __init__(self, path: Path, stopped: Callable[[], bool]) -> None:
        self.path = path
        self.stopped = stopped
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._file = open(self.path, "a+b")  # noqa: SIM115 - held until __exit__
            while True:
                try:
                    fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    return
                except BlockingIOError:
                    if self.stopped():
                        raise Stopped() from None
                    time.sleep(0.05)
        except BaseException:
            self._release()
            raise

    def __exit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the lock
            self._file = None
        self._lock.release()


class _Loop:
    """A daemon thread that runs `work(woken)` when woken, or after `idle` seconds (woken False)."""

    def __init__(self, name: str, idle: float, work: Callable[[bool], object]) -> None:
        self.name = name
        self.idle = idle
        self.work = work
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        with self._lock:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        while not self._stopped:
            woken = self._wake.wait(timeout=self.idle)
            self._wake.clear()
            if self._stopped:
                break
            try:
                self.work(woken)
            except Stopped:
                break
            except Exception:  # noqa: BLE001 - the thread must survive; the next round retries
                logger.exception("%s failed", self.name)
                time.sleep(self.idle)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
