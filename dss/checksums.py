"""The four DSS checksums of a byte stream, computed in one pass.

Each digest (and any extra sink, such as the destination writer) runs in its own thread fed by a
bounded queue, so a stream is read once and the digests proceed in parallel: hashlib and
google-crc32c release the GIL on large buffers.
"""
from __future__ import annotations

import hashlib
import queue
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import google_crc32c

from dss.identifiers import BlobKey

__all__ = ["Checksums", "ChecksumSet", "s3_part_size", "checksum_stream", "fan_out", "CHUNK_SIZE",
           "CHECKSUM_PATTERNS"]

MiB = 1024 * 1024
CHUNK_SIZE = 8 * MiB
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
    digests = ChecksumSet(size)
    fan_out(read_chunks(reader), digests.sinks())
    return digests.result()
