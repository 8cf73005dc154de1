"""Subscriptions: who wants to hear about which bundles, and where to tell them.

Two kinds share one store and one API, told apart by ``subscription_type``:

* **jmespath** — a bundle matches when the subscription has no ``jmespath_query`` or the query is truthy
  on the bundle's document (a JMESPath error means no match);
* **elasticsearch** — an ``es_query`` registered with the search index as a percolator query; a bundle
  matches when percolating its document returns the subscription.

Table layout (one table, see `dss.tables`):

    hash_key "<replica>:<owner>"  sort_key "<uuid>"        the subscription record (secret included)
    hash_key "_meta"              sort_key "generation"    {"generation": <random token>}

Owner operations (list, count for the limit, get, delete) are single-partition queries. Matching needs
every subscription of a replica; instead of scanning the table on each bundle event, the service keeps
an in-memory snapshot (records by uuid and a compiled :class:`~dss.subscriptions.matching.ExpressionSet`
per replica). Every create or delete writes a new generation token, *after* the record, and matching
reads the token (one small get) before using the snapshot, rebuilding it from a scan when it changed.
So a process sees other processes' changes by the next event, and a snapshot is never older than the
token it was built after.

The limit (``limit`` per owner, replica and kind, like the original's two stores) is checked and the
record written under a lock, so one process never exceeds it; concurrent creates in different
processes can overshoot it by the number of racing writers.
"""
from __future__ import annotations

import logging
import threading
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from jmespath.exceptions import JMESPathError

from dss.errors import Forbidden, NotFound, TooManySubscriptions
from dss.identifiers import Replica, normalise_uuid
from dss.index.backend import SearchIndex
from dss.notify import AllowList, DeliveryQueue, check_callback_url
from dss.notify.urlsafety import Resolver
from dss.subscriptions.limits import ExpressionTooComplex, compile_expression
from dss.subscriptions.matching import ExpressionSet
from dss.subscriptions.model import (
    InvalidAttachmentExpression,
    InvalidAttachmentName,
    InvalidJMESPath,
    Subscription,
    SubscriptionTooLarge,
    SubscriptionType,
)
from dss.tables import Table

__all__ = [
    "SubscriptionService", "Subscription", "SubscriptionType", "InvalidJMESPath", "InvalidAttachmentName",
    "InvalidAttachmentExpression", "SubscriptionTooLarge", "DEFAULT_LIMIT",
]

logger = logging.getLogger(__name__)

DEFAULT_LIMIT = 100
_META = ("_meta", "generation")  # "_meta" has no ':', so it never collides with "<replica>:<owner>"


def _partition(replica: str, owner: str) -> str:
    return f"{Replica(replica).value}:{owner}"


def _parse(record: Mapping[str, Any] | None) -> Subscription | None:
    if record is None or "subscription_type" not in record:
        return None  # absent, or the generation row
    try:
        return Subscription.from_record(record)
    except (KeyError, TypeError, ValueError) as e:
        # Only a record written by other code can get here; skip it rather than fail every caller.
        logger.error("Skipping unreadable subscription record %s: %s", record.get("uuid"), type(e).__name__)
        return None


@dataclass(frozen=True)
class _Snapshot:
    """Every subscription as of one generation, indexed for matching."""

    generation: str | None
    by_uuid: Mapping[str, Subscription] = field(default_factory=dict)
    match_all: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # replica → jmespath subs, no query
    expressions: Mapping[str, ExpressionSet] = field(default_factory=dict)  # replica → jmespath subs, a query
    percolated: frozenset[str] = frozenset()  # replicas with elasticsearch subscriptions


