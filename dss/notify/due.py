"""Deliver what is due, in parallel, until a deadline: the notify Lambda's whole job (no thread outlives it).

The notify daemon (``dss-<stage>-notify``, every minute) calls::

    deadline = time.monotonic() + remaining_seconds - store.timeout
    summary = deliver_due(store, deadline)

One thread (the caller's) claims due deliveries one at a time and hands each to a pool of at most
``concurrency`` threads, which send the request and record the outcome. No claim is made after
``deadline``; attempts already sent are waited for (each is bounded by the store's request timeout, which
is why the deadline leaves that much of the invocation). When nothing is due and nothing is in flight it
returns at once; a retry that falls due later is the next invocation's. A finish that fails (the table
unreachable) is logged and counted: the lease runs out and the attempt is settled as lost, then retried.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Any

from dss.notify.queue import Claim, DeliveryQueue

__all__ = ["deliver_due", "DeliveryRun", "DEFAULT_CONCURRENCY"]

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = 8


@dataclass
class DeliveryRun:
    """What one :func:`deliver_due` call did. ``failed`` attempts will be retried; ``dead`` ones were the last."""

    attempts: int = 0
    delivered: int = 0
    failed: int = 0
    dead: int = 0
    errors: int = 0  # attempts whose outcome could not be recorded
    deadline_reached: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def deliver_due(store: DeliveryQueue, deadline: float, *, concurrency: int = DEFAULT_CONCURRENCY,
                monotonic: Callable[[], float] = time.monotonic) -> DeliveryRun:
    """Make every attempt due now (and those falling due while it runs) until ``deadline``, a
    ``monotonic()`` instant; at most ``concurrency`` at a time. Returns once all threads have ended."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    run = DeliveryRun()
    lock = threading.Lock()

    def deliver(claim: Claim) -> None:
        result = store.attempt(claim)
        try:
            store.finish(claim, result)
        except Exception:
            logger.exception("Delivery %s: could not record attempt %d", claim.delivery_id, claim.attempt)
            with lock:
                run.errors += 1
            return
        with lock:
            if result.delivered:
                run.delivered += 1
            elif claim.attempt >= store.max_attempts:
                run.dead += 1
            else:
                run.failed += 1

    with ThreadPoolExecutor(concurrency, thread_name_prefix="dss-notify-due") as pool:
        running: set[Future[None]] = set()
        while True:
            left = deadline - monotonic()
            if left <= 0:
                run.deadline_reached = True
                break
            if len(running) < concurrency:
                claim = store.claim()
                if claim is not None:
                    run.attempts += 1
                    running.add(pool.submit(deliver, claim))
                    continue
                if not running:
                    break
            # Full, or nothing due right now: wait for an attempt to end (its retry may be due at once).
            _, running = wait(running, timeout=left, return_when=FIRST_COMPLETED)
    logger.info("Webhook deliveries: %s", run.to_json())
    return run
