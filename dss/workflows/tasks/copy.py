"""Blob copy in parallel parts, over the BlobStore port: the tasks of the copy-shaped definitions.

    copy-setup     head the source; choose the part size and split the parts into slices (one Map item
                   each); `done` if the destination already holds the object (and `overwrite` is not set)
    copy-parts     copy a slice's parts, each a ranged read of the source written as a staged part object
                   `workflows/parts/<upload id>/<part number>` in the destination store; saves its place
                   and returns `finished: false` when its time budget runs low (the machine loops it)
    copy-finalize  stream the parts, in order, into the destination key (conditional create unless
                   `overwrite`), computing sha256/sha1/S3 ETag/crc32c on the way; a mismatch with the
                   expected checksums raises ChecksumMismatch and nothing becomes visible; then the parts
                   are deleted
    copy-abort     delete the staged parts of a failed copy

Every step is idempotent: parts are published atomically and skipped when already there, the upload id
is derived from the copy's own description (so a re-run, or a new execution of the same copy, finds the
parts the last one made), and finalize succeeds at once if the destination is already in place.

The part objects and the final concatenation work on every store the port supports, at the price of
writing the bytes twice. Backends that can assemble parts natively (S3 UploadPartCopy +
CompleteMultipartUpload, GCS compose/rewrite) can replace `copy-parts`/`copy-finalize` behind the same
payloads without changing the definitions.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

from dss.checksums import CHECKSUM_PATTERNS, ChecksumSet, fan_out, read_chunks, s3_part_size
from dss.identifiers import BlobKey
from dss.storage.blobstore import BlobAlreadyExists, BlobNotFound, BlobStore
from dss.workflows.registry import TaskContext, task
from dss.workflows.tasks.common import (
    MIN_TIME_FOR_A_STEP,
    InvalidTaskInput,
    Location,
    location,
    same_size,
    store,
    stream_copy,
)

__all__ = ["ChecksumMismatch", "PartMissing", "PARTS_PREFIX", "DEFAULT_SLICES", "part_key"]

PARTS_PREFIX = "workflows/parts/"
DEFAULT_SLICES = 8  # Map items per copy: how many parts are in flight at most


class ChecksumMismatch(Exception):
    """The copied bytes do not have the checksums the copy was told to expect."""


class PartMissing(Exception):
    """A staged part disappeared between copy-parts and copy-finalize."""


def part_key(upload_id: str, number: int) -> str:
    return f"{PARTS_PREFIX}{upload_id}/{number:05d}"


def _upload_id(source: Location, destination: Location, size: int, part_size: int, version: Any) -> str:
    description = json.dumps([source.url, source.key, destination.url, destination.key, size, part_size, version])
    return hashlib.sha256(description.encode()).hexdigest()[:32]


def _slices(part_count: int, slices: int) -> list[dict[str, int]]:
    """Split parts 1..part_count into at most `slices` contiguous runs."""
    count = max(1, min(slices, part_count))
    per, extra = divmod(part_count, count)
    runs, first = [], 1
    for index in range(count):
        last = first + per + (1 if index < extra else 0) - 1
        runs.append({"first": first, "last": last})
        first = last + 1
    return runs


def _expected(payload: dict[str, Any], destination: Location) -> dict[str, str]:
    expected = payload.get("expected")
    if expected is None:
        blob_key = BlobKey.parse(destination.key)
        return {} if blob_key is None else {"sha256": blob_key.sha256, "sha1": blob_key.sha1,
                                            "s3_etag": blob_key.s3_etag, "crc32c": blob_key.crc32c}
    if not isinstance(expected, dict) or any(name not in CHECKSUM_PATTERNS or not isinstance(value, str)
                                             for name, value in expected.items()):
        raise InvalidTaskInput(f"expected must map checksum names {sorted(CHECKSUM_PATTERNS)} to strings")
    return dict(expected)


@task("copy-setup")
def setup(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    source, destination = location(payload, "source"), location(payload, "destination")
    info = store(context, source.url).head(source.key)
    part_size = payload.get("part_size") or s3_part_size(info.size)
    slices = payload.get("slices") or DEFAULT_SLICES
    if not (isinstance(part_size, int) and part_size > 0 and isinstance(slices, int) and slices > 0):
        raise InvalidTaskInput("part_size and slices must be positive integers")
    overwrite = bool(payload.get("overwrite"))
    part_count = max(1, -(-info.size // part_size))
    upload = {
        "id": _upload_id(source, destination, info.size, part_size, [info.etag, info.crc32c]),
        "size": info.size, "part_size": part_size, "part_count": part_count,
        "content_type": info.content_type, "metadata": dict(info.metadata),
        "expected": _expected(payload, destination), "overwrite": overwrite,
    }
    done = not overwrite and store(context, destination.url).exists(destination.key)
    return {"done": done, "upload": upload, "slices": [] if done else _slices(part_count, slices)}


def _part_range(upload: dict[str, Any], number: int) -> tuple[int, int]:
    start = (number - 1) * upload["part_size"]
    return start, min(start + upload["part_size"], upload["size"])


@task("copy-parts")
def copy_parts(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Payload: source, destination, upload (from copy-setup), slice {first, last}, and `next` once it
    has run before. Returns the payload with `next` and `finished` updated."""
    source, destination = location(payload, "source"), location(payload, "destination")
    upload, run = payload["upload"], payload["slice"]
    source_store, target = store(context, source.url), store(context, destination.url)
    number, copied = payload.get("next", run["first"]), 0
    while number <= run["last"]:
        if copied and context.time_left() < MIN_TIME_FOR_A_STEP:
            return {**payload, "next": number, "finished": False}
        start, end = _part_range(upload, number)
        key = part_key(upload["id"], number)
        if not same_size(target, key, end - start):
            stream_copy(source_store, source.key, target, key, start=start, end=end)
        number, copied = number + 1, copied + 1
    return {**payload, "next": number, "finished": True}


