"""Bundles: immutable, versioned manifests of file versions, and their tombstones.

Keys: `bundles/<uuid>.<version>` (manifest), `bundles/<uuid>.<version>.dead` (one version deleted),
`bundles/<uuid>.dead` (every version deleted). Deleted bundles answer 404, never 410. A manifest is
written only after every file it names exists in the same replica.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dss.errors import BundleConflict, DuplicateFilename, FileMissing, NotFound, TombstoneConflict, Unavailable
from dss.events import Event
from dss.events.bus import EventBus
from dss.files import FileService
from dss.identifiers import (
    BundleFQID,
    BundleTombstoneID,
    ObjectKey,
    Replica,
    new_version,
    normalise_uuid,
    validate_creator_uid,
    validate_file_name,
    validate_text,
    validate_version,
)
from dss.storage.blobstore import BlobAlreadyExists, BlobStore
from dss.storage.replicas import ImmutableCache, Replicas

__all__ = ["BundleService", "BundleFile", "Manifest", "EnumerationPage"]

logger = logging.getLogger(__name__)

BUNDLE_FORMAT = "0.0.1"
Manifest = dict[str, Any]
_LOOKUP_THREADS = 16
MAX_FILE_WAITERS = 8  # requests that may wait for missing files at once, per process (see _resolve)


@dataclass(frozen=True)
class BundleFile:
    """One entry of a PUT/PATCH request."""
    name: str
    uuid: str
    version: str
    indexed: bool

    @classmethod
    def from_request(cls, item: dict) -> BundleFile:
        """A PUT file or PATCH add_files entry, validated: names already in a manifest are not re-judged, so
        that a bundle stored under older rules can still be patched."""
        return cls(validate_file_name(item["name"]), normalise_uuid(item["uuid"]), validate_version(item["version"]),
                   bool(item["indexed"]))


@dataclass(frozen=True)
class EnumerationPage:
    bundles: list[dict[str, str]]
    search_after: str | None  # the last key returned, when the page is full


class BundleService:
    def __init__(self, replicas: Replicas, bus: EventBus, files: FileService, file_wait: float,
                 cache: ImmutableCache | None = None, max_waiters: int = MAX_FILE_WAITERS) -> None:
        self.replicas = replicas
        self.bus = bus
        self.files = files
        self.file_wait = file_wait
        self.max_waiters = max_waiters
        self._waiters = threading.BoundedSemaphore(max_waiters)  # see _resolve
        self.cache = cache or ImmutableCache()
        self._pool = ThreadPoolExecutor(_LOOKUP_THREADS, thread_name_prefix="dss-bundle-files")

    # --- reads ------------------------------------------------------------------------------
    def get(self, uuid: str, replica: Replica, version: str | None = None) -> Manifest:
        uuid, store = normalise_uuid(uuid), self.replicas[replica]
        version = None if version is None else validate_version(version)
        keys = list(store.list(f"bundles/{uuid}."))
        versions, dead = _versions(keys)
        if None in dead or (version and version in dead):
            raise NotFound("Cannot find bundle!")
        chosen = version if version in versions else None if version else max(versions - dead, default=None)
        if chosen is None:
            raise NotFound("Cannot find bundle!")
        key = str(BundleFQID(uuid, chosen))
        return self.cache.get_or_load((replica, key), lambda: store.get_json(key))

    def enumerate(self, replica: Replica, prefix: str, per_page: int, search_after: str | None) -> EnumerationPage:
        store = self.replicas[replica]
        page: list[dict[str, str]] = []
        last = None
        for key, entry in _live_bundles(store.list(f"bundles/{prefix}", start_after=search_after)):
            page.append(entry)
            last = key
            if len(page) == per_page:
                return EnumerationPage(page, last)
        return EnumerationPage(page, None)

    # --- writes -----------------------------------------------------------------------------
    def put(self, uuid: str, version: str, replica: Replica, files: Sequence[dict],
            creator_uid: int) -> tuple[Manifest, bool]:
        uuid, version = normalise_uuid(uuid), validate_version(version)
        creator_uid = validate_creator_uid(creator_uid)
        entries = [BundleFile.from_request(f) for f in files]
        _check_names(entries)
        store = self.replicas[replica]
        manifest = {"format": BUNDLE_FORMAT, "version": version, "files": self._resolve(replica, entries),
                    "creator_uid": creator_uid}
        # Each write is announced durably before its commit: a crash right after it still replicates and indexes.
        with self.bus.intent([Event(replica.value, str(BundleFQID(uuid, version)))]):
            created = self._write_once(store, str(BundleFQID(uuid, version)), manifest, BundleConflict)
        return manifest, created

    def patch(self, uuid: str, version: str, replica: Replica, add: Sequence[dict] | None,
              remove: Sequence[dict] | None) -> str:
        uuid, version = normalise_uuid(uuid), validate_version(version)
        base = self.get(uuid, replica, version)
        store = self.replicas[replica]
        removed = {(f["name"], normalise_uuid(f["uuid"]), f["version"]) for f in remove or ()}
        kept = [f for f in base["files"] if (f["name"], f["uuid"], f["version"]) not in removed]
        added = [BundleFile.from_request(f) for f in add or ()]
        _check_names([BundleFile(f["name"], f["uuid"], f["version"], f["indexed"]) for f in kept] + added)
        new = new_version()
        manifest = {**base, "version": new, "files": kept + self._resolve(replica, added)}
        with self.bus.intent([Event(replica.value, str(BundleFQID(uuid, new)))]):
            self._write_once(store, str(BundleFQID(uuid, new)), manifest, BundleConflict)
        return new

    def delete(self, uuid: str, replica: Replica, version: str | None, reason: str, email: str) -> None:
        uuid, store = normalise_uuid(uuid), self.replicas[replica]
        version = None if version is None else validate_version(version)
        reason = validate_text(reason, "reason")
        prefix = f"bundles/{uuid}.{version}" if version else f"bundles/{uuid}."
        if next(iter(store.list(prefix)), None) is None:
            raise NotFound("Cannot find bundle!")
        tombstone: dict[str, Any] = {"email": email, "reason": reason, "admin_deleted": True}
        if version:
            tombstone["version"] = version
        key = str(BundleTombstoneID(uuid, version))
        with self.bus.intent([Event(replica.value, key)]):
            self._write_once(store, key, tombstone, TombstoneConflict)

    # --- helpers ----------------------------------------------------------------------------
    def _write_once(self, store: BlobStore, key: str, document: dict, conflict: type[Exception]) -> bool:
        try:
            store.put_json(key, document, if_absent=True)
            return True
        except BlobAlreadyExists:
            if store.get_json(key) != document:
                raise conflict(f"{key} already exists with different content") from None
            return False

    def _resolve(self, replica: Replica, entries: Sequence[BundleFile]) -> list[dict]:
        """Manifest entries for `entries`, waiting a bounded time for files still being written.

        A waiting request holds a server thread (handlers are synchronous; Connexion runs them on anyio's
        pool of 40 threads, which every other request needs too), so at most `max_waiters` requests wait at
        once, each for at most `file_wait` seconds (well inside the API's 25 s deadline). Any other request
        naming a missing file is answered at once with 503 and Retry-After (hca retries it): whether its
        files will still arrive (a write in flight, replication from the other replica) is unknown, and
        the server cannot afford to find out now. So a flood of such requests parks `max_waiters` threads,
        not all of them, and requests whose files exist never wait."""
        deadline = time.monotonic() + self.file_wait
        wanted = list(dict.fromkeys((e.uuid, e.version) for e in entries))  # each file once
        found = self._lookup(replica, wanted, {})
        if len(found) < len(wanted) and self.file_wait > 0:
            if self._waiters.acquire(blocking=False):
                try:
                    found = self._wait(replica, wanted, found, deadline)
                finally:
                    self._waiters.release()
            else:
                uuid, version = next(fqid for fqid in wanted if fqid not in found)
                raise Unavailable(f"Bundle refers to a file that does not exist (yet): {uuid}.{version}; the server is "
                                  f"already waiting for the files of {self.max_waiters} other requests. Retry later.")
        if len(found) < len(wanted):
            uuid, version = next(fqid for fqid in wanted if fqid not in found)
            elsewhere = self._replicated_from(replica, uuid, version)
            if elsewhere is not None:
                raise Unavailable(f"Bundle refers to file {uuid}.{version}, which exists in replica {elsewhere} and "
                                  f"is still being copied to {replica.value}. Retry later.")
            raise FileMissing(f"Bundle refers to a file that does not exist: {uuid}.{version}")
        return [_manifest_entry(e, found[(e.uuid, e.version)]) for e in entries]

    def _replicated_from(self, replica: Replica, uuid: str, version: str) -> str | None:
        """The other replica that holds the file, if any: replication will bring it here (a client that
        stages in S3 writes files to `aws` and may then put its bundle in `gcp`), so the request is worth
        retrying (503) rather than wrong (400). A large blob may take minutes to copy."""
        return next((other.value for other in self.replicas
                     if other != replica and self.files.lookup(other, uuid, version) is not None), None)

    def _lookup(self, replica: Replica, wanted: Sequence[tuple[str, str]],
                found: dict[tuple[str, str], dict]) -> dict[tuple[str, str], dict]:
        missing = [fqid for fqid in wanted if fqid not in found]
        results = self._pool.map(lambda fqid: (fqid, self.files.lookup(replica, *fqid)), missing)
        return {**found, **{fqid: meta for fqid, meta in results if meta is not None}}

    def _wait(self, replica: Replica, wanted: Sequence[tuple[str, str]], found: dict[tuple[str, str], dict],
              deadline: float) -> dict[tuple[str, str], dict]:
        while len(found) < len(wanted) and time.monotonic() < deadline:
            time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
            found = self._lookup(replica, wanted, found)
        return found


def _manifest_entry(entry: BundleFile, meta: dict) -> dict:
    return {"name": entry.name, "uuid": entry.uuid, "version": entry.version,
            "content-type": meta["content-type"], "size": meta["size"], "indexed": entry.indexed,
            "crc32c": meta["crc32c"], "s3-etag": meta["s3-etag"], "sha1": meta["sha1"], "sha256": meta["sha256"]}


def _check_names(entries: Iterable[BundleFile]) -> None:
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise DuplicateFilename(f"Duplicate file name in bundle: {entry.name!r}")
        seen.add(entry.name)


def _versions(keys: Iterable[str]) -> tuple[set[str], set[str | None]]:
    """(versions present, tombstoned versions — None meaning every version)."""
    versions: set[str] = set()
    dead: set[str | None] = set()
    for key in keys:
        parsed = ObjectKey.parse(key)
        if parsed is None:
            continue
        if parsed.dead:
            dead.add(parsed.version)
        elif parsed.version:
            versions.add(parsed.version)
    return versions, dead


def _live_bundles(keys: Iterable[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """(key, {uuid, version}) of live bundle versions. A uuid's tombstones sort after its versions,
    so each uuid's keys are gathered before any of them is emitted."""
    for group in ObjectKey.grouped(keys, "bundles"):
        yield from _emit(group)


def _emit(group: list[ObjectKey]) -> Iterator[tuple[str, dict[str, str]]]:
    dead = {k.version for k in group if k.dead}
    if None in dead:
        return
    for key in group:
        if not key.dead and key.version and key.version not in dead:
            yield str(key), {"uuid": key.uuid, "version": key.version}
