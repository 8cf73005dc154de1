"""Local-disk blob store (`file:///abs/dir`).

Layout: key `a/b/name` lives at `<root>/a/b/~na/<name>`; the two-character shard keeps directories
small, and a listing whose prefix names at least two characters of the last part reads one shard. Key
parts may not be empty, `.` or `..`; a part that starts with `.`, `~` or `%`, or ends with `.meta`, is
stored under an escaped name (`%` and the hex of its first character, e.g. `.bashrc` → `%2ebashrc`; a
trailing `.meta` → `.%6deta`), so that it cannot be hidden, collide with a shard directory or a sidecar,
or escape the root; listings decode names and keep key order. Objects are written to `<root>/.tmp/`,
fsynced, then published with `link()` (a conditional create: it fails if the key exists) or `replace()`
(an overwrite). Content type and user metadata live in a sidecar `<path>.meta` published before the
object itself, so a visible object always has its metadata. Temp files are named `<pid>-<random>` after
the process writing them, so that `remove_orphaned_temporaries` can delete those of interrupted writes
without touching a live sibling's (several server processes may share a store).

Signed URLs are served by the DSS API itself (`dss.api.blobserver`): `/blobstore/<name>/<key>` with
`expires` and an HMAC-SHA256 `signature` over name, key, expiry and disposition.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import heapq
import hmac
import itertools
import json
import os
import time
import urllib.parse
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from dss.processes import process_running
from dss.storage.blobstore import BlobAlreadyExists, BlobInfo, BlobNotFound, BlobStore, BlobWriter

__all__ = ["LocalBlobStore", "remove_orphaned_files"]

_META_SUFFIX = ".meta"
_SHARD = 2
_MARK = "~"  # shard directories are `~ab`; key parts may not start with it, so the two never collide


def _escape(part: str) -> str:
    """The file-system name of a key part (module docstring)."""
    if part in ("", ".", ".."):
        raise ValueError(part)
    if part.endswith(_META_SUFFIX):
        part = part[:-len(_META_SUFFIX)] + ".%6deta"
    if part[0] in ".~%":
        part = f"%{ord(part[0]):02x}{part[1:]}"
    return part


def _unescape(name: str) -> str:
    if name.startswith("%"):
        name = chr(int(name[1:3], 16)) + name[3:]
    if name.endswith(".%6deta"):
        name = name[:-len(".%6deta")] + _META_SUFFIX
    return name


def remove_orphaned_files(directory: Path, before: float, *, unnamed_before: float | None = None) -> int:
    """Delete the files of interrupted writes in `directory`, named `<pid>-<random>`; returns how many.

    A file is orphaned when it was last modified before `before` (the caller's start, as epoch seconds)
    and the process named in it no longer runs. Files named without a pid (older versions) need only be
    older than `unnamed_before` (default `before`). The age also protects a live writer in another pid
    namespace."""
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        owner = entry.name.split("-", 1)[0] if "-" in entry.name else ""
        named = owner.isdigit()
        try:
            limit = before if named or unnamed_before is None else unnamed_before
            if not entry.is_file(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_mtime >= limit:
                continue
            if named and process_running(int(owner)):
                continue
            os.unlink(entry.path)
            removed += 1
        except FileNotFoundError:  # committed or aborted meanwhile
            continue
    return removed


def _compatible(shard: str, stem: str) -> bool:
    """Could a name in this shard start with `stem`?"""
    return shard.startswith(stem) or stem.startswith(shard)


def _before(prefix: str, start_after: str | None) -> bool:
    """Is every key beginning with `prefix` at or before `start_after`? Then its subtree is skipped."""
    return start_after is not None and prefix < start_after[: len(prefix)]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_name() -> str:
    return f"{os.getpid()}-{uuid.uuid4().hex}"


class _RangeReader:
    """A file object limited to [start, end)."""

    def __init__(self, path: Path, start: int, end: int | None) -> None:
        self._file = open(path, "rb")
        self._file.seek(start)
        self._left = None if end is None else max(0, end - start)

    def read(self, size: int = -1) -> bytes:
        if self._left is None:
            return self._file.read(size)
        if size < 0 or size > self._left:
            size = self._left
        data = self._file.read(size)
        self._left -= len(data)
        return data

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> _RangeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _LocalWriter(BlobWriter):
    def __init__(self, store: LocalBlobStore, key: str, content_type: str,
                 metadata: Mapping[str, str] | None, if_absent: bool) -> None:
        self.store, self.key, self.if_absent = store, key, if_absent
        self.content_type, self.metadata = content_type, dict(metadata or {})
        self.tmp = store.tmp_dir / _temp_name()
        self._file: BinaryIO | None = open(self.tmp, "wb")
        self.size = 0

    @classmethod
    def adopt(cls, store: LocalBlobStore, key: str, staged: Path, content_type: str,
              metadata: Mapping[str, str] | None, if_absent: bool) -> _LocalWriter:
        """A writer whose bytes are already complete in `staged` (a file inside the store's tmp dir)."""
        writer = cls.__new__(cls)
        writer.store, writer.key, writer.if_absent = store, key, if_absent
        writer.content_type, writer.metadata = content_type, dict(metadata or {})
        writer.tmp, writer._file, writer.size = staged, None, staged.stat().st_size
        return writer

    def write(self, chunk: bytes) -> None:
        assert self._file is not None, "writer already closed"
        self._file.write(chunk)
        self.size += len(chunk)

    def commit(self) -> BlobInfo:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        path = self.store.path(self.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta_tmp = self.tmp.with_suffix(_META_SUFFIX)
        meta_tmp.write_text(json.dumps({"content_type": self.content_type, "metadata": self.metadata}))
        try:
            if self.if_absent:
                if path.exists():
                    raise BlobAlreadyExists(self.key)
                os.replace(meta_tmp, self.store.meta_path(path))
                try:
                    os.link(self.tmp, path)
                except FileExistsError:
                    raise BlobAlreadyExists(self.key) from None
            else:
                os.replace(meta_tmp, self.store.meta_path(path))
                os.replace(self.tmp, path)
            _fsync_dir(path.parent)
        finally:
            self.abort()
        return BlobInfo(self.key, self.size, self.content_type, self.metadata)

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        for leftover in (self.tmp, self.tmp.with_suffix(_META_SUFFIX)):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass


class LocalBlobStore(BlobStore):
    scheme = "file"

    def __init__(self, bucket: str, *, client: Any = None, name: str | None = None,
                 signing_secret: bytes | None = None, **_: Any) -> None:
        super().__init__(bucket)
        self.root = Path(bucket)
        self.name = name or hashlib.sha1(bucket.encode()).hexdigest()[:12]
        self.secret = signing_secret or b""
        self.tmp_dir = self.root / ".tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return self.root.as_uri()

    @classmethod
    def make_client(cls, options: Mapping[str, Any]) -> None:
        return None

    # --- key ↔ path ---------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        try:
            names = [_escape(part) for part in key.split("/")]
        except ValueError:
            raise BlobNotFound(key) from None  # such keys could escape the root
        # The shard is named after the key's own characters, so shards sort as the keys in them do.
        return self.root.joinpath(*names[:-1], _MARK + key.rpartition("/")[2][:_SHARD], names[-1])

    @staticmethod
    def meta_path(path: Path) -> Path:
        return path.with_name(path.name + _META_SUFFIX)

    # --- primitives ---------------------------------------------------------------------------
    def head(self, key: str) -> BlobInfo:
        path = self.path(key)
        try:
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            raise BlobNotFound(key) from None
        try:
            meta = json.loads(self.meta_path(path).read_text())
        except (FileNotFoundError, ValueError):
            meta = {}
        return BlobInfo(key, stat.st_size, meta.get("content_type", "application/octet-stream"),
                        meta.get("metadata", {}),
                        last_modified=datetime.datetime.fromtimestamp(stat.st_mtime, datetime.UTC))

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        try:
            return _RangeReader(self.path(key), start, end)  # type: ignore[return-value]
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise BlobNotFound(key) from None

    def writer(self, key: str, *, size: int | None = None, content_type: str = "application/octet-stream",
               metadata: Mapping[str, str] | None = None, if_absent: bool = False) -> BlobWriter:
        self.path(key)  # validates the key
        return _LocalWriter(self, key, content_type, metadata, if_absent)

    def put_file(self, key: str, path: Path, *, content_type: str = "application/octet-stream",
                 metadata: Mapping[str, str] | None = None, if_absent: bool = False) -> BlobInfo:
        """Link the file into place when it is on the same file system: no second copy of the bytes."""
        staged = self.tmp_dir / _temp_name()
        try:
            os.link(path, staged)
        except OSError:
            return super().put_file(key, path, content_type=content_type, metadata=metadata, if_absent=if_absent)
        writer = _LocalWriter.adopt(self, key, staged, content_type, metadata, if_absent)
        return writer.commit()

    def remove_orphaned_temporaries(self, before: float) -> int:
        """Delete the temp files of interrupted writes (`remove_orphaned_files`); returns how many."""
        return remove_orphaned_files(self.tmp_dir, before)

    def delete(self, key: str) -> None:
        path = self.path(key)
        for target in (path, self.meta_path(path)):
            try:
                target.unlink()
            except FileNotFoundError:
                pass

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        parent, _, stem = prefix.rpartition("/")
        head = f"{parent}/" if parent else ""
        directory = self.root / parent if parent else self.root
        return (key for key in self._walk(directory, head, stem, start_after) if key.startswith(prefix))

    def _walk(self, directory: Path, head: str, stem: str, start_after: str | None) -> Iterator[str]:
        """Keys under `directory` (whose keys start with `head`) whose next part starts with `stem`, sorted.

        Names in shard directories (`~ab`) and keys below sub-directories form two sorted streams: shards
        in order hold names in order, and the keys of sub-directory `d` sort together right after `d/`."""
        try:
            found = [e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith(".")]
        except (FileNotFoundError, NotADirectoryError):
            return
        shards = sorted(e for e in found if e.startswith(_MARK) and _compatible(e[1:], stem))
        subdirs = sorted((_unescape(e), e) for e in found if not e.startswith(_MARK) and _unescape(e).startswith(stem))
        names = itertools.chain.from_iterable(
            self._shard(directory / shard, head, stem, start_after) for shard in shards
            if not _before(head + shard[1:], start_after))
        nested = itertools.chain.from_iterable(
            self._walk(directory / name, f"{head}{part}/", "", start_after) for part, name in subdirs
            if not _before(f"{head}{part}/", start_after))
        yield from heapq.merge(names, nested)

    @staticmethod
    def _shard(shard_dir: Path, head: str, stem: str, start_after: str | None) -> Iterator[str]:
        try:
            names = sorted(name for name in (_unescape(e.name) for e in os.scandir(shard_dir)
                                             if not e.name.endswith(_META_SUFFIX) and e.is_file())
                           if name.startswith(stem))
        except (FileNotFoundError, NotADirectoryError):
            return
        for name in names:
            key = head + name
            if start_after is None or key > start_after:
                yield key

    # --- signed URLs --------------------------------------------------------------------------
    def _signature(self, key: str, expires: int, disposition: str) -> str:
        message = "\n".join((self.name, key, str(expires), disposition)).encode()
        digest = hmac.new(self.secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def signed_url(self, key: str, expires_in: int, content_disposition: str | None = None) -> str:
        """A root-relative URL; the API layer makes it absolute with the request's base URL."""
        if not self.secret:
            raise RuntimeError("this local store was built without a signing secret")
        expires = int(time.time()) + expires_in
        query = {"expires": str(expires), "signature": self._signature(key, expires, content_disposition or "")}
        if content_disposition:
            query["disposition"] = content_disposition
        return f"/blobstore/{self.name}/{urllib.parse.quote(key)}?{urllib.parse.urlencode(query)}"

    def verify_signature(self, key: str, expires: str, signature: str, disposition: str = "") -> bool:
        try:
            expiry = int(expires)
        except ValueError:
            return False
        if not self.secret or expiry < time.time():
            return False
        return hmac.compare_digest(self._signature(key, expiry, disposition), signature)
