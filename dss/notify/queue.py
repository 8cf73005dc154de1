"""The delivery queue's contract, shared by its backends, and the values it hands out.

A :class:`DeliveryQueue` is the durable queue of webhook deliveries and their log. Two backends implement
it with the same behaviour: :class:`dss.notify.store.DeliveryStore` (one SQLite file, the embedded
default) and :class:`dss.notify.dynamodb.DynamoDBDeliveryStore` (a DynamoDB table, the cloud). Life of a
delivery (``state``)::

    enqueue ──> pending ──(2xx)──────────────────────────> delivered
                  │  ^
                  │  └─(failure, tries left: due again after delays[n])
                  └────(failure on the last try)──────────> dead

* **Retries**: ``delays[0]`` is the wait before the first attempt; after failed attempt *n* the next is due
  ``delays[n]`` seconds later; there are ``len(delays)`` attempts in all (``DSS_NOTIFY_DELAYS``).
* **Leases**: :meth:`DeliveryQueue.claim` leases one due delivery to its caller under a random token, for
  ``lease_seconds``; only the token's holder moves the delivery on in :meth:`DeliveryQueue.finish`. A lease
  that runs out with its attempt still open is settled as a failed attempt (outcome ``lost``) by the next
  claimer. Subscribers may therefore see duplicates, never a silent loss (unless the lost try was the last).
* **Secrets**: the HMAC secret is stored apart from the rest, never returned by the log, and wiped when the
  delivery finishes.

The base class derives the worker loop (:meth:`process_one`, :meth:`run_due`) from the primitives; the
backends implement storage only.
"""
from __future__ import annotations

import abc
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from dss.config import DEFAULT_NOTIFY_DELAYS
from dss.notify.delivery import Delivery
from dss.notify.transport import AttemptResult, HttpTransport, Transport, describe_error
from dss.notify.urlsafety import AllowList, redact_url

__all__ = ["DeliveryQueue", "DeliveryRecord", "AttemptRecord", "Claim", "STATES", "LEASE_MARGIN", "LOST",
           "MAX_LIMIT"]

logger = logging.getLogger(__name__)

STATES = ("pending", "delivered", "dead")
LEASE_MARGIN = 30.0  # seconds beyond the request timeout before an attempt counts as lost
MAX_LIMIT = 1000  # most log entries one call returns
LOST = "lease expired before the attempt finished (worker stopped or stalled)"


@dataclass(frozen=True)
class AttemptRecord:
    number: int
    started_at: float
    duration: float | None
    status_code: int | None
    error: str | None
    outcome: str

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DeliveryRecord:
    """One delivery as the owner sees it. ``next_attempt_at`` is set only while a retry is scheduled."""

    delivery_id: str
    subscription_id: str
    owner: str
    event_id: str
    callback_url: str
    method: str
    encoding: str
    state: str
    in_flight: bool
    created_at: float
    next_attempt_at: float | None
    finished_at: float | None
    last_error: str | None
    attempts: tuple[AttemptRecord, ...]

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["attempts"] = [a.to_json() for a in self.attempts]
        return data


@dataclass(frozen=True)
class Claim:
    """A leased attempt: only the holder of ``token`` may settle it."""

    delivery_id: str
    token: str
    attempt: int
    started_at: float
    delivery: Delivery


def validate_delays(delays: Iterable[float]) -> tuple[float, ...]:
    result = tuple(float(d) for d in delays)
    if not result or any(d < 0 for d in result):
        raise ValueError("delays must be a non-empty sequence of non-negative seconds")
    return result


def check_state(state: str | None) -> None:
    if state is not None and state not in STATES:
        raise ValueError(f"state must be one of {STATES}")


