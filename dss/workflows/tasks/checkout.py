"""Checkout: copies of blobs in a checkout store, for reads (file checkout) and whole bundles.

    checkout-check-file    is the checked-out copy of a file there, complete and younger than
                           `refresh_after` seconds? (then the file-checkout machine stops early)
    checkout-validate      can we write to the destination (a probe object written and deleted), and
                           does the bundle exist? `{valid, reason}`; a refusal is an answer, not an error
    checkout-plan          the manifest's files split into batches of `batch_size` (one Map item each)
    checkout-copy-files    copy one batch, file by file, to `<prefix>/<file name>`; files already there
                           with the right size (and younger than the destination's `fresh_for` seconds,
                           if it says) are skipped; saves its place and returns `finished: false` when
                           its time budget runs low
    checkout-write-status  write the job's status: a document in a store (`status: {url, key}`), or
                           fields of an item of the tables port (`status: {table, hash_key, sort_key}`)

Blob keys come from the manifest's checksums (`dss.identifiers.BlobKey`); manifests are immutable, so a
process keeps the last few it read.
"""
from __future__ import annotations

import datetime
import secrets
import threading
from collections import OrderedDict
from typing import Any

from dss.identifiers import BlobKey
from dss.storage.blobstore import BlobNotFound, BlobStoreError, BlobStoreUnavailable
from dss.workflows.registry import TaskContext, task
from dss.workflows.tasks.common import (
    MIN_TIME_FOR_A_STEP,
    InvalidTaskInput,
    location,
    same_size,
    store,
    stream_copy,
)

__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_REFRESH_AFTER"]

DEFAULT_BATCH_SIZE = 100
DEFAULT_REFRESH_AFTER = 7 * 86400  # DSS_BLOB_PUBLIC_TTL_DAYS: older checked-out copies are copied again
_MANIFESTS: OrderedDict[tuple[str, str], list[dict[str, Any]]] = OrderedDict()
_MANIFESTS_LOCK = threading.Lock()


def _files(context: TaskContext, bundle_url: str, bundle_key: str) -> list[dict[str, Any]]:
    cache_key = (bundle_url, bundle_key)
    with _MANIFESTS_LOCK:
        if cache_key in _MANIFESTS:
            _MANIFESTS.move_to_end(cache_key)
            return _MANIFESTS[cache_key]
    files = store(context, bundle_url).get_json(bundle_key)["files"]
    with _MANIFESTS_LOCK:
        _MANIFESTS[cache_key] = files
        while len(_MANIFESTS) > 16:
            _MANIFESTS.popitem(last=False)
    return files


def _destination(payload: dict[str, Any]) -> tuple[str, str]:
    value = payload.get("destination")
    if not (isinstance(value, dict) and isinstance(value.get("url"), str) and isinstance(value.get("prefix"), str)):
        raise InvalidTaskInput(f"destination must be an object with string fields url and prefix, got {value!r}")
    return value["url"], value["prefix"].strip("/")


@task("checkout-check-file")
def check_file(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    source, destination = location(payload, "source"), location(payload, "destination")
    try:
        copy = store(context, destination.url).head(destination.key)
    except BlobNotFound:
        return {"fresh": False, "present": False}
    size = store(context, source.url).head(source.key).size
    refresh_after = payload.get("refresh_after", DEFAULT_REFRESH_AFTER)
    age = (datetime.datetime.now(datetime.UTC) - copy.last_modified).total_seconds() if copy.last_modified else None
    return {"fresh": copy.size == size and age is not None and age < refresh_after, "present": True}


@task("checkout-validate")
def validate(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    bundle = location(payload, "bundle")
    url, _ = _destination(payload)
    probe = f"touch/{secrets.token_hex(1)}.txt"
    try:
        target = store(context, url)
        target.put(probe, b"")
        target.delete(probe)
    except BlobStoreUnavailable:
        raise  # transient: let the machine retry
    except (BlobStoreError, OSError) as exc:
        return {"valid": False, "reason": f"the destination {url} is not writable ({type(exc).__name__})"}
    if not store(context, bundle.url).exists(bundle.key):
        return {"valid": False, "reason": f"the bundle {bundle.key} does not exist"}
    return {"valid": True, "reason": None}


@task("checkout-plan")
def plan(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    bundle = location(payload, "bundle")
    url, prefix = _destination(payload)
    batch_size = payload.get("batch_size") or DEFAULT_BATCH_SIZE
    if not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidTaskInput("batch_size must be a positive integer")
    count = len(_files(context, bundle.url, bundle.key))
    batches = [{"first": first, "last": min(first + batch_size, count) - 1} for first in range(0, count, batch_size)]
    return {"file_count": count, "batches": batches, "location": f"{url.rstrip('/')}/{prefix}"}


@task("checkout-copy-files")
def copy_files(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Payload: bundle, destination, batch {first, last}, and `next` once it has run before."""
    bundle = location(payload, "bundle")
    url, prefix = _destination(payload)
    files, batch = _files(context, bundle.url, bundle.key), payload["batch"]
    source, target = store(context, bundle.url), store(context, url)
    index, copied = payload.get("next", batch["first"]), 0
    while index <= batch["last"]:
        if copied and context.time_left() < MIN_TIME_FOR_A_STEP:
            return {**payload, "next": index, "finished": False}
        entry = files[index]
        key = f"{prefix}/{entry['name']}"
        if not _current(target, key, entry["size"], payload["destination"].get("fresh_for")):
            blob = BlobKey(entry["sha256"], entry["sha1"], entry["s3-etag"], entry["crc32c"])
            stream_copy(source, str(blob), target, key, size=entry["size"], content_type=entry["content-type"])
        index, copied = index + 1, copied + 1
    return {**payload, "next": index, "finished": True}


def _current(target: Any, key: str, size: int, fresh_for: Any) -> bool:
    """Is an earlier copy of `key` there, complete and (if `fresh_for` seconds are given) young enough?"""
    if not isinstance(fresh_for, (int, float)):
        return same_size(target, key, size)
    try:
        info = target.head(key)
    except BlobNotFound:
        return False
    age = (datetime.datetime.now(datetime.UTC) - info.last_modified).total_seconds() if info.last_modified else 0
    return info.size == size and age < fresh_for


@task("checkout-write-status")
def write_status(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Payload: `status` and `body`. `status: {url, key}`: `body` is stored there as a JSON document
    (replacing the last one); `status: {table, hash_key, sort_key}`: `body`'s fields are set on that
    item, keeping its other fields (what the job was asked to do)."""
    if not isinstance(payload.get("body"), dict):
        raise InvalidTaskInput("body must be an object")
    spec = payload.get("status")
    if isinstance(spec, dict) and "table" in spec:
        if context.tables is None:
            raise InvalidTaskInput("a status in a table needs tables, and the task context has none")
        table = context.tables(spec["table"])
        item = table.get(spec["hash_key"], spec["sort_key"]) or {}
        table.put(spec["hash_key"], spec["sort_key"], {**item, **payload["body"]})
        return {"key": spec["sort_key"]}
    status = location(payload, "status")
    store(context, status.url).put_json(status.key, payload["body"])
    return {"key": status.key}
