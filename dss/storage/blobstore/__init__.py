"""The BlobStore port: a bucket of objects addressed by string keys, over local disk, S3 or GCS.

Backends implement a few primitives (`head`, `open`, `writer`, `delete`, `list`, `signed_url`);
everything else is derived here once. Copies from another store (`copy_start`, `copy_part`,
`copy_finish`, `copy_abort`: the steps of the copy workflow) work here for any pair of stores, through
the streams; a backend overrides them for a source of its own kind, whose service copies by itself
(S3 UploadPartCopy, GCS rewrite). A backend is chosen by URL scheme through `BlobStoreFactory`,
which builds each SDK client once and caches one store per bucket.

Errors: every backend translates its SDK's errors at its edge into this vocabulary and keeps the
original as `__cause__`:

    BlobStoreError
    ├── BlobNotFound           the key or the bucket does not exist
    ├── BlobAlreadyExists      a conditional create (`if_absent=True`) found the key already there
    ├── BlobAccessDenied       the credentials were refused
    └── BlobStoreUnavailable   a transient failure (timeout, throttling, 5xx): try again later
"""
from __future__ import annotations

import abc
import datetime
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar

__all__ = [
    "BlobStore", "BlobWriter", "BlobInfo", "BlobStoreError", "BlobNotFound", "BlobAlreadyExists",
    "BlobAccessDenied", "BlobStoreUnavailable", "BlobStoreFactory", "split_url", "CopySession",
    "STAGED_PARTS_PREFIX", "staged_part_key",
]


class BlobStoreError(Exception):
    pass


class BlobNotFound(BlobStoreError):
    pass


class BlobAlreadyExists(BlobStoreError):
    pass


class BlobAccessDenied(BlobStoreError):
    pass


class BlobStoreUnavailable(BlobStoreError):
    pass


@dataclass(frozen=True)
class BlobInfo:
    key: str
    size: int
    content_type: str = "application/octet-stream"
    metadata: Mapping[str, str] = field(default_factory=dict)
    # The store's own checksum, where it has one: S3 ETag (no quotes), GCS crc32c (lower-case hex).
    etag: str | None = None
    crc32c: str | None = None
    last_modified: datetime.datetime | None = None


class BlobWriter(abc.ABC):
    """Receives an object's bytes in order; nothing is visible under the key before `commit`."""

    @abc.abstractmethod
    def write(self, chunk: bytes) -> None: ...

    @abc.abstractmethod
    def commit(self) -> BlobInfo:
        """Publish atomically. With `if_absent`, raise BlobAlreadyExists if the key exists."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Discard everything written; safe to call more than once or after commit."""

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.abort()


CopySession = dict[str, Any]  # see BlobStore.copy_start

STAGED_PARTS_PREFIX = "workflows/parts/"


def staged_part_key(upload_id: str, number: int) -> str:
    """Where the base class stages part `number` of a copy in the destination store."""
    return f"{STAGED_PARTS_PREFIX}{upload_id}/{number:05d}"


