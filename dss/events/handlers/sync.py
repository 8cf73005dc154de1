"""The sync handler: copy each newly written key to the other replica, dependencies first.

Order is kept by construction: before a file's metadata is copied its blob is, before a bundle
manifest is copied every file it names is (blob, then metadata), and before a collection is copied
everything it names is. Every copy is a conditional create,
so a copy that already exists costs one HEAD and ends the ping-pong between replicas. Each key the
handler writes is announced on the bus for the destination replica, so that indexing and
notification happen there too; the announcement is an intent made durable before the copy is
committed (`EventBus.intent`), so a crash between the two cannot leave a copy that is never indexed.

Large blobs (more than `LargeBlobs.threshold` bytes, the async-copy threshold) are not copied in the
handler: it starts the `sync-large-blob` workflow (parts in parallel, resumable, verified; the same copy
shape as the 202 `PUT /files` path) under a name derived from the destination and the blob key, so a
redelivered event finds the execution already recorded and starts nothing. Until the blob is in the
destination, every event that needs it — the blob's own, its files', their bundles' — raises `Deferred`:
the message stays in the durable queue and is handled again later, so the file and bundle metadata are
still copied by this handler, after the blob, and never before it. Nothing depends on the process that
started the copy surviving: the workflow journal resumes the copy, the queue re-delivers the waiting
events. A failed execution is replaced by a new one (`…~1`, `…~2`) on the next delivery, up to
`MAX_LARGE_COPY_ATTEMPTS`; after that the event fails like any other (retried, dead-lettered, re-driven by
the reconcile pass, which then fails the same way until an operator looks). The copied blob itself is not
announced on the destination: a blob event there would only find the blob present in the source again.
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from dss.checksums import read_chunks
from dss.events import Event
from dss.events.bus import Deferred, EventBus, Intent
from dss.identifiers import BlobKey, ObjectKey, Replica
from dss.storage.blobstore import BlobAlreadyExists, BlobNotFound, BlobStore
from dss.storage.replicas import Replicas
from dss.workflows.journal import RUNNING, SUCCEEDED

__all__ = ["SyncHandler", "LargeBlobs", "LARGE_BLOB_WORKFLOW", "MAX_LARGE_COPY_ATTEMPTS", "BlobCopyFailed",
           "large_copy_name"]

logger = logging.getLogger(__name__)

_MAX_NESTING = 100  # collections inside collections
LARGE_BLOB_WORKFLOW = "sync-large-blob"
MAX_LARGE_COPY_ATTEMPTS = 10  # failed executions of one blob's copy before its events fail too


class BlobCopyFailed(Exception):
    """Every workflow execution allowed for copying a large blob has failed."""


class Workflows(Protocol):
    """The workflow port (`dss.workflows.service.Workflows`)."""

    def start(self, workflow: str, data: Any, *, name: str) -> str: ...

    def status(self, execution_id: str) -> Any: ...


@dataclass(frozen=True)
class LargeBlobs:
    """Blobs of more than `threshold` bytes are copied by the `sync-large-blob` workflow of `workflows`."""
    workflows: Workflows
    threshold: int


def large_copy_name(dest_replica: str, blob_key: str, attempt: int = 0) -> str:
    """The execution name of a blob's copy to `dest_replica`: the idempotency key of the workflow start.
    A digest keeps it within Step Functions' 80 characters."""
    name = f"sync-{dest_replica}-{hashlib.sha256(blob_key.encode()).hexdigest()}"
    return name + (f"~{attempt}" if attempt else "")


class SyncHandler:
    name = "sync"

    def __init__(self, replicas: Replicas, bus: EventBus, threads: int = 8, *,
                 large_blobs: LargeBlobs | None = None) -> None:
        """Without `large_blobs` every blob is copied in the handler, whatever its size."""
        self.replicas = replicas
        self.bus = bus
        self.large_blobs = large_blobs
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="dss-sync")

    def __call__(self, event: Event) -> None:
        if event.action != "created":
            return
        source_replica = Replica(event.replica)
        dest_replica = source_replica.other
        large = _LargeCopies(self.large_blobs, dest_replica.value) if self.large_blobs else None
        copier = _Copier(self.replicas[source_replica], self.replicas[dest_replica], self._pool,
                         lambda key: self.bus.intent([Event(dest_replica.value, key)]), large)
        copier.sync(event.key)


