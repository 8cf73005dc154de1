"""Files: content-addressed blobs plus write-once version metadata (`files/<uuid>.<version>`).

PUT copies the staged bytes into the replica under `blobs/<sha256>.<sha1>.<s3_etag>.<crc32c>`,
verifying every declared checksum on the bytes actually copied, and only then creates the metadata
object with a conditional create: identical metadata already there → 200, different → 409.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dss.checksums import Checksums, ChecksumSet, fan_out, read_chunks
from dss.errors import ChecksumMismatch, FileConflict, NotFound
from dss.events import Event
from dss.events.bus import EventBus
from dss.files.sources import SourceResolver, StagedSource
from dss.identifiers import (
    BlobKey,
    FileFQID,
    ObjectKey,
    Replica,
    normalise_uuid,
    validate_creator_uid,
    validate_source_url,
    validate_version,
)
from dss.storage.blobstore import BlobAlreadyExists, BlobNotFound, BlobStore
from dss.storage.replicas import ImmutableCache, Replicas

__all__ = ["FileService", "FileMetadata", "latest_version"]

logger = logging.getLogger(__name__)

FILE_FORMAT = "0.0.4"
FileMetadata = dict[str, Any]


@dataclass(frozen=True)
class PutResult:
    version: str
    created: bool


def latest_version(store: BlobStore, kind: str, uuid: str) -> str | None:
    """The greatest version of `<kind>/<uuid>.*` (versions compare as strings)."""
    keys = (ObjectKey.parse(key) for key in store.list(f"{kind}/{uuid}."))
    return max((k.version for k in keys if k is not None and k.version and not k.dead), default=None)


def blob_key_of(metadata: FileMetadata) -> BlobKey:
    return BlobKey(metadata["sha256"], metadata["sha1"], metadata["s3-etag"], metadata["crc32c"])


class FileService:
    def __init__(self, replicas: Replicas, sources: SourceResolver, bus: EventBus, spool_dir: Path,
                 cache: ImmutableCache | None = None) -> None:
        self.replicas = replicas
        self.sources = sources
        self.bus = bus
        self.spool_dir = spool_dir
        self.cache = cache or ImmutableCache(100_000)

    # --- reads ------------------------------------------------------------------------------
    def metadata(self, uuid: str, replica: Replica, version: str | None = None) -> FileMetadata:
        uuid = normalise_uuid(uuid)
        if version is None:
            version = latest_version(self.replicas[replica], "files", uuid)
        else:
            version = validate_version(version)
        metadata = self.lookup(replica, uuid, version) if version else None
        if metadata is None:
            raise NotFound("Cannot find file!")
        return metadata

    def lookup(self, replica: Replica, uuid: str, version: str) -> FileMetadata | None:
        """One version's metadata, or None. Cached: the object is write-once."""
        store = self.replicas[replica]
        key = str(FileFQID(uuid, version))

        def load() -> FileMetadata | None:
            try:
                return store.get_json(key)
            except BlobNotFound:
                return None
        return self.cache.get_or_load((store.url, key), load)

    def download_url(self, metadata: FileMetadata, replica: Replica, ttl: int, *, direct: bool = False,
                     content_disposition: str | None = None) -> str:
        store = self.replicas[replica]
        key = str(blob_key_of(metadata))
        if direct:
            return store.native_url(key)
        return store.signed_url(key, ttl, content_disposition)

    # --- writes -----------------------------------------------------------------------------
    def put(self, uuid: str, version: str, source_url: str, creator_uid: int) -> PutResult:
        uuid, version = normalise_uuid(uuid), validate_version(version)
        source_url, creator_uid = validate_source_url(source_url), validate_creator_uid(creator_uid)
        with self.sources.resolve(source_url) as source:  # a local source holds an open descriptor
            return self._put(uuid, version, source, creator_uid)

    def _put(self, uuid: str, version: str, source: StagedSource, creator_uid: int) -> PutResult:
        store = self.replicas[source.replica]
        file_key = str(FileFQID(uuid, version))
        if source.declared is not None:
            checksums = Checksums(**source.declared)
            if self._existing_matches(store, file_key, self._metadata(version, creator_uid, source, checksums)):
                self._announce(source.replica, checksums.blob_key, file_key)
                return PutResult(version, created=False)
            self._ingest_declared(source, store, checksums)
        else:
            source, checksums = self._ingest_local(source, store)
        metadata = self._metadata(version, creator_uid, source, checksums)
        # Announced durably before the commit, so that a crash right after it still replicates and indexes.
        with self.bus.intent([Event(source.replica.value, str(checksums.blob_key)),
                              Event(source.replica.value, file_key)]):
            created = self._write_metadata(store, file_key, metadata)
        self.cache.put((store.url, file_key), metadata)
        return PutResult(version, created)

    @staticmethod
    def _metadata(version: str, creator_uid: int, source: StagedSource, sums: Checksums) -> FileMetadata:
        return {"format": FILE_FORMAT, "creator_uid": creator_uid, "version": version,
                "content-type": source.content_type, "size": source.size, "crc32c": sums.crc32c,
                "s3-etag": sums.s3_etag, "sha1": sums.sha1, "sha256": sums.sha256}

    @staticmethod
    def _existing_matches(store: BlobStore, key: str, wanted: FileMetadata) -> bool:
        try:
            existing = store.get_json(key)
        except BlobNotFound:
            return False
        if existing != wanted:
            raise FileConflict(f"{key} already exists with different content")
        return True

    def _write_metadata(self, store: BlobStore, key: str, metadata: FileMetadata) -> bool:
        try:
            store.put_json(key, metadata, if_absent=True)
            return True
        except BlobAlreadyExists:
            return not self._existing_matches(store, key, metadata)

    def _announce(self, replica: Replica, blob_key: BlobKey, file_key: str) -> None:
        self.bus.publish(Event(replica.value, str(blob_key)))
        self.bus.publish(Event(replica.value, file_key))

    @staticmethod
    def _blob_present(store: BlobStore, key: BlobKey, size: int) -> bool:
        try:
            info = store.head(str(key))
        except BlobNotFound:
            return False
        return info.size == size and (info.etag in (None, key.s3_etag)) and (info.crc32c in (None, key.crc32c))

    def _ingest_declared(self, source: StagedSource, store: BlobStore, declared: Checksums) -> None:
        """Copy and verify in one pass; the blob becomes visible only if every checksum matches."""
        if self._blob_present(store, declared.blob_key, source.size):
            return
        digests = ChecksumSet(source.size)
        blob_metadata = {f"hca-dss-{name}": value for name, value in declared.as_dict().items()}
        with store.writer(str(declared.blob_key), size=source.size, content_type=source.content_type,
                          metadata=blob_metadata, if_absent=True) as writer:
            with source.open() as reader:
                copied = fan_out(read_chunks(reader), [*digests.sinks(), writer.write])
            actual = digests.result()
            if actual != declared or copied != source.size:
                raise ChecksumMismatch(f"The bytes copied from {source.url} do not match its declared checksums "
                                       f"({_differences(declared, actual)})")
            try:
                writer.commit()
            except BlobAlreadyExists:
                pass  # a concurrent writer stored the same content-addressed bytes

    def _ingest_local(self, source: StagedSource, store: BlobStore) -> tuple[StagedSource, Checksums]:
        """Spool a local file while computing its checksums, then publish the spool as the blob.

        One read feeds the spool writer and the four digests in parallel, so the checksums are those of
        the bytes stored, whatever happens to the source meanwhile."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        spool = self.spool_dir / uuidlib.uuid4().hex
        digests = ChecksumSet(source.size)
        try:
            with source.open() as reader, open(spool, "wb") as out:
                fan_out(read_chunks(reader), [*digests.sinks(), out.write])
                out.flush()
                os.fsync(out.fileno())
            checksums = digests.result()
            copied = dataclasses.replace(source, size=spool.stat().st_size)
            if not self._blob_present(store, checksums.blob_key, copied.size):
                try:
                    store.put_file(str(checksums.blob_key), spool, content_type=source.content_type, if_absent=True)
                except BlobAlreadyExists:
                    pass  # a concurrent writer stored the same content-addressed bytes
            return copied, checksums
        finally:
            spool.unlink(missing_ok=True)


def _differences(declared: Checksums, actual: Checksums) -> str:
    wanted, got = declared.as_dict(), actual.as_dict()
    return ", ".join(f"{name}: declared {wanted[name]}, computed {got[name]}" for name in wanted
                     if wanted[name] != got[name]) or "size differs"