class SubscriptionService:
    def __init__(self, table: Table, search: SearchIndex, *, allowlist: AllowList | str | Iterable[str] | None = None,
                 limit: int = DEFAULT_LIMIT, resolver: Resolver | None = None,
                 deliveries: DeliveryQueue | None = None) -> None:
        self._table = table
        self._search = search
        self._allowlist = AllowList.parse(allowlist)
        self._limit = limit
        self._resolver = resolver
        self._deliveries = deliveries
        self._write_lock = threading.Lock()
        self._snapshot_lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        self._parsed: dict[str, Any] = {}  # JMESPath trees by text, kept between snapshot builds

    # --- the API's operations ---------------------------------------------------------------------
    def put(self, replica: str, owner: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a subscription from a PUT body; returns it as the API shows it (no secret)."""
        subscription = Subscription.from_request(str(uuidlib.uuid4()), owner, Replica(replica).value, body)
        check_callback_url(subscription.callback_url, self._allowlist, resolver=self._resolver)
        with self._write_lock:
            self._check_limit(subscription)
            self._store(subscription)
        self._touch()
        logger.info("Created %s subscription %s in %s", subscription.subscription_type.value, subscription.uuid,
                    subscription.replica)
        return subscription.to_api()

    def get(self, replica: str, owner: str, uuid: str, subscription_type: str) -> dict[str, Any]:
        return self._owned(replica, owner, uuid, SubscriptionType(subscription_type)).to_api()

    def find(self, replica: str, owner: str, subscription_type: str) -> list[dict[str, Any]]:
        kind = SubscriptionType(subscription_type)
        return [s.to_api() for s in self._of_owner(replica, owner) if s.subscription_type is kind]

    def delete(self, replica: str, owner: str, uuid: str, subscription_type: str) -> None:
        """Delete the caller's subscription, its percolator query and its pending deliveries."""
        subscription = self._owned(replica, owner, uuid, SubscriptionType(subscription_type))
        # The record goes first: once it and the new generation are written, no event matches it any more,
        # whatever happens to the steps after (a leftover percolator query without a record is ignored).
        self._table.delete(_partition(replica, owner), subscription.uuid)
        self._touch()
        if subscription.subscription_type is SubscriptionType.elasticsearch:
            self._search.remove_subscription_query(subscription.replica, subscription.uuid)
        if self._deliveries is not None:
            self._deliveries.cancel(subscription.uuid)
        logger.info("Deleted %s subscription %s in %s", subscription.subscription_type.value, subscription.uuid,
                    subscription.replica)

    # --- what the notifier needs --------------------------------------------------------------------
    def matching(self, replica: str, document: Mapping[str, Any]) -> list[Subscription]:
        """Every subscription of ``replica`` that ``document`` matches, secrets included (to sign)."""
        replica = Replica(replica).value
        snapshot = self._fresh_snapshot()
        uuids = list(snapshot.match_all.get(replica, ()))
        expressions = snapshot.expressions.get(replica)
        if expressions is not None:
            uuids.extend(str(u) for u in expressions.matching(document))
        if replica in snapshot.percolated:
            uuids.extend(self._percolated(snapshot, replica, document))
        return [snapshot.by_uuid[u] for u in dict.fromkeys(uuids)]

    # --- internals ------------------------------------------------------------------------------------
    def _of_owner(self, replica: str, owner: str) -> list[Subscription]:
        parsed = (_parse(r) for r in self._table.query(_partition(replica, owner)))
        return [s for s in parsed if s is not None]

    def _check_limit(self, subscription: Subscription) -> None:
        kind = subscription.subscription_type
        count = sum(1 for s in self._of_owner(subscription.replica, subscription.owner) if s.subscription_type is kind)
        if count > self._limit:  # as the original: an owner may reach limit + 1
            raise TooManySubscriptions(f"Users cannot have more than {self._limit} subscriptions!")

    def _store(self, subscription: Subscription) -> None:
        es = subscription.subscription_type is SubscriptionType.elasticsearch
        if es:
            # Validates the query (QueryError → 400) before anything is stored.
            self._search.add_subscription_query(subscription.replica, subscription.uuid,
                                                subscription.es_query or {})
        try:
            self._table.put(_partition(subscription.replica, subscription.owner), subscription.uuid,
                            subscription.to_record(), if_absent=True)
        except BaseException:
            if es:
                self._search.remove_subscription_query(subscription.replica, subscription.uuid)
            raise

    def _owned(self, replica: str, owner: str, uuid: str, kind: SubscriptionType) -> Subscription:
        uuid = normalise_uuid(uuid)
        found = _parse(self._table.get(_partition(replica, owner), uuid))
        if found is not None and found.subscription_type is kind:
            return found
        # The original answered 403 for another owner's elasticsearch subscription, 404 for a jmespath one.
        if kind is SubscriptionType.elasticsearch:
            other = self._fresh_snapshot().by_uuid.get(uuid)
            if other is not None and other.subscription_type is kind and other.replica == Replica(replica).value:
                raise Forbidden("Unauthorized to access this subscription")
        raise NotFound(f"Cannot find subscription with UUID {uuid}")

    def _touch(self) -> None:
        self._table.put(*_META, {"generation": uuidlib.uuid4().hex})

    def _generation(self) -> str | None:
        meta = self._table.get(*_META)
        return None if meta is None else str(meta.get("generation"))

    def _fresh_snapshot(self) -> _Snapshot:
        generation = self._generation()
        snapshot = self._snapshot
        if snapshot is not None and snapshot.generation == generation:
            return snapshot
        with self._snapshot_lock:
            snapshot = self._snapshot
            if snapshot is None or snapshot.generation != generation:
                # The token was read before the scan, so the snapshot holds at least what it names.
                snapshot = self._snapshot = self._build_snapshot(generation)
            return snapshot

    def _build_snapshot(self, generation: str | None) -> _Snapshot:
        by_uuid: dict[str, Subscription] = {}
        match_all: dict[str, list[str]] = {}
        queries: dict[str, list[tuple[str, str]]] = {}
        percolated: set[str] = set()
        for record in self._table.scan():
            subscription = self._readable(record)
            if subscription is None:
                continue
            by_uuid[subscription.uuid] = subscription
            if subscription.subscription_type is SubscriptionType.elasticsearch:
                percolated.add(subscription.replica)
            elif subscription.jmespath_query:
                queries.setdefault(subscription.replica, []).append((subscription.uuid, subscription.jmespath_query))
            else:
                match_all.setdefault(subscription.replica, []).append(subscription.uuid)
        live = {text for pairs in queries.values() for _, text in pairs}
        self._parsed = {text: tree for text, tree in self._parsed.items() if text in live}
        logger.debug("Subscription snapshot %s: %d subscriptions", generation, len(by_uuid))
        return _Snapshot(generation, by_uuid, {r: tuple(u) for r, u in match_all.items()},
                         {r: ExpressionSet(pairs, parsed=self._parsed) for r, pairs in queries.items()},
                         frozenset(percolated))

    def _readable(self, record: Mapping[str, Any]) -> Subscription | None:
        subscription = _parse(record)
        query = subscription.jmespath_query if subscription is not None else None
        if query and query not in self._parsed:
            try:
                self._parsed[query] = compile_expression(query).parsed
            except (JMESPathError, ExpressionTooComplex) as e:  # stored before today's bounds existed
                logger.error("Skipping subscription %s: its stored query does not parse (%s)", record.get("uuid"), e)
                return None
        return subscription

    def _percolated(self, snapshot: _Snapshot, replica: str, document: Mapping[str, Any]) -> list[str]:
        found = []
        for uuid in self._search.percolate(replica, document):
            subscription = snapshot.by_uuid.get(uuid)
            if subscription is None or subscription.subscription_type is not SubscriptionType.elasticsearch \
                    or subscription.replica != replica:
                # A query whose record is gone (deleted, or a create that failed half-way): not a subscriber.
                logger.debug("Percolator query %s has no subscription record; ignored", uuid)
                continue
            found.append(uuid)
        return found
