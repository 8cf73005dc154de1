"""The embedded default's compaction loop: every `DSS_EVENTS_COMPACT_INTERVAL` seconds, compact each
replica's events journal (full journals while enough events are pending; then a partial one of events
that have waited longer than the interval). In the cloud a scheduled function calls `compact_all`.

Any number of processes may run it at once: journals are committed with a conditional create (see
`dss.journal`), so running it in every server process of a data directory is safe.
"""
from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Mapping

from dss.identifiers import Replica, new_version
from dss.journal import EventJournal

__all__ = ["JournalCompactor", "compact_all"]

logger = logging.getLogger(__name__)


def compact_all(journals: Mapping[Replica, EventJournal], wait: float) -> dict[str, int]:
    """One pass over every replica; events recorded more than `wait` seconds ago are written even if
    they fill no journal (0: everything pending). Journals written, per replica."""
    since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=wait)
    flush_before = new_version(since) if wait > 0 else "~"  # "~" sorts after every version
    return {replica.value: journal.compact(flush_before=flush_before) for replica, journal in journals.items()}


class JournalCompactor:
    def __init__(self, journals: Mapping[Replica, EventJournal], interval: float) -> None:
        self.journals = journals
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="dss-journal-compactor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                compact_all(self.journals, self.interval)
            except Exception:  # noqa: BLE001 - a store hiccup: the next pass starts over, losing nothing
                logger.warning("Events journal compaction failed; retrying in %g s", self.interval, exc_info=True)
