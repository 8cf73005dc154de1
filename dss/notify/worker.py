"""Background threads that drain a :class:`~dss.notify.queue.DeliveryQueue` (used by the embedded server).

Each thread makes due attempts until none is left, then sleeps until the next due time, an enqueue on
the same store object, or :meth:`DeliveryWorker.stop`, whichever comes first. The sleep is capped
(``max_sleep``) so work enqueued through another store object or process, and expired leases, are
noticed too. Wake-ups are counted, not flagged, so one that arrives while a thread is busy is not lost.

``stop()`` returns as soon as idle threads notice; a thread in the middle of an HTTP attempt finishes
that attempt first (bounded by the request timeout). Threads are daemons, so an attempt still running
at interpreter exit is abandoned and its lease makes it due again after a restart.
"""
from __future__ import annotations

import logging
import threading
import time

from dss.notify.queue import DeliveryQueue

__all__ = ["DeliveryWorker"]

logger = logging.getLogger(__name__)

_ERROR_BACKOFF = 1.0  # seconds to wait after an unexpected error (e.g. database locked for too long)
# Never spin: a due time in the past with nothing claimable (another thread just took it) waits this long.
_MIN_SLEEP = 0.05


class DeliveryWorker:
    def __init__(self, store: DeliveryQueue, *, threads: int = 2, max_sleep: float = 30.0,
                 name: str = "dss-notify") -> None:
        if threads < 1:
            raise ValueError("a delivery worker needs at least one thread")
        self._store = store
        self._thread_count = threads
        self._max_sleep = max_sleep
        self._name = name
        self._threads: list[threading.Thread] = []
        self._cond = threading.Condition()
        self._wakeups = 0
        self._stopping = False

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

    def start(self) -> DeliveryWorker:
        if self._threads:
            raise RuntimeError("delivery worker already started")
        self._stopping = False
        self._store.add_listener(self.wake)
        for i in range(self._thread_count):
            thread = threading.Thread(target=self._run, name=f"{self._name}-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.debug("Started %d delivery threads", self._thread_count)
        return self

    def wake(self) -> None:
        """Make sleeping threads look for due work now."""
        with self._cond:
            self._wakeups += 1
            self._cond.notify_all()

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask the threads to stop and wait up to ``timeout`` seconds; returns whether all stopped."""
        self._store.remove_listener(self.wake)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            logger.warning("Delivery threads still finishing an attempt: %s", ", ".join(alive))
        self._threads = [t for t in self._threads if t.is_alive()]
        return not alive

    def __enter__(self) -> DeliveryWorker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                seen = self._wakeups
            try:
                busy = self._store.process_one()
            except Exception:
                logger.exception("Delivery worker error; backing off")
                self._sleep(seen, _ERROR_BACKOFF)
                continue
            if not busy:
                self._sleep(seen, self._sleep_time())

    def _sleep_time(self) -> float:
        due = self._store.next_due_at()
        if due is None:
            return self._max_sleep
        return min(self._max_sleep, max(_MIN_SLEEP, due - self._store.now()))

    def _sleep(self, seen: int, seconds: float) -> None:
        # Skip the wait if anything was enqueued (or stop was asked) since this thread last looked.
        with self._cond:
            if not self._stopping and self._wakeups == seen:
                self._cond.wait(seconds)