class DeliveryQueue(abc.ABC):
    """The delivery queue and log, plus the worker API that drains it. Safe to share between threads.

    ``transport`` defaults to real HTTP with ``timeout`` and ``allowlist``; ``clock`` is injectable so tests
    can move time without sleeping. Every ``now`` argument defaults to ``clock()``.
    """

    def __init__(self, *, transport: Transport | None = None, delays: Sequence[float] = DEFAULT_NOTIFY_DELAYS,
                 timeout: float = 60.0, allowlist: AllowList | str | Iterable[str] | None = None,
                 lease_seconds: float | None = None, clock: Callable[[], float] = time.time) -> None:
        self.delays = validate_delays(delays)
        self.timeout = float(timeout)
        self.lease_seconds = float(lease_seconds) if lease_seconds is not None else timeout + LEASE_MARGIN
        self._transport = transport or HttpTransport(timeout=timeout, allowlist=allowlist)
        self._clock = clock
        self._listeners: list[Callable[[], None]] = []

    @property
    def max_attempts(self) -> int:
        return len(self.delays)

    def now(self) -> float:
        return self._clock()

    def __enter__(self) -> DeliveryQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- producers ---------------------------------------------------------------------------------

    def add_listener(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after each enqueue (a worker uses this to wake up at once)."""
        self._listeners.append(callback)

    def remove_listener(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self._listeners.remove(callback)

    @abc.abstractmethod
    def enqueue(self, delivery: Delivery, *, now: float | None = None) -> str:
        """Store ``delivery`` durably and return its id. The same (subscription, event) is stored once;
        enqueueing it again returns the first id."""

    @abc.abstractmethod
    def cancel(self, subscription_id: str, *, reason: str = "subscription deleted",
               now: float | None = None) -> int:
        """Dead-letter every pending delivery of a subscription; returns how many."""

    @abc.abstractmethod
    def prune(self, finished_before: float) -> int:
        """Forget finished (delivered or dead) deliveries older than ``finished_before``; returns how many."""

    # -- workers -----------------------------------------------------------------------------------

    def process_one(self, now: float | None = None) -> bool:
        """Make one due attempt, if any is due at ``now``; returns whether it did."""
        claim = self.claim(now)
        if claim is None:
            return False
        self.finish(claim, self.attempt(claim), now=now)
        return True

    def run_due(self, now: float | None = None, limit: int | None = None) -> int:
        """Make attempts until nothing is due (or ``limit`` attempts); returns how many were made."""
        made = 0
        while (limit is None or made < limit) and self.process_one(now):
            made += 1
        return made

    def attempt(self, claim: Claim) -> AttemptResult:
        """Send the claimed attempt through the transport. Never raises for a delivery failure."""
        try:
            return self._transport(claim.delivery, claim.attempt)
        except Exception as e:  # a bug in the transport must not wedge the delivery until its lease runs out
            logger.exception("Delivery %s: transport failed unexpectedly", claim.delivery_id)
            return AttemptResult(False, None, f"internal error: {describe_error(e)}")

    @abc.abstractmethod
    def next_due_at(self) -> float | None:
        """When the earliest pending delivery becomes due (or its lease runs out); None if none is pending."""

    @abc.abstractmethod
    def claim(self, now: float | None = None) -> Claim | None:
        """Settle expired leases, then lease the earliest due delivery and open its next attempt. Lower level
        than :meth:`process_one`, for callers that send the request themselves; settle with :meth:`finish`."""

    @abc.abstractmethod
    def finish(self, claim: Claim, result: AttemptResult, *, now: float | None = None) -> None:
        """Record the outcome of a claimed attempt and move the delivery on, if the lease is still held.
        A holder that lost its lease records the attempt's outcome only; a late success still finishes the
        delivery if it is pending and nobody else holds it."""

    # -- owner API ---------------------------------------------------------------------------------

    @abc.abstractmethod
    def deliveries(self, subscription_id: str, *, owner: str | None = None, limit: int = 100,
                   state: str | None = None, before: float | None = None) -> list[DeliveryRecord]:
        """The delivery log of a subscription, newest first. ``owner`` restricts it to that owner's rows;
        ``before`` (a ``created_at``) pages further back. Never includes secrets."""

    @abc.abstractmethod
    def get(self, delivery_id: str) -> DeliveryRecord | None: ...

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections; the store may not be used afterwards."""

    # -- shared internals --------------------------------------------------------------------------

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    def _notify_listeners(self) -> None:
        for callback in list(self._listeners):
            callback()

    def _log_outcome(self, claim: Claim, result: AttemptResult) -> None:
        url = redact_url(claim.delivery.callback_url)
        what = result.status_code if result.error is None else result.error
        if result.delivered:
            logger.info("Delivery %s (subscription %s) delivered to %s on attempt %d: %s", claim.delivery_id,
                        claim.delivery.subscription_id, url, claim.attempt, what)
        elif claim.attempt >= self.max_attempts:
            logger.warning("Delivery %s (subscription %s) to %s dead after %d attempts: %s", claim.delivery_id,
                           claim.delivery.subscription_id, url, claim.attempt, what)
        else:
            logger.info("Delivery %s (subscription %s) attempt %d to %s failed, will retry: %s",
                        claim.delivery_id, claim.delivery.subscription_id, claim.attempt, url, what)
