"""The sync handler: copy each newly written key to the other replica, dependencies first.

Order is kept by construction: before a file's metadata is copied its blob is, and before a bundle
manifest is copied every file it names is (blob, then metadata). Every copy is a conditional create,
so a copy that already exists costs one HEAD and ends the ping-pong between replicas. Each key the
handler writes is announced on the bus for the destination replica, so that indexing and
notification happen there too; the announcement is an intent made durable before the copy is
committed (`EventBus.intent`), so a crash between the two cannot leave a copy that is never indexed.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from dss.checksums import read_chunks
from dss.events import Event
from dss.events.bus import EventBus, Intent
from dss.identifiers import BlobKey, ObjectKey, Replica
from dss.storage.blobstore import BlobAlreadyExists, BlobNotFound, BlobStore
from dss.storage.replicas import Replicas

__all__ = ["SyncHandler"]

logger = logging.getLogger(__name__)


class SyncHandler:
    name = "sync"

    def __init__(self, replicas: Replicas, bus: EventBus, threads: int = 8) -> None:
        self.replicas = replicas
        self.bus = bus
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dss-sync")

    def __call__(self, event: Event) -> None:
        if event.action != "created":
            return
        source_replica = Replica(event.replica)
        dest_replica = source_replica.other
        copier = _Copier(self.replicas[source_replica], self.replicas[dest_replica], self._pool,
                         lambda key: self.bus.intent([Event(dest_replica.value, key)]))
        copier.sync(event.key)


class _Copier:
    def __init__(self, source: BlobStore, dest: BlobStore, pool: ThreadPoolExecutor,
                 announce: Callable[[str], Intent]) -> None:
        self.source, self.dest, self.pool = source, dest, pool
        self.announce = announce  # the destination's events for a key about to be committed

    def sync(self, key: str) -> None:
        if BlobKey.parse(key):
            self._copy_blob(key)
            return
        parsed = ObjectKey.parse(key)
        if parsed is None:
            logger.debug("Not syncing unrecognised key %s", key)
            return
        if parsed.kind == "files" and not parsed.dead:
            self._copy_file(key)
        elif parsed.kind == "bundles" and not parsed.dead:
            self._copy_bundle(key)
        else:
            self._copy_json(key)

    def _copy_bundle(self, key: str) -> None:
        if self.dest.exists(key):
            return
        manifest = self.source.get_json(key)
        file_keys = [f"files/{f['uuid']}.{f['version']}" for f in manifest["files"]]
        list(self.pool.map(self._copy_file, file_keys))
        self._copy_json(key)

    def _copy_file(self, key: str) -> None:
        if self.dest.exists(key):
            return
        metadata = self.source.get_json(key)
        blob = BlobKey(metadata["sha256"], metadata["sha1"], metadata["s3-etag"], metadata["crc32c"])
        self._copy_blob(str(blob))
        self._copy_json(key)

    def _copy_json(self, key: str) -> None:
        if self.dest.exists(key):
            return
        info = self.source.head(key)
        self._conditional_write(key, self.source.get(key), info.content_type, info.metadata)

    def _copy_blob(self, key: str) -> None:
        try:
            info = self.source.head(key)
        except BlobNotFound:
            logger.warning("Blob %s vanished from the source replica before it was synced", key)
            raise
        try:
            if self.dest.head(key).size == info.size:
                return
        except BlobNotFound:
            pass
        with self.source.open(key) as reader, self.dest.writer(
                key, size=info.size, content_type=info.content_type, metadata=info.metadata, if_absent=True) as writer:
            for chunk in read_chunks(reader):
                writer.write(chunk)
            with self.announce(key) as intent:
                try:
                    writer.commit()
                except BlobAlreadyExists:
                    intent.cancel()

    def _conditional_write(self, key: str, data: bytes, content_type: str, metadata: Mapping[str, str]) -> None:
        with self.announce(key) as intent:
            try:
                self.dest.put(key, data, content_type=content_type, metadata=metadata, if_absent=True)
            except BlobAlreadyExists:
                intent.cancel()
                if self.dest.get(key) != data:
                    logger.error("Replicas disagree on %s; keeping the destination's copy", key)
