"""The parallel one-pass digests (`digest_stream`) against hashlib and google-crc32c, computed directly."""
from __future__ import annotations

import functools
import hashlib
import io
import os

import google_crc32c
import pytest

from dss.checksums import Checksums, checksum_stream, digest_stream

MiB = 1024 * 1024
PART = 64 * MiB


@functools.cache
def reference(data: bytes) -> Checksums:
    """The four checksums by the book: whole-object MD5 up to one part, else md5 of part MD5s + `-N`."""
    if len(data) <= PART:
        etag = hashlib.md5(data).hexdigest()
    else:
        parts = [hashlib.md5(data[at:at + PART]).digest() for at in range(0, len(data), PART)]
        etag = f"{hashlib.md5(b''.join(parts)).hexdigest()}-{len(parts)}"
    return Checksums(hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest(), etag,
                     google_crc32c.Checksum(data).digest().hex())


@pytest.fixture(scope="module")
def data() -> bytes:
    return os.urandom(3 * PART + 5)


class ShortReads(io.RawIOBase):
    """A stream that answers each read with at most `most` bytes, as sockets do."""

    def __init__(self, data: bytes, most: int) -> None:
        self.stream, self.most = io.BytesIO(data), most

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self.stream.read(min(self.most, size if size >= 0 else self.most))


@pytest.mark.parametrize("size", [0, 1, PART - 1, PART, PART + 1, 2 * PART - 1, 3 * PART + 5])
def test_parallel_digests_equal_hashlib(data: bytes, size: int) -> None:
    sink = bytearray()
    sums, count = digest_stream(io.BytesIO(data[:size]), size, sink.extend)
    assert (sums, count) == (reference(data[:size]), size)
    assert sink == data[:size]
    assert checksum_stream(io.BytesIO(data[:size]), size) == sums


@pytest.mark.parametrize(("workers", "chunk_size"), [(1, 3 * MiB + 7), (2, 1 * MiB), (5, 64 * MiB)])
def test_any_chunking_and_worker_count(data: bytes, workers: int, chunk_size: int) -> None:
    size = 2 * PART + 1
    sums, _ = digest_stream(io.BytesIO(data[:size]), size, chunk_size=chunk_size, workers=workers)
    assert sums == reference(data[:size])


def test_short_reads_still_split_parts_at_the_part_size(data: bytes) -> None:
    size = PART + 3 * MiB
    sums, count = digest_stream(ShortReads(data[:size], 5 * MiB + 1), size)  # type: ignore[arg-type]
    assert (sums, count) == (reference(data[:size]), size)


def test_announced_size_sets_the_part_rule_and_the_bytes_set_the_digests(data: bytes) -> None:
    # A single-part object that grew while it was read is still one MD5 over every byte read.
    sums, count = digest_stream(io.BytesIO(data[:PART + 10]), 100)
    assert count == PART + 10
    assert sums.s3_etag == hashlib.md5(data[:PART + 10]).hexdigest()


def test_a_failing_sink_fails_the_digest(data: bytes) -> None:
    def sink(chunk: bytes) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        digest_stream(io.BytesIO(data[:PART + 1]), PART + 1, sink, chunk_size=MiB)


def test_a_failing_reader_fails_the_digest(data: bytes) -> None:
    class Broken(io.BytesIO):
        def read(self, size: int | None = -1) -> bytes:
            if self.tell() >= 5 * MiB:
                raise ConnectionError("reset")
            return super().read(size)

    with pytest.raises(ConnectionError):
        digest_stream(Broken(data[:PART]), PART, chunk_size=MiB)