class _LargeCopies:
    """Starts, and waits for, the workflow copies of large blobs to one destination replica."""

    def __init__(self, settings: LargeBlobs, dest_replica: str) -> None:
        self.workflows, self.threshold, self.dest_replica = settings.workflows, settings.threshold, dest_replica

    def ensure(self, source: BlobStore, dest: BlobStore, key: str) -> None:
        """The blob was not in `dest`: make sure an execution copies it, then raise Deferred (the caller's
        event is handled again once the copy may be done), or BlobCopyFailed once every attempt failed.
        Returns only if an execution put the blob there since the caller looked."""
        data = {"source": {"url": source.url, "key": key}, "destination": {"url": dest.url, "key": key}}
        for attempt in range(MAX_LARGE_COPY_ATTEMPTS):
            name = large_copy_name(self.dest_replica, key, attempt)
            record = self.workflows.status(name)
            if record is None:
                self.workflows.start(LARGE_BLOB_WORKFLOW, data, name=name)
                logger.info("Copying %s to %s in workflow execution %s", key, self.dest_replica, name)
                raise Deferred(f"{key} is being copied by {name}", _poll_after(0.0))
            if record.status == RUNNING:
                raise Deferred(f"{key} is being copied by {name}", _poll_after(time.time() - record.started))
            if record.status == SUCCEEDED and dest.exists(key):
                return  # it finished after the caller looked
            # FAILED, or SUCCEEDED and yet the blob is not there (removed since): another attempt
        raise BlobCopyFailed(f"{MAX_LARGE_COPY_ATTEMPTS} workflow copies of {key} to {self.dest_replica} failed")


def _poll_after(running_for: float) -> float:
    """Seconds until a waiting event looks again: soon for a copy just started, at most a minute."""
    return min(60.0, max(1.0, running_for / 10))


class _Copier:
    def __init__(self, source: BlobStore, dest: BlobStore, pool: ThreadPoolExecutor,
                 announce: Callable[[str], Intent], large: _LargeCopies | None = None) -> None:
        self.source, self.dest, self.pool = source, dest, pool
        self.announce = announce  # the destination's events for a key about to be committed
        self.large = large

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
        elif parsed.kind == "collections" and not parsed.dead:
            self._copy_collection(key, depth=0)
        else:
            self._copy_json(key)

    def _copy_bundle(self, key: str) -> None:
        if self.dest.exists(key):
            return
        manifest = self.source.get_json(key)
        file_keys = [f"files/{f['uuid']}.{f['version']}" for f in manifest["files"]]
        list(self.pool.map(self._copy_file, file_keys))
        self._copy_json(key)

    def _copy_collection(self, key: str, depth: int) -> None:
        """Everything a collection names first (files with their blobs, bundles with their files, nested
        collections with theirs), then the collection. Versions name only versions that existed before
        them, so nesting has no cycles; the depth bound guards against a hand-made store."""
        if self.dest.exists(key):
            return
        if depth > _MAX_NESTING:
            raise RuntimeError(f"collections nested more than {_MAX_NESTING} deep under {key}")
        named: dict[str, list[str]] = {"files": [], "bundles": [], "collections": []}
        for item in self.source.get_json(key)["contents"]:
            kind = {"bundle": "bundles", "collection": "collections"}.get(item["type"], "files")  # else fragments
            named[kind].append(f"{kind}/{item['uuid']}.{item['version']}")
        list(self.pool.map(self._copy_file, named["files"]))
        for bundle in named["bundles"]:  # one at a time: each already copies its files on the pool
            self._copy_bundle(bundle)
        for collection in named["collections"]:
            self._copy_collection(collection, depth + 1)
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
        if self.large is not None and info.size > self.large.threshold:
            self.large.ensure(self.source, self.dest, key)  # raises unless the blob is there now
            return
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
