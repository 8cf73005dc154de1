"""The DSS task functions, run through their definitions on the embedded executor over local stores:
parallel part copy (verified, resumable, idempotent), copy + metadata, failure recording, and file and
bundle checkout."""
from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from dss.checksums import checksum_stream
from dss.storage.blobstore import BlobStoreFactory
from dss.tables import Tables
from dss.workflows import Executor, TaskContext, default_registry
from dss.workflows.tasks.copy import PARTS_PREFIX, part_key
from tests.workflows_support import fast_retries

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def stores() -> BlobStoreFactory:
    return BlobStoreFactory()


@pytest.fixture
def context(tmp_path: Path, stores: BlobStoreFactory):
    tables = Tables(f"sqlite://{tmp_path / 'tables.sqlite3'}")
    yield TaskContext(stores=stores, tables=tables)
    tables.close()


@pytest.fixture
def executor(tmp_path: Path, context: TaskContext):
    with Executor(tmp_path / "journal.sqlite3", context=context, max_workers=2) as running:
        yield running


def _blob(store: Any, size: int, seed: int = 0) -> tuple[str, bytes]:
    data = random.Random(seed).randbytes(size)
    key = str(checksum_stream(io.BytesIO(data), len(data)).blob_key)
    store.put(key, data, content_type="application/x-test", metadata={"origin": "test"})
    return key, data


def _copy_input(tmp_path: Path, stores: BlobStoreFactory, size: int = 1_000_003, **extra: Any) -> tuple[dict, bytes]:
    source = stores.for_url(f"file://{tmp_path}/aws")
    key, data = _blob(source, size)
    return {"source": {"url": source.url, "key": key}, "destination": {"url": f"file://{tmp_path}/gcp", "key": key},
            "part_size": 100_000, "slices": 3, **extra}, data


def test_blob_copy_in_parts(executor: Executor, tmp_path: Path, stores: BlobStoreFactory) -> None:
    data_in, data = _copy_input(tmp_path, stores)
    record = executor.run("blob-copy", data_in, timeout=120)
    assert record.status == "SUCCEEDED", record
    target = stores.for_url(data_in["destination"]["url"])
    key = data_in["destination"]["key"]
    assert target.get(key) == data
    info = target.head(key)
    assert (info.content_type, dict(info.metadata)) == ("application/x-test", {"origin": "test"})
    assert list(target.list(PARTS_PREFIX)) == []  # the staged parts are gone
    map_events = [e for e in executor.history(record.id) if e.type == "MapStarted"]
    assert map_events[0].detail["length"] == 3  # 11 parts in 3 slices
    assert record.output == {"source": data_in["source"], "destination": data_in["destination"], "size": len(data)}


def test_empty_blob_copy(executor: Executor, tmp_path: Path, stores: BlobStoreFactory) -> None:
    data_in, data = _copy_input(tmp_path, stores, size=0)
    assert executor.run("blob-copy", data_in, timeout=120).status == "SUCCEEDED"
    assert stores.for_url(data_in["destination"]["url"]).get(data_in["destination"]["key"]) == b""


def test_copy_tasks_loop_when_out_of_time(tmp_path: Path, stores: BlobStoreFactory) -> None:
    """With no time budget, every copy-parts invocation copies one part and returns finished: false."""
    data_in, data = _copy_input(tmp_path, stores, size=450_000)
    with Executor(tmp_path / "journal.sqlite3", context=TaskContext(stores=stores), task_time_budget=0.0) as executor:
        record = executor.run("blob-copy", data_in, timeout=120)
        calls = [e for e in executor.history(record.id)
                 if e.type == "TaskScheduled" and e.detail["task"] == "copy-parts"]
    assert record.status == "SUCCEEDED"
    assert len(calls) == 5  # one per part, across the 3 slices' loops
    assert stores.for_url(data_in["destination"]["url"]).get(data_in["destination"]["key"]) == data


def test_copy_reuses_staged_parts_and_skips_a_present_destination(executor: Executor, tmp_path: Path,
                                                                   stores: BlobStoreFactory,
                                                                   context: TaskContext) -> None:
    data_in, data = _copy_input(tmp_path, stores, size=250_000)
    setup = default_registry().invoke("copy-setup", data_in, context)
    target = stores.for_url(data_in["destination"]["url"])
    target.put(part_key(setup["upload"]["id"], 1), data[:100_000])  # left by an interrupted run
    assert executor.run("blob-copy", data_in, timeout=120).status == "SUCCEEDED"
    assert target.get(data_in["destination"]["key"]) == data
    again = executor.run("blob-copy", data_in, timeout=120)
    steps = [e.state for e in executor.history(again.id) if e.type == "StateEntered"]
    assert again.status == "SUCCEEDED" and "CopyParts" not in steps


