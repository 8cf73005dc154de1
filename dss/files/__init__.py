"""Files: content-addressed blobs plus write-once version metadata (`files/<uuid>.<version>`).

PUT copies the staged bytes into the replica under `blobs/<sha256>.<sha1>.<s3_etag>.<crc32c>`,
verifying every declared checksum on the bytes actually copied, and only then creates the metadata
object with a conditional create: identical metadata already there → 200, different → 409.

Large bucket sources go asynchronous (202): when the blob is not stored yet and the source is larger
than `async_threshold`, PUT only records an execution of the `blob-copy-write-metadata` workflow,
named `files-put-<uuid>.<version>` (an idempotency key: a re-PUT with the same input returns the same
execution, different input is 409), and returns its id. The workflow copies and verifies the blob, then
calls `commit_metadata`, which writes and announces the metadata as a synchronous PUT does. Until then
reads answer 404; if the copy fails, the workflow records the failure in the `async-state` table
(keys `<uuid>.<version>`, replica; kept `FAILURE_TTL`) and reads answer 422 (`CopyFailed`). A re-PUT
after a failure starts a new attempt (`…~1`, `…~2`) and forgets the failure.

Local file:// sources stay synchronous whatever their size: they declare no checksums, so the blob key
is only known after reading every byte, and that read must go through the descriptor opened for the
request (see `dss.files.sources`); a workflow resumed later, maybe in another process, could only
reopen the path, which may then name other bytes.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import logging
import mmap
import os
import threading
import time
import uuid as uuidlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dss.checksums import Checksums, ChecksumSet, digest_stream, fan_out, read_chunks
from dss.errors import ChecksumMismatch, CopyFailed, FileConflict, NotFound
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
from dss.tables import Table
from dss.workflows.errors import ExecutionAlreadyExists

__all__ = ["FileService", "FileMetadata", "latest_version", "Workflows", "ASYNC_STATE_TABLE", "COPY_WORKFLOW"]

logger = logging.getLogger(__name__)

FILE_FORMAT = "0.0.4"
FileMetadata = dict[str, Any]
ASYNC_STATE_TABLE = "async-state"  # failures of asynchronous copies, by (<uuid>.<version>, replica)
COPY_WORKFLOW = "blob-copy-write-metadata"
_MAX_ATTEMPTS = 100  # asynchronous copies of one file version that may fail before PUT gives up


class Workflows(Protocol):
    """The workflow port (`dss.workflows.service.Workflows`)."""

    def start(self, workflow: str, data: Any, *, name: str) -> str: ...

    def status(self, execution_id: str) -> Any: ...


@dataclass(frozen=True)
class PutResult:
    version: str
    created: bool
    task_id: str | None = None  # set when the copy continues asynchronously (202)


def latest_version(store: BlobStore, kind: str, uuid: str) -> str | None:
    """The greatest version of `<kind>/<uuid>.*` (versions compare as strings)."""
    keys = (ObjectKey.parse(key) for key in store.list(f"{kind}/{uuid}."))
    return max((k.version for k in keys if k is not None and k.version and not k.dead), default=None)


def blob_key_of(metadata: FileMetadata) -> BlobKey:
    return BlobKey(metadata["sha256"], metadata["sha1"], metadata["s3-etag"], metadata["crc32c"])


class FileService:
    def __init__(self, replicas: Replicas, sources: SourceResolver, bus: EventBus, spool_dir: Path,
                 cache: ImmutableCache | None = None, *, workflows: Workflows | None = None,
                 async_state: Table | None = None, async_threshold: int = 64 * 1024 * 1024) -> None:
        """Without `workflows` and `async_state` every PUT is synchronous."""
        self.replicas = replicas
        self.sources = sources
        self.bus = bus
        self.spool_dir = spool_dir
        self.cache = cache or ImmutableCache(100_000)
        self.workflows = workflows
        self.async_state = async_state
        self.async_threshold = async_threshold

    # --- reads ------------------------------------------------------------------------------
    def metadata(self, uuid: str, replica: Replica, version: str | None = None) -> FileMetadata:
        uuid = normalise_uuid(uuid)
        if version is None:
            version = latest_version(self.replicas[replica], "files", uuid)
        else:
            version = validate_version(version)
        metadata = self.lookup(replica, uuid, version) if version else None
        if metadata is None:
            if version:
                self._raise_copy_failure(replica, str(FileFQID(uuid, version)))
            raise NotFound("Cannot find file!")
        return metadata

    def _raise_copy_failure(self, replica: Replica, file_key: str) -> None:
        """CopyFailed if an asynchronous copy of this version failed (and the record has not expired)."""
        if self.async_state is None:
            return
        state = self.async_state.get(file_key, replica.value)
        if state is None or state.get("status") != "FAILED" or state.get("expires_at", 0) < time.time():
            return
        message = _cause_message(state.get("cause"))
        if state.get("error") == "ChecksumMismatch":
            raise CopyFailed(f"Incorrect checksum: {message}", code="missing_checksum")
        raise CopyFailed(f"The copy of this file version failed ({state.get('error')}): {message}")

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
            if self._goes_async(source, store, checksums):
                return self._put_async(file_key, version, source, checksums,
                                       self._metadata(version, creator_uid, source, checksums))
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

    def commit_metadata(self, replica: str, file_key: str, metadata: FileMetadata) -> bool:
        """Write a file version's metadata once its blob is stored (the end of the asynchronous path),
        announcing blob and file as `put` does. True if written or already there; False if a different
        document is there."""
        store = self.replicas[Replica(replica)]
        with self.bus.intent([Event(replica, str(blob_key_of(metadata))), Event(replica, file_key)]) as intent:
            try:
                created = self._write_metadata(store, file_key, metadata)
            except FileConflict:
                intent.cancel()
                return False
        if created:
            self.cache.put((store.url, file_key), metadata)
        return True

    def _goes_async(self, source: StagedSource, store: BlobStore, checksums: Checksums) -> bool:
        return (self.workflows is not None and self.async_state is not None and source.location is not None
                and source.size > self.async_threshold
                and not self._blob_present(store, checksums.blob_key, source.size))

    def _put_async(self, file_key: str, version: str, source: StagedSource, checksums: Checksums,
                   metadata: FileMetadata) -> PutResult:
        assert self.workflows is not None and self.async_state is not None and source.location is not None
        store, replica = self.replicas[source.replica], source.replica.value
        data = {"source": {"url": source.location[0], "key": source.location[1]},
                "destination": {"url": store.url, "key": str(checksums.blob_key)},
                "expected": checksums.as_dict(),
                "metadata": {"url": store.url, "key": file_key, "document": metadata, "replica": replica},
                "record": {"table": ASYNC_STATE_TABLE, "hash_key": file_key, "sort_key": replica}}
        for attempt in range(_MAX_ATTEMPTS):
            name = f"files-put-{file_key}" + (f"~{attempt}" if attempt else "")
            record = self.workflows.status(name)
            if record is not None and record.status == "FAILED":
                continue  # that attempt failed: a re-PUT tries again
            if record is None and attempt:
                self.async_state.delete(file_key, replica)  # reads answer 404 again while it runs
            try:
                return PutResult(version, created=False, task_id=self.workflows.start(COPY_WORKFLOW, data, name=name))
            except ExecutionAlreadyExists:
                raise FileConflict(f"{file_key} is being written with different content") from None
        raise CopyFailed(f"{_MAX_ATTEMPTS} copies of {file_key} failed; use another version")

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

        The kernel copies the source into the spool and the four digests read the spool's pages in
        parallel (`_SpoolCopy`, `digest_stream`), so the checksums are those of the bytes stored,
        whatever happens to the source meanwhile."""
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        spool = self.spool_dir / f"{os.getpid()}-{uuidlib.uuid4().hex}"  # the start-up clean-up reads the pid
        try:
            with source.open() as reader, open(spool, "w+b", buffering=0) as out:
                with _SpoolCopy(reader.fileno(), out.fileno()) as copy:
                    checksums, size = digest_stream(copy, source.size)  # type: ignore[arg-type]
            copied = dataclasses.replace(source, size=size)
            if not self._blob_present(store, checksums.blob_key, copied.size):
                try:
                    store.put_file(str(checksums.blob_key), spool, content_type=source.content_type, if_absent=True)
                except BlobAlreadyExists:
                    pass  # a concurrent writer stored the same content-addressed bytes
            return copied, checksums
        finally:
            spool.unlink(missing_ok=True)


