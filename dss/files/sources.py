"""Staged sources of PUT /files: an object in an S3 or GCS bucket, or a file under a staging root.

Declared checksums come from the object's tags and user metadata (tags win), under the names the
`hca` client (`hca-dss-sha256` …) and the `dbio` client (`dss-sha256` …) use. A local file declares
none; the server computes them while copying.

A local file is opened once, by walking from its staging root one component at a time without
following any symbolic link, and is then read only through that descriptor: what is checked is what
is copied, whatever happens to the path meanwhile. The server's data directory is never a source.
"""
from __future__ import annotations

import errno
import io
import mimetypes
import os
import re
import stat
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from dss.checksums import CHECKSUM_PATTERNS
from dss.errors import IllegalArguments, IllegalSource, InvalidChecksum, MissingChecksum, UnknownSourceSchema
from dss.identifiers import Replica
from dss.storage.blobstore import BlobAccessDenied, BlobNotFound, BlobStore, BlobStoreFactory

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = ["StagedSource", "SourceResolver"]

_URL_RE = re.compile(r"^(s3|gs|wasb|file)://([^/]*)/(.+)$")
_PREFIXES = ("hca-dss-", "dss-")
_REPLICA_OF_SCHEME = {"s3": Replica.aws, "gs": Replica.gcp, "file": Replica.aws}

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer (it is refused after fstat);
# O_NOCTTY: a terminal must not become the server's controlling terminal.
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY

Identity = tuple[int, int]  # (st_dev, st_ino): what a directory is, whatever path leads to it


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class StagedSource:
    url: str
    replica: Replica
    size: int
    content_type: str
    declared: Mapping[str, str] | None  # None: nothing declared (local files)
    open: Callable[[], BinaryIO]  # a new reader at byte 0 on each call; the caller closes it
    # Releases what the source holds (a local file's descriptor); idempotent, readers stay usable.
    close: Callable[[], None] = field(default=_nothing)
    # (store URL, key) of a bucket source, from which a workflow may copy it later; None for local files,
    # which are only ever read through the descriptor opened for the request.
    location: tuple[str, str] | None = None

    def __enter__(self) -> StagedSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _declared_checksums(tags: Mapping[str, str], metadata: Mapping[str, str]) -> dict[str, str]:
    merged = {k.lower(): v for k, v in metadata.items()}
    merged.update({k.lower(): v for k, v in tags.items()})
    found: dict[str, str] = {}
    for name, pattern in CHECKSUM_PATTERNS.items():
        value = next((merged[p + name] for p in _PREFIXES if p + name in merged), None)
        if value is None:
            raise MissingChecksum(f"Source object lacks the checksum tag or metadata 'hca-dss-{name}'")
        value = value.strip().lower()
        if not pattern.match(value):
            raise InvalidChecksum(f"Checksum 'hca-dss-{name}' of the source object is malformed: {value!r}")
        found[name] = value
    return found