def test_checksum_mismatch_fails_the_copy_and_records_it(executor: Executor, tmp_path: Path,
                                                         stores: BlobStoreFactory, context: TaskContext) -> None:
    source = stores.for_url(f"file://{tmp_path}/aws")
    key, _ = _blob(source, 300_000)
    wrong = "blobs/" + "0" * 64 + key[len("blobs/") + 64:]  # a key claiming another sha256
    source.put(wrong, source.get(key))
    record_at = {"table": "async-state", "hash_key": "files/abc", "sort_key": "2024"}
    data_in = {"source": {"url": source.url, "key": wrong}, "destination": {"url": f"file://{tmp_path}/gcp",
               "key": wrong}, "part_size": 100_000, "record": record_at}
    record = executor.run(executor.load(fast_retries(executor.workflow("blob-copy").definition), "blob-copy"),
                          data_in, timeout=120)
    assert (record.status, record.error) == ("FAILED", "ChecksumMismatch")
    assert "sha256" in json.loads(record.cause or "")["errorMessage"]
    target = stores.for_url(data_in["destination"]["url"])
    assert list(target.list("")) == []  # nothing visible, parts cleaned up
    stored = context.tables("async-state").get("files/abc", "2024")
    assert stored["status"] == "FAILED" and stored["error"] == "ChecksumMismatch"


def test_missing_source_fails_without_retrying(executor: Executor, tmp_path: Path) -> None:
    data_in = {"source": {"url": f"file://{tmp_path}/aws", "key": "blobs/absent"},
               "destination": {"url": f"file://{tmp_path}/gcp", "key": "blobs/absent"}}
    record = executor.run("blob-copy", data_in, timeout=120)
    events = [e.type for e in executor.history(record.id)]
    assert (record.status, record.error) == ("FAILED", "BlobNotFound")
    assert "RetryScheduled" not in events


def test_copy_then_write_metadata(executor: Executor, tmp_path: Path, stores: BlobStoreFactory) -> None:
    data_in, data = _copy_input(tmp_path, stores, size=200_000)
    document = {"format": "0.0.4", "size": len(data)}
    metadata = {"url": data_in["destination"]["url"], "key": "files/0f0f.2024-01-01T000000.000000Z",
                "document": document}
    record = executor.run("blob-copy-write-metadata", {**data_in, "metadata": metadata}, timeout=120)
    assert record.status == "SUCCEEDED", record
    target = stores.for_url(metadata["url"])
    assert target.get_json(metadata["key"]) == document
    conflicting = {**metadata, "document": {**document, "size": 1}}
    clash = executor.run(executor.load(fast_retries(executor.workflow("blob-copy-write-metadata").definition), "wm"),
                         {**data_in, "metadata": conflicting}, timeout=120)
    assert (clash.status, clash.error) == ("FAILED", "MetadataConflict")
    assert target.get_json(metadata["key"]) == document


def test_file_checkout_copies_then_skips_while_fresh(executor: Executor, tmp_path: Path,
                                                     stores: BlobStoreFactory) -> None:
    data_in, data = _copy_input(tmp_path, stores, size=150_000)
    data_in["destination"]["url"] = f"file://{tmp_path}/checkout"
    assert executor.run("file-checkout", data_in, timeout=120).status == "SUCCEEDED"
    checkout = stores.for_url(data_in["destination"]["url"])
    assert checkout.get(data_in["destination"]["key"]) == data
    fresh = executor.run("file-checkout", data_in, timeout=120)
    assert "Setup" not in [e.state for e in executor.history(fresh.id) if e.type == "StateEntered"]
    stale = executor.run("file-checkout", {**data_in, "refresh_after": 0}, timeout=120)
    assert "Finalize" in [e.state for e in executor.history(stale.id) if e.type == "StateEntered"]
    assert checkout.get(data_in["destination"]["key"]) == data


def _bundle(tmp_path: Path, stores: BlobStoreFactory, count: int) -> tuple[dict, dict[str, bytes]]:
    replica = stores.for_url(f"file://{tmp_path}/aws")
    files, contents = [], {}
    for index in range(count):
        key, data = _blob(replica, 1000 + index, seed=index)
        sha256, sha1, etag, crc = key[len("blobs/"):].split(".")
        name = f"dir{index % 3}/file-{index}.json"
        files.append({"name": name, "uuid": f"{index:08x}-0000-4000-8000-000000000000",
                      "version": "2024-01-01T000000.000000Z", "content-type": "application/json",
                      "size": len(data), "indexed": True, "sha256": sha256, "sha1": sha1, "s3-etag": etag,
                      "crc32c": crc})
        contents[name] = data
    key = "bundles/11111111-2222-4333-8444-555555555555.2024-01-01T000000.000000Z"
    replica.put_json(key, {"format": "0.0.1", "files": files})
    checkout = f"file://{tmp_path}/checkout"
    return {"bundle": {"url": replica.url, "key": key}, "destination": {"url": checkout, "prefix": key},
            "status": {"url": checkout, "key": "checkout/status/job.json"}, "batch_size": 7}, contents


