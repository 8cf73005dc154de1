"""The index handler: keep each replica's search index in step with its bundles, then notify.

A new manifest becomes a search document (built from its indexed JSON files); a tombstone replaces
the documents of the versions it covers, which stay searchable as tombstones. After a document is
stored, subscribers are notified (CREATE or TOMBSTONE). The handler is idempotent: a document already
stored unchanged is not rewritten, and the notifier enqueues each (subscription, event) once.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from dss.events import Event
from dss.identifiers import BlobKey, ObjectKey, Replica
from dss.index.backend import SearchIndex
from dss.index.document import build_document, doc_id_of, tombstone_document
from dss.jsonlimits import check_json
from dss.storage.blobstore import BlobNotFound, BlobStore
from dss.storage.replicas import Replicas

__all__ = ["IndexHandler", "BundleNotifier"]

logger = logging.getLogger(__name__)


class BundleNotifier(Protocol):
    def notify(self, replica: str, bundle_uuid: str, bundle_version: str, event_type: str,
               document: Mapping[str, Any]) -> int: ...


class IndexHandler:
    name = "index"

    def __init__(self, replicas: Replicas, search: SearchIndex, manifest_file_limit: int,
                 notifier: BundleNotifier | None = None, threads: int = 8) -> None:
        self.replicas = replicas
        self.search = search
        self.limit = manifest_file_limit
        self.notifier = notifier
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dss-index")

    def __call__(self, event: Event) -> None:
        key = ObjectKey.parse(event.key)
        if event.action != "created" or key is None or key.kind != "bundles":
            return
        store = self.replicas[Replica(event.replica)]
        if key.dead:
            self._entomb(event.replica, store, key)
        elif key.version:
            self._index_bundle(event.replica, store, key.uuid, key.version)

    def _index_bundle(self, replica: str, store: BlobStore, uuid: str, version: str) -> None:
        tombstones = self._tombstones(store, uuid)
        if None in tombstones or version in tombstones:
            # the tombstone was written first (e.g. replicated out of order): index it instead
            tomb_version = version if version in tombstones else None
            self._store(replica, uuid, version, tombstone_document(uuid, version, tombstones[tomb_version]),
                        "TOMBSTONE")
            return
        manifest = store.get_json(str(ObjectKey("bundles", uuid, version)))
        document = build_document(uuid, manifest, self._prefetch(store, manifest), self.limit)
        self._store(replica, uuid, version, document, "CREATE")

    def _entomb(self, replica: str, store: BlobStore, key: ObjectKey) -> None:
        tombstone = store.get_json(str(key))
        if key.version:
            versions = [key.version]
        else:  # every version not already tombstoned on its own
            entombed = self._tombstones(store, key.uuid)
            versions = [v for v in self._versions(store, key.uuid) if v not in entombed]
        for version in versions:
            self._store(replica, key.uuid, version, tombstone_document(key.uuid, version, tombstone), "TOMBSTONE")

    def _store(self, replica: str, uuid: str, version: str, document: dict, event_type: str) -> None:
        doc_id = doc_id_of(uuid, version)
        if self.search.get(replica, doc_id) != document:
            self.search.index(replica, doc_id, document)
        if self.notifier is not None:
            # Even for an unchanged document: a retried event may have failed between indexing and
            # notifying, and the notifier de-duplicates by event id.
            self.notifier.notify(replica, uuid, version, event_type, document)

    def _prefetch(self, store: BlobStore, manifest: Mapping[str, Any]):
        """Read every indexed file's bytes concurrently; the loader then parses them on demand."""
        def blob_of(entry: Mapping[str, Any]) -> str:
            return str(BlobKey(entry["sha256"], entry["sha1"], entry["s3-etag"], entry["crc32c"]))

        wanted = {blob_of(e) for e in manifest.get("files", ())
                  if e.get("indexed") and str(e.get("content-type", "")).startswith("application/json")}
        contents = dict(zip(wanted, self._pool.map(store.get, wanted)))

        def load_json(entry: Mapping[str, Any]) -> Any:
            data = contents[blob_of(entry)]
            check_json(data)  # too deep, NaN, lone surrogates: UnsafeJSON, a ValueError, so skipped
            return json.loads(data)  # a JSONDecodeError is a ValueError too
        return load_json

    @staticmethod
    def _tombstones(store: BlobStore, uuid: str) -> dict[str | None, dict]:
        found: dict[str | None, dict] = {}
        for key in store.list(f"bundles/{uuid}."):
            parsed = ObjectKey.parse(key)
            if parsed is not None and parsed.dead:
                try:
                    found[parsed.version] = store.get_json(key)
                except BlobNotFound:
                    pass
        return found

    @staticmethod
    def _versions(store: BlobStore, uuid: str) -> list[str]:
        keys = (ObjectKey.parse(key) for key in store.list(f"bundles/{uuid}."))
        return [k.version for k in keys if k is not None and not k.dead and k.version]
