"""The four DSS checksums of a byte stream, computed in one pass.

`digest_stream` reads a stream once and keeps every core busy: sha256, sha1 and crc32c each advance
in order, and the MD5s of the S3 ETag's parts, which are independent, run side by side, all on a pool
of one worker per core (hashlib and google-crc32c release the GIL on large buffers); see `_Lanes`.
`fan_out` is the older scheme, one thread per sink fed by a bounded queue, kept for sinks that need
every chunk in a thread of their own.
"""
from __future__ import annotations

import collections
import hashlib
import os
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import google_crc32c

from dss.identifiers import BlobKey

__all__ = ["Checksums", "ChecksumSet", "s3_part_size", "checksum_stream", "fan_out", "CHUNK_SIZE",
           "CHECKSUM_PATTERNS", "digest_stream"]

MiB = 1024 * 1024
CHUNK_SIZE = 8 * MiB
# digest_stream hands its lanes 1 MiB pieces: lanes that hash the same piece close together find it in the
# CPU's caches, which cut a local 1 GiB ingest's CPU time by about a tenth against 8 MiB pieces.
DIGEST_CHUNK = 1 * MiB
S3_SINGLE_PART_LIMIT = 64 * MiB
S3_MAX_PARTS = 10000

CHECKSUM_PATTERNS = {
    "sha256": re.compile(r"^[a-z0-9]{64}$"),
    "sha1": re.compile(r"^[a-z0-9]{40}$"),
    "s3_etag": re.compile(r"^[a-z0-9]{32}(-([2-9]|[1-8][0-9]|9[0-9]|[1-9][0-9]{2,3}|10000))?$"),
    "crc32c": re.compile(r"^[a-z0-9]{8}$"),
}


