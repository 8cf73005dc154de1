"""Blob copy in parallel parts, over the BlobStore port: the tasks of the copy-shaped definitions.

    copy-setup     head the source; `done` if the destination already holds the object (and `overwrite`
                   is not set); else start the copy in the destination store (`BlobStore.copy_start`),
                   which chooses the method and the part size, and split the parts into slices (one Map
                   item each)
    copy-parts     copy a slice's parts (`copy_part`); saves its place, and the store's resume marker
                   of a part in progress (a GCS rewrite token), and returns `finished: false` when its
                   time budget runs low (the machine loops it)
    copy-finalize  publish the destination (`copy_finish`) once the checksums check out (see `_verifier`):
                   a mismatch raises ChecksumMismatch and nothing becomes visible
    copy-abort     discard what a failed copy left (`copy_abort`)

The store picks the method: S3 → S3 by UploadPartCopy in the DSS part size (or one CopyObject), GCS → GCS
by rewrite, anything else by ranged reads staged as part objects and concatenated (`dss.storage.blobstore`).
Every step is idempotent: the upload id is derived from the copy's own description (so a re-run, or a new
execution of the same copy, finds the parts the last one made), and finalize succeeds at once if the
destination is already in place.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from dss.checksums import CHECKSUM_PATTERNS, digest_stream, s3_part_size
from dss.identifiers import BlobKey
from dss.storage.blobstore import STAGED_PARTS_PREFIX, BlobAlreadyExists, BlobNotFound, staged_part_key
from dss.workflows.registry import TaskContext, task
from dss.workflows.tasks.common import (
    MIN_TIME_FOR_A_STEP,
    InvalidTaskInput,
    Location,
    location,
    store,
)

__all__ = ["ChecksumMismatch", "PartMissing", "PARTS_PREFIX", "DEFAULT_SLICES", "part_key"]

PARTS_PREFIX = STAGED_PARTS_PREFIX
part_key = staged_part_key
DEFAULT_SLICES = 8  # Map items per copy: how many parts are in flight at most


class ChecksumMismatch(Exception):
    """The copied bytes do not have the checksums the copy was told to expect."""


class PartMissing(Exception):
    """A staged part disappeared between copy-parts and copy-finalize."""


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
    source_store, target = store(context, source.url), store(context, destination.url)
    info = source_store.head(source.key)
    part_size = payload.get("part_size") or s3_part_size(info.size)
    slices = payload.get("slices") or DEFAULT_SLICES
    if not (isinstance(part_size, int) and part_size > 0 and isinstance(slices, int) and slices > 0):
        raise InvalidTaskInput("part_size and slices must be positive integers")
    overwrite = bool(payload.get("overwrite"))
    upload_id = _upload_id(source, destination, info.size, part_size, [info.etag, info.crc32c])
    upload = {
        "id": upload_id, "size": info.size, "content_type": info.content_type, "metadata": dict(info.metadata),
        "expected": _expected(payload, destination), "overwrite": overwrite,
        "source": {"url": source.url, "key": source.key},
    }
    done = not overwrite and target.exists(destination.key)
    if done:
        return {"done": True, "upload": {**upload, "part_size": part_size, "part_count": 1}, "slices": []}
    session = target.copy_start(source_store, source.key, destination.key, upload_id=upload_id, size=info.size,
                                part_size=part_size, source_info=info)
    part_count = max(1, -(-info.size // session["part_size"]))
    upload.update(session=session, part_size=session["part_size"], part_count=part_count)
    return {"done": False, "upload": upload, "slices": _slices(part_count, slices)}


def _part_range(upload: dict[str, Any], number: int) -> tuple[int, int]:
    start = (number - 1) * upload["part_size"]
    return start, min(start + upload["part_size"], upload["size"])


@task("copy-parts")
def copy_parts(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Payload: source, destination, upload (from copy-setup), slice {first, last}, and `next` (with the
    store's `resume` marker of a part in progress) once it has run before. Returns the payload with
    `next`, `resume` and `finished` updated."""
    source, destination = location(payload, "source"), location(payload, "destination")
    upload, run = payload["upload"], payload["slice"]
    source_store, target = store(context, source.url), store(context, destination.url)
    number, resume, steps = payload.get("next", run["first"]), payload.get("resume"), 0
    while number <= run["last"]:
        if steps and context.time_left() < MIN_TIME_FOR_A_STEP:
            return {**payload, "next": number, "resume": resume, "finished": False}
        start, end = _part_range(upload, number)
        resume = target.copy_part(upload["session"], source_store, source.key, number, start, end, resume)
        if resume is None:
            number += 1
        steps += 1
    return {**payload, "next": number, "resume": None, "finished": True}


def _verifier(context: TaskContext, upload: dict[str, Any], key: str) -> Callable[[Mapping[str, Any]], None]:
    """Checks what the store established about the copy against what it should be. Checksums the store
    could not establish (a native copy's service computes only its own) are computed by reading the
    source, unless its key is a blob key spelling exactly the expected checksums: the name of a DSS blob
    is its checksums, verified when it was written."""
    wanted = {"size": upload["size"], **upload["expected"]}

    def verify(found: Mapping[str, Any]) -> None:
        known = dict(found)
        missing = [name for name in wanted if name not in known]
        spelled = BlobKey.parse(upload["source"]["key"])
        trusted = spelled is not None and all(
            getattr(spelled, name) == value for name, value in upload["expected"].items())
        if missing and not trusted:
            source_store = store(context, upload["source"]["url"])
            with source_store.open(upload["source"]["key"]) as stream:
                sums, size = digest_stream(stream, upload["size"])
            known = {**sums.as_dict(), "size": size, **known}
        wrong = [f"{name} {known[name]} (expected {value})" for name, value in wanted.items()
                 if name in known and known[name] != value]
        if wrong:
            raise ChecksumMismatch(f"{key}: the copied bytes have {', '.join(wrong)}")
    return verify


@task("copy-finalize")
def finalize(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Payload: destination and upload (from copy-setup). Returns {key, size}."""
    destination = location(payload, "destination")
    upload = payload["upload"]
    target = store(context, destination.url)
    if upload["overwrite"] or not target.exists(destination.key):
        try:
            target.copy_finish(upload["session"], destination.key, size=upload["size"],
                               part_count=upload["part_count"], content_type=upload["content_type"],
                               metadata=upload["metadata"], if_absent=not upload["overwrite"],
                               verify=_verifier(context, upload, destination.key))
        except BlobAlreadyExists:
            target.copy_abort(upload["session"], destination.key)  # a concurrent copy of the same content won
        except BlobNotFound as exc:
            raise PartMissing(f"a part of upload {upload['id']} is missing: {exc}") from exc
    elif "session" in upload:
        target.copy_abort(upload["session"], destination.key)
    return {"key": destination.key, "size": upload["size"]}


@task("copy-abort")
def abort(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Payload: the copy machine's state (`copy.upload` present once copy-setup ran)."""
    upload = (payload.get("copy") or {}).get("upload")
    if upload and "session" in upload:
        destination = location(payload, "destination")
        store(context, destination.url).copy_abort(upload["session"], destination.key)
    return {"aborted": bool(upload)}
