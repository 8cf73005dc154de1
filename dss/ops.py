"""Operator actions that work on storage directly (used by scripts/dss-ops.py and tests)."""
from __future__ import annotations

from collections.abc import Callable

from dss.events import Event
from dss.events.handlers.index import IndexHandler
from dss.identifiers import ObjectKey, Replica
from dss.index.backend import SearchIndex
from dss.storage.replicas import Replicas

__all__ = ["verify_sync", "reindex"]


def verify_sync(replicas: Replicas, source: Replica) -> list[str]:
    """Keys present in `source` but missing (or of another size) in the other replica."""
    src, dst = replicas[source], replicas[source.other]
    problems = []
    for prefix in ("blobs/", "files/", "bundles/"):
        for key in src.list(prefix):
            try:
                if dst.head(key).size != src.head(key).size:
                    problems.append(f"size differs: {key}")
            except Exception:  # noqa: BLE001 - a missing or unreadable key is what we report
                problems.append(f"missing in {source.other.value}: {key}")
    return problems


def reindex(replicas: Replicas, search: SearchIndex, replica: Replica, manifest_file_limit: int,
            progress: Callable[[int], None] = lambda n: None) -> int:
    """Rebuild a replica's search documents from storage; returns the number of bundle keys read.

    Keys come in storage order, so each uuid's tombstones (`.dead` sorts last) follow its versions and
    replace their documents, exactly as when the events arrived. Subscribers are not notified."""
    handler = IndexHandler(replicas, search, manifest_file_limit, notifier=None)
    count = 0
    for key in replicas[replica].list("bundles/"):
        if ObjectKey.parse(key) is not None:
            handler(Event(replica.value, key))
        count += 1
        progress(1)
    search.refresh(replica.value)  # leave it searchable without pending work (this process is about to end)
    return count