def s3_part_size(size: int) -> int:
    """The DSS multipart convention: 64 MiB parts, larger (whole MiB) past 10,000 parts."""
    if size <= S3_MAX_PARTS * 64 * MiB:
        return 64 * MiB
    smallest = -(-size // S3_MAX_PARTS)
    return -(-smallest // MiB) * MiB


@dataclass(frozen=True)
class Checksums:
    sha256: str
    sha1: str
    s3_etag: str
    crc32c: str

    @property
    def blob_key(self) -> BlobKey:
        return BlobKey(self.sha256, self.sha1, self.s3_etag, self.crc32c)

    def as_dict(self) -> dict[str, str]:
        return {"sha256": self.sha256, "sha1": self.sha1, "s3_etag": self.s3_etag, "crc32c": self.crc32c}


class _S3Etag:
    """MD5 of the whole object up to 64 MiB, else md5(concatenated part md5s)-N."""

    def __init__(self, size: int) -> None:
        self.single = size <= S3_SINGLE_PART_LIMIT
        self.part_size = s3_part_size(size)
        self.digests: list[bytes] = []
        self.current = hashlib.md5()
        self.filled = 0

    def update(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            take = len(view) if self.single else min(len(view), self.part_size - self.filled)
            self.current.update(view[:take])
            self.filled += take
            view = view[take:]
            if not self.single and self.filled == self.part_size:
                self.digests.append(self.current.digest())
                self.current, self.filled = hashlib.md5(), 0

    def hexdigest(self) -> str:
        if self.single:
            return self.current.hexdigest()
        if self.filled or not self.digests:
            self.digests.append(self.current.digest())
            self.current, self.filled = hashlib.md5(), 0
        if len(self.digests) == 1:
            return self.digests[0].hex()
        return f"{hashlib.md5(b''.join(self.digests)).hexdigest()}-{len(self.digests)}"


class ChecksumSet:
    """Running digests. `sinks()` gives one callable per digest, for `fan_out`."""

    def __init__(self, size: int) -> None:
        self._sha256 = hashlib.sha256()
        self._sha1 = hashlib.sha1()
        self._etag = _S3Etag(size)
        self._crc = google_crc32c.Checksum()

    def sinks(self) -> list[Callable[[bytes], object]]:
        return [self._sha256.update, self._sha1.update, self._etag.update, self._crc.update]

    def result(self) -> Checksums:
        return Checksums(self._sha256.hexdigest(), self._sha1.hexdigest(), self._etag.hexdigest(),
                         self._crc.digest().hex())


_DONE = object()


def fan_out(chunks: Iterable[bytes], sinks: list[Callable[[bytes], object]], depth: int = 4) -> int:
    """Feed every chunk to every sink, each sink in its own thread. Returns the byte count.

    The first exception from a sink or from the chunk iterator is re-raised after all threads stop.
    """
    errors: list[BaseException] = []
    queues: list[queue.Queue] = [queue.Queue(maxsize=depth) for _ in sinks]

    def drain(q: queue.Queue, sink: Callable[[bytes], object]) -> None:
        failed = False
        while True:
            item = q.get()
            if item is _DONE:
                return
            if not failed:
                try:
                    sink(item)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                    errors.append(exc)
                    failed = True

    threads = [threading.Thread(target=drain, args=(q, s), daemon=True) for q, s in zip(queues, sinks)]
    for thread in threads:
        thread.start()
    total = 0
    try:
        for chunk in chunks:
            if errors:
                break
            total += len(chunk)
            for q in queues:
                q.put(chunk)
    except BaseException as exc:  # noqa: BLE001
        errors.append(exc)
    finally:
        for q in queues:
            q.put(_DONE)
        for thread in threads:
            thread.join()
    if errors:
        raise errors[0]
    return total


def read_chunks(reader, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    while True:
        chunk = reader.read(chunk_size)
        if not chunk:
            return
        yield chunk


def checksum_stream(reader, size: int) -> Checksums:
    """Checksums of everything `reader` yields (used for verification and by clients in tests)."""
    return digest_stream(reader, size)[0]


# --- parallel one-pass digests ----------------------------------------------------------------------
# sha256, sha1 and crc32c are sequential by nature; the S3 ETag's part MD5s are independent of one
# another. Each is a *lane*: an ordered queue of chunks that one worker at a time consumes. Workers (one
# per core) always take the ready lane whose next chunk is the oldest, so every lane advances together
# and a slow lane (MD5, the costliest digest) is helped by running two of its parts at once. The reader
# stays at most `window` bytes ahead of the slowest lane, which bounds memory.


class _Lane:
    __slots__ = ("consume", "pending", "busy", "retired")

    def __init__(self, consume: Callable[[bytes], object]) -> None:
        self.consume = consume
        self.pending: collections.deque[_Chunk] = collections.deque()
        self.busy = False
        self.retired = False  # no further chunk will be queued; dropped once drained


class _Chunk:
    __slots__ = ("data", "sequence", "references")

    def __init__(self, data: bytes, sequence: int, references: int) -> None:
        self.data, self.sequence, self.references = data, sequence, references


class _Lanes:
    """The scheduler: a set of lanes and worker threads sharing one condition variable."""

    def __init__(self, workers: int, window: int) -> None:
        self.condition = threading.Condition()
        self.lanes: list[_Lane] = []
        self.window, self.in_flight = window, 0
        self.error: BaseException | None = None
        self.closed = False
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for thread in self.threads:
            thread.start()

    def add(self, lane: _Lane) -> _Lane:
        with self.condition:
            self.lanes.append(lane)
        return lane

    def retire(self, lane: _Lane) -> None:
        with self.condition:
            lane.retired = True
            self.condition.notify_all()

    def submit(self, data: bytes, sequence: int, lanes: list[_Lane]) -> None:
        with self.condition:
            while self.in_flight >= self.window and self.error is None:
                self.condition.wait()
            self._raise()
            chunk = _Chunk(data, sequence, len(lanes))
            for lane in lanes:
                lane.pending.append(chunk)
            self.in_flight += len(data)
            self.condition.notify_all()

    def finish(self) -> None:
        """Wait until every queued chunk is consumed; re-raise the first failure of a lane."""
        with self.condition:
            self.closed = True
            self.condition.notify_all()
        for thread in self.threads:
            thread.join()
        self._raise()

    def abandon(self, error: BaseException) -> None:
        with self.condition:
            self.error = self.error or error
            self.closed = True
            self.condition.notify_all()
        for thread in self.threads:
            thread.join()

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def _next(self) -> _Lane | None:
        """The ready lane whose next chunk is oldest; drained retired lanes are dropped on the way."""
        self.lanes = [lane for lane in self.lanes if lane.pending or lane.busy or not lane.retired]
        ready = [lane for lane in self.lanes if lane.pending and not lane.busy]
        return min(ready, key=lambda lane: lane.pending[0].sequence, default=None)

    def _work(self) -> None:
        with self.condition:
            while True:
                lane = self._next() if self.error is None else None
                if lane is None:
                    if self.error is not None or (self.closed and not any(lane.pending for lane in self.lanes)):
                        return
                    self.condition.wait()
                    continue
                lane.busy = True
                chunk = lane.pending.popleft()
                self.condition.release()
                try:
                    lane.consume(chunk.data)
                except BaseException as exc:  # noqa: BLE001 - re-raised in the reader's thread
                    failure: BaseException | None = exc
                else:
                    failure = None
                finally:
                    self.condition.acquire()
                lane.busy = False
                self.error = self.error or failure
                chunk.references -= 1
                if chunk.references == 0:
                    self.in_flight -= len(chunk.data)
                self.condition.notify_all()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def digest_stream(reader: BinaryIO, size: int, sink: Callable[[bytes], object] | None = None, *,
                  chunk_size: int = DIGEST_CHUNK, workers: int | None = None) -> tuple[Checksums, int]:
    """The four checksums of everything `reader` yields, and the byte count, in one read of the stream.

    `sink`, if given, receives every chunk in order (in a lane of its own, so it overlaps the digests).
    `size` is what the stream was announced to hold: it fixes the S3 part size (as the ETag rule does);
    the digests are of the bytes actually read, whatever their number."""
    single = size <= S3_SINGLE_PART_LIMIT
    part_size = 1 << 62 if single else s3_part_size(size)  # one MD5 over everything when single
    window = (max(size, chunk_size) if single else part_size) + 4 * chunk_size
    sha256, sha1, crc = hashlib.sha256(), hashlib.sha1(), google_crc32c.Checksum()
    parts: list[Any] = []
    pool = _Lanes(workers or _cores(), window)
    # google-crc32c takes only bytes (bytes(b) of a bytes object is that object; of a mapping, a copy)
    crc_lane = _Lane(lambda data: crc.update(bytes(data)))
    fixed = [pool.add(_Lane(sha256.update)), pool.add(_Lane(sha1.update)), pool.add(crc_lane)]
    if sink is not None:
        fixed.append(pool.add(_Lane(sink)))
    total = sequence = 0
    part_lane: _Lane | None = None
    try:
        while True:
            offset = total % part_size
            chunk = reader.read(min(chunk_size, part_size - offset))
            if not chunk:
                break
            if part_lane is None or offset == 0:
                if part_lane is not None:
                    pool.retire(part_lane)
                parts.append(hashlib.md5())
                part_lane = pool.add(_Lane(parts[-1].update))
            pool.submit(chunk, sequence, [*fixed, part_lane])
            total, sequence = total + len(chunk), sequence + 1
    except BaseException as exc:
        pool.abandon(exc)
        raise
    for lane in [*fixed, *([part_lane] if part_lane else [])]:
        pool.retire(lane)
    pool.finish()
    return Checksums(sha256.hexdigest(), sha1.hexdigest(), _etag(parts, single), crc.digest().hex()), total


def _etag(parts: list[Any], single: bool) -> str:
    if not parts:
        return hashlib.md5().hexdigest()
    if single or len(parts) == 1:
        return parts[0].hexdigest()
    return f"{hashlib.md5(b''.join(part.digest() for part in parts)).hexdigest()}-{len(parts)}"