def test_bundle_checkout(executor: Executor, tmp_path: Path, stores: BlobStoreFactory) -> None:
    data_in, contents = _bundle(tmp_path, stores, 25)
    record = executor.run("bundle-checkout", data_in, timeout=120)
    assert record.status == "SUCCEEDED", record
    checkout = stores.for_url(data_in["destination"]["url"])
    prefix = data_in["destination"]["prefix"]
    for name, data in contents.items():
        assert checkout.get(f"{prefix}/{name}") == data
    location = f"{data_in['destination']['url']}/{prefix}"
    assert record.output == {"location": location, "file_count": 25}
    assert checkout.get_json("checkout/status/job.json") == {"status": "SUCCEEDED", "location": location}


def test_bundle_checkout_to_an_unwritable_destination_fails_with_a_cause(executor: Executor, tmp_path: Path,
                                                                         stores: BlobStoreFactory) -> None:
    if os.geteuid() == 0:
        blocked = tmp_path / "blocked"
        blocked.write_text("a file where the checkout directory should be")  # root ignores permissions
    else:
        blocked = tmp_path / "blocked"
        blocked.mkdir(mode=0o500)
    data_in, _ = _bundle(tmp_path, stores, 3)
    data_in["destination"]["url"] = f"file://{blocked}/inside"
    data_in["status"]["url"] = f"file://{tmp_path}/status"
    record = executor.run("bundle-checkout", data_in, timeout=120)
    assert (record.status, record.error) == ("FAILED", "CheckoutInvalid")
    assert "not writable" in (record.cause or "")
    status = stores.for_url(data_in["status"]["url"]).get_json("checkout/status/job.json")
    assert status["status"] == "FAILED" and "not writable" in status["cause"]


def test_bundle_checkout_of_a_missing_bundle(executor: Executor, tmp_path: Path, stores: BlobStoreFactory) -> None:
    data_in, _ = _bundle(tmp_path, stores, 1)
    data_in["bundle"]["key"] = "bundles/absent.2024-01-01T000000.000000Z"
    record = executor.run("bundle-checkout", data_in, timeout=120)
    assert (record.status, record.error) == ("FAILED", "CheckoutInvalid")
    assert "does not exist" in (record.cause or "")


# --- native copies between stores of one kind (S3 on moto, GCS on the emulator) -----------------------
@pytest.fixture(params=["s3", "gs"])
def cloud_pair(request: pytest.FixtureRequest) -> tuple[str, str]:
    """Two fresh buckets of one cloud, as store URLs."""
    scheme = request.param
    create = request.getfixturevalue("new_s3_bucket" if scheme == "s3" else "new_gcs_bucket")
    return f"{scheme}://{create()}", f"{scheme}://{create()}"


@pytest.mark.parametrize("size", [70 * 1024 * 1024, 1000], ids=["two-parts", "small"])
def test_copy_within_one_cloud_is_native_and_verified(cloud_pair: tuple[str, str], size: int,
                                                      tmp_path: Path) -> None:
    from tests.infra.storage_servers import STORE_OPTIONS

    stores = BlobStoreFactory(**STORE_OPTIONS)
    context = TaskContext(stores=stores, tables=Tables(f"sqlite://{tmp_path / 'tables.sqlite3'}"))
    data = random.Random(size).randbytes(size)
    sums = checksum_stream(io.BytesIO(data), size)
    source, target = stores.for_url(cloud_pair[0]), stores.for_url(cloud_pair[1])
    source.put("staging/upload.bin", data)  # a staged object, whose name vouches for nothing
    data_in = {"source": {"url": source.url, "key": "staging/upload.bin"},
               "destination": {"url": target.url, "key": str(sums.blob_key)}}
    planned = default_registry().invoke("copy-setup", data_in, context)
    assert planned["upload"]["session"]["kind"] in ("s3-multipart", "s3-copy-object", "gs-rewrite")
    wrong = {**data_in, "expected": {**sums.as_dict(), "sha256": "0" * 64}}
    with Executor(tmp_path / "journal.sqlite3", context=context, max_workers=2) as executor:
        failed = executor.run(executor.load(fast_retries(executor.workflow("blob-copy").definition), "bc"),
                              wrong, timeout=120)
        assert (failed.status, failed.error) == ("FAILED", "ChecksumMismatch")  # found by reading the source
        assert not target.exists(str(sums.blob_key))
        assert executor.run("blob-copy", data_in, timeout=120).status == "SUCCEEDED"
    assert target.get(str(sums.blob_key)) == data
    info = target.head(str(sums.blob_key))
    assert (info.etag if target.scheme == "s3" else info.crc32c) == (sums.s3_etag if target.scheme == "s3"
                                                                      else sums.crc32c)
    assert list(target.list("workflows/")) == []
    context.tables.close()