def _staged_chunks(target: BlobStore, upload: dict[str, Any]) -> Iterator[bytes]:
    for number in range(1, upload["part_count"] + 1):
        try:
            stream = target.open(part_key(upload["id"], number))
        except BlobNotFound:
            raise PartMissing(f"part {number} of upload {upload['id']} is missing") from None
        with stream:
            yield from read_chunks(stream)


def _delete_parts(target: BlobStore, upload_id: str) -> None:
    for key in list(target.list(f"{PARTS_PREFIX}{upload_id}/")):
        target.delete(key)


@task("copy-finalize")
def finalize(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Payload: destination and upload (from copy-setup). Returns {key, size}."""
    destination = location(payload, "destination")
    upload = payload["upload"]
    target = store(context, destination.url)
    if upload["overwrite"] or not target.exists(destination.key):
        digests = ChecksumSet(upload["size"])
        with target.writer(destination.key, size=upload["size"], content_type=upload["content_type"],
                           metadata=upload["metadata"], if_absent=not upload["overwrite"]) as writer:
            size = fan_out(_staged_chunks(target, upload), [*digests.sinks(), writer.write])
            actual = {"size": size, **digests.result().as_dict()}
            wrong = [f"{name} {actual[name]} (expected {value})"
                     for name, value in {"size": upload["size"], **upload["expected"]}.items() if actual[name] != value]
            if wrong:
                raise ChecksumMismatch(f"{destination.key}: the copied bytes have {', '.join(wrong)}")
            try:
                writer.commit()
            except BlobAlreadyExists:
                pass  # a concurrent copy of the same content got there first
    _delete_parts(target, upload["id"])
    return {"key": destination.key, "size": upload["size"]}


@task("copy-abort")
def abort(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Payload: the copy machine's state (`copy.upload` present once copy-setup ran)."""
    upload = (payload.get("copy") or {}).get("upload")
    if upload:
        _delete_parts(store(context, location(payload, "destination").url), upload["id"])
    return {"aborted": bool(upload)}