def split_url(url: str) -> tuple[str, str, str]:
    """`s3://bucket/some/key` → ("s3", "bucket", "some/key"); `file:///a/b` → ("file", "/a/b", "")."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise ValueError(f"not a storage URL: {url!r}")
    if scheme == "file":
        return scheme, rest, ""
    bucket, _, key = rest.partition("/")
    return scheme, bucket, key


class BlobStore(abc.ABC):
    """One bucket (or one local directory). Keys are `/`-separated strings; listings sort by key."""

    scheme: ClassVar[str]

    def __init__(self, bucket: str) -> None:
        self.bucket = bucket

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.bucket}"

    def native_url(self, key: str) -> str:
        return f"{self.url}/{key}"

    # --- primitives -------------------------------------------------------------------------
    @abc.abstractmethod
    def head(self, key: str) -> BlobInfo:
        """Size, content type, user metadata and native checksum of `key` (BlobNotFound if absent)."""

    @abc.abstractmethod
    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        """A readable stream of bytes [start, end) of `key`; the caller closes it."""

    @abc.abstractmethod
    def writer(self, key: str, *, size: int | None = None, content_type: str = "application/octet-stream",
               metadata: Mapping[str, str] | None = None, if_absent: bool = False) -> BlobWriter:
        """A writer for `key`. `size`, when known, lets a backend choose single or multipart upload."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key`; no error if it is absent."""

    @abc.abstractmethod
    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        """Keys starting with `prefix`, in lexicographic order, strictly after `start_after`."""

    @abc.abstractmethod
    def signed_url(self, key: str, expires_in: int, content_disposition: str | None = None) -> str:
        """A URL that lets anyone GET `key` (with Range) until it expires."""

    def tags(self, key: str) -> dict[str, str]:
        """Object tags, for stores that have them (S3); user metadata serves elsewhere."""
        self.head(key)
        return {}

    # --- derived ----------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except BlobNotFound:
            return False
        return True

    def get(self, key: str) -> bytes:
        with self.open(key) as stream:
            return stream.read()

    def put(self, key: str, data: bytes, *, content_type: str = "application/octet-stream",
            metadata: Mapping[str, str] | None = None, if_absent: bool = False) -> BlobInfo:
        with self.writer(key, size=len(data), content_type=content_type, metadata=metadata,
                         if_absent=if_absent) as writer:
            if data:
                writer.write(data)
            return writer.commit()

    def put_file(self, key: str, path: Path, *, content_type: str = "application/octet-stream",
                 metadata: Mapping[str, str] | None = None, if_absent: bool = False) -> BlobInfo:
        """Store the contents of a local file (which the caller may delete afterwards)."""
        with open(path, "rb") as source, self.writer(key, size=path.stat().st_size, content_type=content_type,
                                                     metadata=metadata, if_absent=if_absent) as writer:
            while chunk := source.read(8 * 1024 * 1024):
                writer.write(chunk)
            return writer.commit()

    # --- copies from another store: the steps of the copy workflow ----------------------------
    def copy_start(self, source: BlobStore, source_key: str, key: str, *, upload_id: str, size: int,
                   part_size: int, source_info: BlobInfo) -> CopySession:
        """Begin copying `source_key` of `source` (described by `source_info`) into `key`.

        Returns the copy's session: a JSON-able dict the caller keeps and hands to the other `copy_*`
        calls, in any process. Its `part_size` is the one to plan parts with (a store that copies in one
        step answers the object's size), and its `kind` names the method. Parts may then be copied in any
        order and in parallel; every step is idempotent, so a retry or a resumed workflow repeats nothing
        that is already in place. `upload_id` is the caller's stable name for this copy.

        The base class stages each part as an object `workflows/parts/<upload_id>/<n>` read through the
        source's stream, and concatenates them when finishing; backends override it for sources of their
        own kind, whose service can copy without the bytes passing through this process."""
        return {"kind": "staged", "id": upload_id, "part_size": part_size}

    def copy_part(self, session: CopySession, source: BlobStore, source_key: str, number: int, start: int,
                  end: int, resume: Any = None) -> Any:
        """Copy bytes [start, end) of the source as part `number` (1-based). Returns None once the part is
        in place, or else a JSON-able marker to call again with as `resume` (a service step that ended
        before the part did, such as a GCS rewrite token)."""
        target = staged_part_key(session["id"], number)
        try:
            if self.head(target).size == end - start:
                return None  # published atomically, so complete: an earlier run copied it
        except BlobNotFound:
            pass
        with source.open(source_key, start, end) as stream, self.writer(target, size=end - start) as writer:
            copied = 0
            while chunk := stream.read(8 * 1024 * 1024):
                writer.write(chunk)
                copied += len(chunk)
            if copied != end - start:
                raise BlobStoreError(f"{source_key}[{start}:{end}] gave {copied} bytes: the source changed")
            writer.commit()
        return None

    def copy_finish(self, session: CopySession, key: str, *, size: int, part_count: int, content_type: str,
                    metadata: Mapping[str, str], if_absent: bool,
                    verify: Callable[[Mapping[str, Any]], None]) -> None:
        """Publish `key` from the copied parts, and clean them up.

        Before anything is visible under `key`, `verify` receives what the store established about the
        assembled bytes: `size` and the checksums it computed or had its service compute (names as in
        `dss.checksums.Checksums`); it raises to refuse, and then nothing is published. With `if_absent`,
        BlobAlreadyExists if `key` exists."""
        from dss.checksums import ChecksumSet, fan_out

        digests = ChecksumSet(size)
        with self.writer(key, size=size, content_type=content_type, metadata=metadata,
                         if_absent=if_absent) as writer:
            copied = fan_out(self._staged_chunks(session["id"], part_count), [*digests.sinks(), writer.write])
            verify({"size": copied, **digests.result().as_dict()})
            writer.commit()
        self.copy_abort(session, key)

    def copy_abort(self, session: CopySession, key: str) -> None:
        """Discard what an unfinished copy left (its parts); no error if there is nothing."""
        if session.get("kind") == "staged":
            for part in list(self.list(f"{STAGED_PARTS_PREFIX}{session['id']}/")):
                self.delete(part)

    def _staged_chunks(self, upload_id: str, part_count: int) -> Iterator[bytes]:
        for number in range(1, part_count + 1):
            with self.open(staged_part_key(upload_id, number)) as stream:  # BlobNotFound: a part vanished
                while chunk := stream.read(8 * 1024 * 1024):
                    yield chunk

    def get_json(self, key: str) -> Any:
        return json.loads(self.get(key))

    def put_json(self, key: str, document: Any, *, if_absent: bool = False) -> BlobInfo:
        data = json.dumps(document, separators=(",", ":")).encode()
        return self.put(key, data, content_type="application/json", if_absent=if_absent)


Builder = Callable[[str, dict], BlobStore]


class BlobStoreFactory:
    """Builds stores by URL scheme, each SDK client once, and one store per bucket (thread-safe).

    `options` are handed to the backends: `signing_secret` and `name` for local stores' signed URLs.
    """

    _registry: ClassVar[dict[str, str]] = {
        "file": "dss.storage.blobstore.local:LocalBlobStore",
        "s3": "dss.storage.blobstore.s3:S3BlobStore",
        "gs": "dss.storage.blobstore.gs:GSBlobStore",
    }

    def __init__(self, **options: Any) -> None:
        self.options = options
        self._stores: dict[str, BlobStore] = {}
        self._clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def schemes(self) -> tuple[str, ...]:
        return tuple(self._registry)

    def for_url(self, url: str, **options: Any) -> BlobStore:
        """The store for the bucket (or directory) named by `url`; any key part is ignored."""
        scheme, bucket, _ = split_url(url)
        cache_key = f"{scheme}://{bucket}" + json.dumps(options, sort_keys=True, default=str)
        with self._lock:
            store = self._stores.get(cache_key)
            if store is None:
                store = self._build(scheme, bucket, {**self.options, **options})
                self._stores[cache_key] = store
            return store

    def _build(self, scheme: str, bucket: str, options: dict) -> BlobStore:
        import importlib

        try:
            target = self._registry[scheme]
        except KeyError:
            raise ValueError(f"no blob store for scheme {scheme!r}") from None
        module_name, _, class_name = target.partition(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        if scheme not in self._clients:
            self._clients[scheme] = cls.make_client(options)
        return cls(bucket, client=self._clients[scheme], **options)
