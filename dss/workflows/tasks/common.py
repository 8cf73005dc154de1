"""What the task modules share: reading locations from payloads, errors named by meaning, streaming copies."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dss.checksums import read_chunks
from dss.storage.blobstore import BlobNotFound, BlobStore
from dss.workflows.registry import TaskContext

__all__ = ["InvalidTaskInput", "SourceChanged", "Location", "location", "store", "stream_copy", "same_size",
           "MIN_TIME_FOR_A_STEP"]

# A resumable task starts another unit of work (a part, a file) only with this much of its budget left;
# it always does at least one, so that every invocation makes progress.
MIN_TIME_FOR_A_STEP = 60.0


class InvalidTaskInput(Exception):
    """The payload lacks a field or has one of the wrong shape: retrying cannot help."""


class SourceChanged(Exception):
    """The source returned a different number of bytes than its size said."""


@dataclass(frozen=True)
class Location:
    url: str  # a store URL: file:///dir, s3://bucket, gs://bucket
    key: str


def location(payload: dict[str, Any], field: str) -> Location:
    value = payload.get(field)
    if not (isinstance(value, dict) and isinstance(value.get("url"), str) and isinstance(value.get("key"), str)):
        raise InvalidTaskInput(f"{field} must be an object with string fields url and key, got {value!r}")
    return Location(value["url"], value["key"])


def store(context: TaskContext, url: str) -> BlobStore:
    if context.stores is None:
        raise InvalidTaskInput("this task needs blob stores, and the task context has none")
    return context.stores.for_url(url)


def same_size(target: BlobStore, key: str, size: int) -> bool:
    """Is `key` already there with `size` bytes (a complete earlier copy, since writes are atomic)?"""
    try:
        return target.head(key).size == size
    except BlobNotFound:
        return False


def stream_copy(source: BlobStore, source_key: str, target: BlobStore, target_key: str, *, start: int = 0,
                end: int | None = None, size: int | None = None, content_type: str = "application/octet-stream",
                metadata: dict[str, str] | None = None) -> int:
    """Copy bytes [start, end) of `source_key` to `target_key` through the stores' streams; returns the
    count. Nothing is visible at the target until the whole range has arrived; a short read raises."""
    expected = size if size is not None else (None if end is None else end - start)
    with source.open(source_key, start, end) as stream, target.writer(
            target_key, size=expected, content_type=content_type, metadata=metadata) as writer:
        copied = 0
        for chunk in read_chunks(stream):
            writer.write(chunk)
            copied += len(chunk)
        if expected is not None and copied != expected:
            raise SourceChanged(f"{source_key}[{start}:{end}] gave {copied} bytes, expected {expected}")
        writer.commit()
    return copied