def _cause_message(cause: Any) -> str:
    """The message of a task failure's cause (Lambda's `{"errorMessage", "errorType"}` JSON)."""
    try:
        return str(json.loads(cause)["errorMessage"])
    except (TypeError, ValueError, KeyError):
        return str(cause or "unknown cause")


_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux: map the pages in one call, not one fault each
_NO_SENDFILE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


class _SpoolCopy:
    """Copies a local source into the spool inside the kernel (`sendfile`) and hands every copied range
    to the digests as a read-only mapping of the spool: the checksums are those of the bytes stored,
    and no byte passes through this process's memory on the way (a read and a write each cost about
    as much CPU as one of the digests). `read(count)` is the reader `digest_stream` takes chunks from.

    A thread of its own `fdatasync`s every `flush_every` bytes, so the disk writes overlap the hashing
    and the closing `fsync` (on leaving the `with`) has little left to wait for. The spool is ours
    alone, so a mapping of a range already written cannot lose its pages to a truncation."""

    def __init__(self, source_fd: int, fd: int, flush_every: int = 64 * 1024 * 1024) -> None:
        self.source_fd, self.fd, self.flush_every = source_fd, fd, flush_every
        self.offset = self.pending = 0
        self.wake, self.closing = threading.Event(), False
        self.error: OSError | None = None
        self.flusher = threading.Thread(target=self._flush, daemon=True)
        self.flusher.start()

    def read(self, count: int) -> memoryview | bytes:
        start = self.offset
        while self.offset - start < count:
            sent = self._copy(count - (self.offset - start))
            if not sent:
                break  # the end of the source, wherever it is now
            self.offset += sent
        if self.offset == start:
            return b""
        self.pending += self.offset - start
        if self.pending >= self.flush_every:
            self.pending = 0
            self.wake.set()
        aligned = start - start % mmap.ALLOCATIONGRANULARITY
        mapping = mmap.mmap(self.fd, self.offset - aligned, flags=mmap.MAP_SHARED | _MAP_POPULATE,
                            prot=mmap.PROT_READ, offset=aligned)
        return memoryview(mapping)[start - aligned:].toreadonly()  # unmapped once the digests drop it

    def _copy(self, count: int) -> int:
        """Appends up to `count` bytes of the source at `offset` to the spool; 0 at the source's end."""
        try:
            return os.sendfile(self.fd, self.source_fd, self.offset, count)
        except OSError as exc:
            if exc.errno not in _NO_SENDFILE:
                raise
        data = os.pread(self.source_fd, count, self.offset)  # a file system without splice support
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        return len(data)

    def _flush(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            if self.closing:
                return
            try:
                os.fdatasync(self.fd)
            except OSError as exc:  # reported by __exit__
                self.error = self.error or exc

    def __enter__(self) -> _SpoolCopy:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.closing = True
        self.wake.set()
        self.flusher.join()
        if exc_type is None:
            if self.error is not None:
                raise self.error
            os.fsync(self.fd)


def _differences(declared: Checksums, actual: Checksums) -> str:
    wanted, got = declared.as_dict(), actual.as_dict()
    return ", ".join(f"{name}: declared {wanted[name]}, computed {got[name]}" for name in wanted
                     if wanted[name] != got[name]) or "size differs"
