"""Anti-entropy: find what the events missed and re-drive it, so that the replicas and the index converge.

Two mechanisms keep replication and indexing complete without any client retry:

1. **Intents** (`dss.events.bus`, used by every writer): a write's events are made durable in the
   queue *before* its conditional create, and dropped by the worker if the key never appeared. A crash
   at any moment therefore leaves either no object, or an object with a durable event. This covers
   every write made by this version, immediately, at no cost beyond one small SQLite transaction.
2. **This pass**, the backstop for everything intents cannot see: objects committed by older versions
   (whose events were lost to a crash), events that were dead-lettered while a replica or the index
   was down, blobs whose metadata was never written (a crash between the two; intents announce the
   blob with the metadata), and writes made to a replica behind the server's back. It runs at start-up
   and then every `DSS_RECONCILE_INTERVAL` seconds in the embedded default (`ReconcileLoop`), by hand
   with `scripts/dss-ops.py sync reconcile`, or from a scheduled function in the cloud (`reconcile()`
   needs nothing but the ports: its caller provides mutual exclusion, e.g. a Lambda's reserved
   concurrency of 1).

The pass publishes events; it copies and indexes nothing itself. The handlers are idempotent, so an
event for a key already in flight costs one HEAD (sync) or one document comparison (index).

- **Replication**: for each prefix in dependency order (blobs, files, bundles with their tombstones,
  collections), both replicas are listed in key order and merge-joined, so memory stays constant
  whatever their size. A key present in one replica only gets a `sync` event from that replica (the
  direction the copy must go); the sync handler copies dependencies first anyway.
- **Indexing**: each replica's `bundles/` listing is walked one uuid at a time (its versions and
  tombstones are adjacent). Live versions are checked against the search index in batches
  (`SearchIndex.existing`); a tombstoned version must have its tombstone document. Anything else gets
  an `index` event, which also notifies subscribers who never heard of the bundle.

When nothing is missing, the pass costs one listing of each replica plus one index lookup per batch of
bundles (and one per tombstone).
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from dss.events import Event
from dss.events.bus import EventBus
from dss.identifiers import BlobKey, ObjectKey, Replica
from dss.index.backend import SearchIndex
from dss.index.document import doc_id_of, tombstone_document
from dss.storage.blobstore import BlobNotFound, BlobStore
from dss.storage.replicas import Replicas

__all__ = ["reconcile", "resync", "reindex_missing", "ReconcileReport", "SYNC_PREFIXES", "UnsortedListing",
           "Cancelled"]

logger = logging.getLogger(__name__)

# Dependency order: a file's blob, then the file, then the bundles naming it (tombstones sort with them).
SYNC_PREFIXES = ("blobs/", "files/", "bundles/", "collections/")
BATCH = 500  # documents per index lookup
Cancel = Callable[[], bool]  # polled between keys: True stops the pass (Cancelled)


class UnsortedListing(RuntimeError):
    """A replica listed keys out of order; merge-joining it with the other would report nonsense."""


class Cancelled(Exception):
    """The pass was asked to stop before it ended (the process is shutting down)."""


def _never() -> bool:
    return False


@dataclass
class ReconcileReport:
    """Events a pass published, per replica name: `resynced`, sync events from that replica (keys the
    other lacks); `reindexed`, index events in that replica. Keys still in flight count too."""
    resynced: dict[str, int] = field(default_factory=dict)
    reindexed: dict[str, int] = field(default_factory=dict)

    @property
    def published(self) -> int:
        return sum(self.resynced.values()) + sum(self.reindexed.values())

    def as_dict(self) -> dict[str, dict[str, int]]:
        return {"resynced": dict(self.resynced), "reindexed": dict(self.reindexed)}


def reconcile(replicas: Replicas, bus: EventBus, search: SearchIndex | None,
              cancelled: Cancel = _never) -> ReconcileReport:
    """One full pass: replication between the two replicas, then each replica's index (unless `search`
    is None)."""
    report = ReconcileReport()
    for replica, count in resync(replicas, bus, cancelled).items():
        report.resynced[replica.value] = count
    if search is not None:
        for replica in replicas:
            report.reindexed[replica.value] = reindex_missing(replicas[replica], replica, bus, search, cancelled)
    if report.published:
        logger.info("Reconciliation re-drove %s", report.as_dict())
    return report


def resync(replicas: Replicas, bus: EventBus, cancelled: Cancel = _never) -> dict[Replica, int]:
    """Publish a `sync` event for every key present in one replica only; counts per source replica."""
    counts = dict.fromkeys(Replica, 0)
    left, right = Replica.aws, Replica.gcp
    for prefix in SYNC_PREFIXES:
        only = _one_sided(_listing(replicas[left], prefix, left, cancelled),
                          _listing(replicas[right], prefix, right, cancelled))
        for key, in_left in only:
            if _replicable(key):
                source = left if in_left else right
                bus.publish(Event(source.value, key), handlers=("sync",))
                counts[source] += 1
    return counts


def reindex_missing(store: BlobStore, replica: Replica, bus: EventBus, search: SearchIndex,
                    cancelled: Cancel = _never) -> int:
    """Publish an `index` event for every bundle key of `store` whose document is missing or stale."""
    published = 0
    batch: dict[str, str] = {}  # doc id → manifest key, for live versions

    def flush() -> None:
        nonlocal published
        present = search.existing(replica.value, batch)
        for doc_id, key in batch.items():
            if doc_id not in present:
                bus.publish(Event(replica.value, key), handlers=("index",))
                published += 1
        batch.clear()

    for group in ObjectKey.grouped(_listing(store, "bundles/", replica, cancelled), "bundles"):
        live, stale_tombstones = _judge(store, replica, search, group)
        batch.update(live)
        for key in stale_tombstones:
            bus.publish(Event(replica.value, key), handlers=("index",))
            published += 1
        if len(batch) >= BATCH:
            flush()
    if batch:
        flush()
    return published


def _judge(store: BlobStore, replica: Replica, search: SearchIndex,
           group: list[ObjectKey]) -> tuple[dict[str, str], list[str]]:
    """For one uuid's keys: ({doc id: key} of live versions, tombstone keys whose documents are wrong).

    As the index handler does: a version's own tombstone wins over the uuid's, which covers the rest."""
    uuid = group[0].uuid
    versions = {k.version for k in group if k.version and not k.dead}
    dead = {k.version for k in group if k.dead}
    live = {} if None in dead else {doc_id_of(uuid, v): str(ObjectKey("bundles", uuid, v))
                                    for v in versions if v not in dead}
    stale: list[str] = []
    for version in sorted(v for v in dead if v is not None):
        if not _tombstone_indexed(store, replica, search, uuid, version, version):
            stale.append(str(ObjectKey("bundles", uuid, version, dead=True)))
    if None in dead and any(not _tombstone_indexed(store, replica, search, uuid, v, None)
                            for v in sorted(versions - dead)):
        stale.append(str(ObjectKey("bundles", uuid, None, dead=True)))
    return live, stale


def _tombstone_indexed(store: BlobStore, replica: Replica, search: SearchIndex, uuid: str, version: str,
                       tomb_version: str | None) -> bool:
    """Is `version`'s document the tombstone document of `bundles/<uuid>[.<tomb_version>].dead`?"""
    key = str(ObjectKey("bundles", uuid, tomb_version, dead=True))
    try:
        expected = tombstone_document(uuid, version, store.get_json(key))
    except BlobNotFound:
        return True  # gone since the listing: nothing to index
    return search.get(replica.value, doc_id_of(uuid, version)) == expected


def _replicable(key: str) -> bool:
    return BlobKey.parse(key) is not None or ObjectKey.parse(key) is not None


def _listing(store: BlobStore, prefix: str, replica: Replica, cancelled: Cancel) -> Iterator[str]:
    """`store.list(prefix)`, checked to ascend strictly, stopping when `cancelled()`."""
    previous: str | None = None
    for key in store.list(prefix):
        if cancelled():
            raise Cancelled()
        if previous is not None and key <= previous:
            raise UnsortedListing(f"the {replica.value} replica listed {key!r} after {previous!r}")
        previous = key
        yield key


def _one_sided(left: Iterator[str], right: Iterator[str]) -> Iterator[tuple[str, bool]]:
    """Merge-join two ascending key streams: (key, True) for keys only in `left`, (key, False) only in
    `right`."""
    a, b = next(left, None), next(right, None)
    while a is not None or b is not None:
        if a is not None and (b is None or a < b):
            yield a, True
            a = next(left, None)
        elif b is not None and (a is None or b < a):
            yield b, False
            b = next(right, None)
        else:
            a, b = next(left, None), next(right, None)
