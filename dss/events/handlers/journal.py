"""The journal handler: record every bundle CREATE, TOMBSTONE and DELETE in its replica's events journal.

It is fed from the same durable queue as indexing (one message per handler, announced as an intent
before the bundle's commit), so an acknowledged bundle always reaches the journal, crash or not. The
event document is the bundle's search document plus `event_type` and `bundle_info`; as in the
original, it holds every JSON file of the manifest (`application/json*`), indexed or not. A version
tombstone records a TOMBSTONE for that version; a whole-bundle tombstone records a DELETE for each
version not already tombstoned on its own. Recording is idempotent (`EventJournal.record`).
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dss.events import Event
from dss.identifiers import BlobKey, ObjectKey, Replica
from dss.index.document import build_document, tombstone_document
from dss.journal import EventJournal
from dss.jsonlimits import check_json
from dss.storage.blobstore import BlobNotFound, BlobStore
from dss.storage.replicas import Replicas

__all__ = ["JournalHandler"]

logger = logging.getLogger(__name__)


class JournalHandler:
    name = "journal"

    def __init__(self, replicas: Replicas, journals: Mapping[Replica, EventJournal], manifest_file_limit: int,
                 threads: int = 4) -> None:
        self.replicas = replicas
        self.journals = journals
        self.limit = manifest_file_limit
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dss-journal-docs")

    def __call__(self, event: Event) -> None:
        key = ObjectKey.parse(event.key)
        if event.action != "created" or key is None or key.kind != "bundles":
            return
        replica = Replica(event.replica)
        store, journal = self.replicas[replica], self.journals[replica]
        if key.dead and key.version:
            journal.record("TOMBSTONE", key.uuid, key.version,
                           tombstone_document(key.uuid, key.version, store.get_json(str(key))))
        elif key.dead:
            tombstone = store.get_json(str(key))
            versions, entombed = _versions(store, key.uuid)
            for version in sorted(versions - entombed):
                journal.record("DELETE", key.uuid, version, tombstone_document(key.uuid, version, tombstone))
        elif key.version:
            try:
                manifest = store.get_json(str(key))
            except BlobNotFound:
                return  # an intent whose write never happened (the bus checks, this is belt and braces)
            journal.record("CREATE", key.uuid, key.version, self._document(store, key.uuid, manifest))

    def _document(self, store: BlobStore, uuid: str, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """The search document, with every JSON file of the manifest under `files`."""
        every_json = {"files": [{**entry, "indexed": True} for entry in manifest.get("files", ())
                                if str(entry.get("content-type", "")).startswith("application/json")]}
        loader = self._prefetch(store, every_json["files"])
        return {**build_document(uuid, manifest, loader, self.limit),
                "files": build_document(uuid, every_json, loader)["files"]}

    def _prefetch(self, store: BlobStore, entries: list[dict]) -> Callable[[Mapping[str, Any]], Any]:
        def blob_of(entry: Mapping[str, Any]) -> str:
            return str(BlobKey(entry["sha256"], entry["sha1"], entry["s3-etag"], entry["crc32c"]))

        wanted = {blob_of(e) for e in entries}
        contents = dict(zip(wanted, self._pool.map(store.get, wanted)))

        def load_json(entry: Mapping[str, Any]) -> Any:
            data = contents[blob_of(entry)]
            check_json(data)  # unsafe JSON is a ValueError: the file is skipped, as in the index
            return json.loads(data)
        return load_json


def _versions(store: BlobStore, uuid: str) -> tuple[set[str], set[str]]:
    """(versions present, versions tombstoned on their own) of a bundle."""
    versions: set[str] = set()
    entombed: set[str] = set()
    for key in store.list(f"bundles/{uuid}."):
        parsed = ObjectKey.parse(key)
        if parsed is None or not parsed.version:
            continue
        (entombed if parsed.dead else versions).add(parsed.version)
    return versions, entombed
