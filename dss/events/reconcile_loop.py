"""The embedded default's schedule for the anti-entropy pass (`dss.events.reconcile`) and its start-up
housekeeping.

`ReconcileLoop` runs a pass at start-up and then every `interval` seconds (`DSS_RECONCILE_INTERVAL`;
0 keeps only the start-up pass) in a daemon thread. Several server processes share one data directory
(`DSS_API_PROCESSES`), so a pass holds an exclusive `flock` on `<state>.lock` (released by the
operating system if its process dies) and records when it started in `<state>` (JSON). A process
skips its start-up pass if a pass *started* after the process did (that pass saw every object
committed before it), and a periodic pass if one started less than `interval` ago: N processes do
about one pass per interval between them.

`remove_orphans` deletes what interrupted writes leave on local disk: temp files in local blob stores
and spool files of PUT /files, both named after their writer's pid, so a live sibling's are kept.
Spool files of older versions carry no owner: those are removed only once they are older than the
caller's start and than `SPOOL_GRACE` (a live upload writes its spool continuously and removes it
seconds after the last write).
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from dss.events.reconcile import Cancelled
from dss.storage.blobstore import BlobStore
from dss.storage.blobstore.local import remove_orphaned_files

__all__ = ["ReconcileLoop", "remove_orphans", "SPOOL_GRACE"]

logger = logging.getLogger(__name__)

SPOOL_GRACE = 600.0  # seconds without a write after which an ownerless spool file is an orphan
Work = Callable[[Callable[[], bool]], Mapping[str, Any]]  # given "should I stop?", returns a report


def remove_orphans(stores: Iterable[BlobStore], spool_dir: Path, before: float, now: float | None = None) -> int:
    """Delete temp files of interrupted writes older than `before` (epoch seconds); returns how many."""
    removed = 0
    for store in stores:
        # Only local stores keep temp files of their own; buckets expire incomplete uploads by lifecycle rules.
        remove = getattr(store, "remove_orphaned_temporaries", None)
        if remove is not None:
            removed += remove(before)
    # Spool files are named after their writer's pid like temp files; unnamed ones (older versions) are
    # removed once older than SPOOL_GRACE too.
    grace = min(before, (time.time() if now is None else now) - SPOOL_GRACE)
    removed += remove_orphaned_files(spool_dir, before, unnamed_before=grace)
    if removed:
        logger.info("Removed %d temp and spool files left by interrupted writes", removed)
    return removed


class ReconcileLoop:
    """Runs `work` at start-up and every `interval` seconds, in one process at a time (module docstring).

    `started` is the owner's start (epoch seconds); `retry` the pause after a failed pass."""

    def __init__(self, work: Work, state_path: Path, interval: float, *, started: float | None = None,
                 retry: float = 60.0) -> None:
        self.work = work
        self.state_path = state_path
        self.lock_path = state_path.with_name(state_path.name + ".lock")
        self.interval = interval
        self.started = time.time() if started is None else started
        self.retry = retry
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="dss-reconcile", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask a running pass to stop between two keys, and wait a bounded time for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def run(self, *, startup: bool = False, force: bool = False) -> Mapping[str, Any] | None:
        """Run a pass now if one is due (`force`: whatever the schedule); its report, or None if skipped.
        Waits while another process runs one."""
        with self._exclusive():
            last = self.last_started()
            if not force:
                if startup and last >= self.started:
                    return None
                if not startup and (not self.interval or time.time() - last < self.interval):
                    return None
            begun = time.time()
            report = self.work(self._stop.is_set)
            self._record(begun, report)
            return report

    def last_started(self) -> float:
        try:
            return float(json.loads(self.state_path.read_text())["started"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return 0.0

    def _run(self) -> None:
        startup = True
        while not self._stop.is_set():
            try:
                self.run(startup=startup)
                startup = False
                if not self.interval:
                    return
                pause = max(1.0, self.last_started() + self.interval - time.time())
            except Cancelled:
                return
            except Exception:  # noqa: BLE001 - the thread must survive; the next round retries
                logger.exception("Reconciliation failed; trying again in %.0f s", self.retry)
                pause = self.retry
            if self._stop.wait(pause):
                return

    def _record(self, begun: float, report: Mapping[str, Any]) -> None:
        state = {"started": begun, "finished": time.time(), "pid": os.getpid(), "report": dict(report)}
        temp = self.state_path.with_name(f"{self.state_path.name}.{os.getpid()}.tmp")
        temp.write_text(json.dumps(state))
        os.replace(temp, self.state_path)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+b") as handle:
            _lock(handle, self._stop.is_set)
            yield  # closing the file releases the lock


def _lock(handle: IO[bytes], stopped: Callable[[], bool]) -> None:
    """Take an exclusive flock, polling so that a shutdown does not wait for another process's pass."""
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if stopped():
                raise Cancelled() from None
            time.sleep(0.2)