class SourceResolver:
    """Turns a `source_url` into a StagedSource. `staging_roots` are resolved already (configuration);
    `data_dir`, the server's own directory, is never a source even if it lies under a staging root."""

    def __init__(self, factory: BlobStoreFactory, staging_roots: tuple[Path, ...],
                 data_dir: Path | None = None) -> None:
        self.factory = factory
        self.staging_roots = staging_roots
        self.data_dir = data_dir.resolve() if data_dir is not None else None

    def resolve(self, url: str) -> StagedSource:
        match = _URL_RE.match(url)
        if not match:
            if url.startswith("wasb://"):
                raise UnknownSourceSchema(f"Unknown source URL scheme in {url!r}")
            raise IllegalArguments(
                f"source_url must look like s3://bucket/key, gs://bucket/key or file:///path: {url!r}")
        scheme, bucket, key = match.groups()
        if scheme == "wasb":
            raise UnknownSourceSchema(f"Unknown source URL scheme in {url!r}")
        if scheme == "file":
            return self._local(url, bucket, key)
        try:
            store = self.factory.for_url(f"{scheme}://{bucket}")
        except BlobAccessDenied as exc:
            # No credentials configured for that cloud. 400 rather than 503: clients retry a 503 (the hca
            # client up to 10 times, as Retry-After asks), and no retry helps until an operator acts.
            raise IllegalSource(f"The server cannot read {scheme}:// sources: {exc}") from exc
        return self._bucket(url, scheme, store, key)

    def _bucket(self, url: str, scheme: str, store: BlobStore, key: str) -> StagedSource:
        try:
            info = store.head(key)
            tags = store.tags(key)
        except BlobNotFound:
            raise IllegalSource(f"Source object {url} does not exist", code="source_not_found") from None
        except BlobAccessDenied:
            raise IllegalSource(f"Access to the source object {url} was denied") from None
        declared = _declared_checksums(tags, info.metadata)
        return StagedSource(url, _REPLICA_OF_SCHEME[scheme], info.size, info.content_type or "application/octet-stream",
                            declared, lambda: store.open(key), location=(store.url, key))

    def _local(self, url: str, host: str, rest: str) -> StagedSource:
        if host not in ("", "localhost"):
            raise IllegalSource(f"file:// sources must be local paths: {url!r}")
        root, parts = self._beneath_root(url, rest)
        descriptor = _Descriptor(_open_beneath(root, parts, self._protected(), url))
        size = os.fstat(descriptor.fd).st_size
        content_type = mimetypes.guess_type(parts[-1])[0] or "application/octet-stream"
        return StagedSource(url, Replica.aws, size, content_type, None, descriptor.reader, descriptor.close)

    def _beneath_root(self, url: str, rest: str) -> tuple[Path, list[str]]:
        """The staging root the path names, and the components below it. The path is taken as written:
        resolving it would follow symbolic links that the caller controls."""
        if "\x00" in rest:
            raise IllegalSource(f"{url!r} contains a NUL character")
        parts = [part for part in rest.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise IllegalSource(f"file:// sources may not contain '..': {url}")
        root = self._root_of(parts)
        if root is None:
            raise IllegalSource(f"{url} is not under a staging root (DSS_STAGING_ROOTS)")
        if self.data_dir is not None and root.is_relative_to(self.data_dir):
            raise IllegalSource(f"{url} is in the server's data directory, which is never a source")
        below = parts[len(root.parts) - 1:]
        if not below:
            raise IllegalSource(f"{url} is not a regular file")
        return root, below

    def _root_of(self, parts: list[str]) -> Path | None:
        """The deepest staging root that is a prefix of `parts` (so a root nested in another is itself)."""
        for root in sorted(self.staging_roots, key=lambda r: len(r.parts), reverse=True):
            if parts[:len(root.parts) - 1] == list(root.parts[1:]):
                return root
        return None

    def _protected(self) -> frozenset[Identity]:
        """The data directory and the directories directly in it (keys, replicas, spool, …): a walk that
        enters one of them, by whatever path, is refused. Read per request: they may be created later."""
        if self.data_dir is None:
            return frozenset()
        found: set[Identity] = set()
        try:
            found.add(_identity(os.stat(self.data_dir)))
            with os.scandir(self.data_dir) as entries:
                found.update(_identity(entry.stat()) for entry in entries if entry.is_dir())
        except OSError:
            pass  # not there (yet): nothing in it to protect
        return frozenset(found)


def _identity(st: os.stat_result) -> Identity:
    return st.st_dev, st.st_ino


def _open_beneath(root: Path, parts: list[str], protected: frozenset[Identity], url: str) -> int:
    """A descriptor of the regular file `root/parts…`, opened without following a symbolic link at any
    component below the root (the root itself is the operator's, resolved once at configuration)."""
    try:
        directory = os.open(root, _DIRECTORY_FLAGS & ~os.O_NOFOLLOW)
    except OSError:
        raise IllegalSource(f"The staging root of {url} is not available") from None
    try:
        device = _check_directory(directory, protected, url).st_dev
        for name in parts[:-1]:
            child = _open_at(directory, name, _DIRECTORY_FLAGS, url)
            os.close(directory)
            directory = child
            _check_directory(directory, protected, url)
        # Refused before opening where possible (a device is better left unopened); the fstat below decides.
        _check_type(_lstat_at(directory, parts[-1], url), url)
        fd = _open_at(directory, parts[-1], _FILE_FLAGS, url)
    finally:
        os.close(directory)
    try:
        _check_file(os.fstat(fd), device, url)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_directory(fd: int, protected: frozenset[Identity], url: str) -> os.stat_result:
    st = os.fstat(fd)
    if _identity(st) in protected:
        raise IllegalSource(f"{url} is in the server's data directory, which is never a source")
    return st


def _check_type(st: os.stat_result, url: str) -> None:
    if stat.S_ISLNK(st.st_mode):
        raise IllegalSource(f"{url} is a symbolic link; file:// sources must name the file itself")
    if not stat.S_ISREG(st.st_mode):
        raise IllegalSource(f"{url} is not a regular file")


def _check_file(st: os.stat_result, device: int, url: str) -> None:
    _check_type(st, url)
    if st.st_dev != device:
        raise IllegalSource(f"{url} is on another file system than its staging root")
    if st.st_nlink != 1:
        # Another name for the same bytes may lie outside every staging root.
        raise IllegalSource(f"{url} has more than one hard link")


def _lstat_at(directory: int, name: str, url: str) -> os.stat_result:
    try:
        return os.stat(name, dir_fd=directory, follow_symlinks=False)
    except OSError as exc:
        raise _refusal(exc, directory, name, url) from None


def _open_at(directory: int, name: str, flags: int, url: str) -> int:
    try:
        return os.open(name, flags, dir_fd=directory)
    except OSError as exc:
        raise _refusal(exc, directory, name, url) from None


def _refusal(exc: OSError, directory: int, name: str, url: str) -> IllegalSource:
    """The error for a failed open or stat, naming nothing beyond the URL the caller sent."""
    if exc.errno == errno.ENOENT:
        return IllegalSource(f"Source file {url} does not exist", code="source_not_found")
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        try:
            link = stat.S_ISLNK(os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode)
        except OSError:
            link = False
        if link or exc.errno == errno.ELOOP:
            return IllegalSource(f"{url} passes through a symbolic link; file:// sources may not")
        return IllegalSource(f"{url} names a file where a directory was expected")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return IllegalSource(f"The server may not read {url}")
    return IllegalSource(f"{url} cannot be opened ({errno.errorcode.get(exc.errno or 0, 'error')})")


class _Descriptor:
    """Owns the one descriptor of a local source: closed by close(), or else when garbage-collected."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)

    def reader(self) -> BinaryIO:
        """A reader of its own (a duplicate descriptor read with pread) at byte 0: readers never share a
        position, and each outlives close()."""
        if not self._finalizer.alive:
            raise ValueError("the staged source was closed")
        return io.BufferedReader(_PositionalReader(os.dup(self.fd)))  # type: ignore[return-value]

    def close(self) -> None:
        self._finalizer()


class _PositionalReader(io.RawIOBase):
    """Reads with pread from a position of its own: readers sharing one open file never disturb each other."""

    def __init__(self, fd: int) -> None:
        self._fd, self._position = fd, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position}.get(whence)
        position = (os.fstat(self._fd).st_size if base is None else base) + offset
        if position < 0:
            raise ValueError(f"negative seek position {position}")
        self._position = position
        return position

    def fileno(self) -> int:
        return self._fd

    def readinto(self, buffer: WriteableBuffer) -> int:
        count = os.preadv(self._fd, [memoryview(buffer).cast("B")], self._position)  # straight into the buffer
        self._position += count
        return count

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()
