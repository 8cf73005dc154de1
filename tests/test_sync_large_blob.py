"""Replication of large blobs through the `sync-large-blob` workflow: blobs above DSS_ASYNC_COPY_THRESHOLD
are copied to the other replica by a workflow execution named after the blob, and the file and bundle
metadata that need them follow only once they are there.

Real servers on loopback: the `aws` replica on local disk, the `gcp` replica in a bucket of the GCS
emulator, S3 staging on moto for the `hca` client. Time bounds are hang guards only.
"""
from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest
import requests

from dss.events import Event
from dss.events.handlers.sync import LARGE_BLOB_WORKFLOW, large_copy_name
from dss.identifiers import BlobKey, new_version
from dss.workflows.journal import RUNNING
from tests.infra.dss_server import DSSServer, start_server
from tests.infra.helpers import new_uuid, poll_until, put_file, stage_local
from tests.test_async_copy import upload_directory
from tests.test_hca_client import hca  # noqa: F401 - the fixture that drives the real client

MiB = 1024 * 1024
HANG_GUARD = 180.0  # seconds; a bound that only a hang exceeds


@pytest.fixture
def dss_env(dss_env: dict[str, str], gcs_bucket: str) -> dict[str, str]:
    """The servers' environment (also that of the `hca` fixture): the gcp replica on the GCS emulator and
    a threshold of a few MiB. PUT /bundles on gcp waits 1 s for its files (the fixture's setting), then
    answers 503 with Retry-After while a file it names is still being copied from aws: hca retries."""
    return {**dss_env, "DSS_GCP_REPLICA_URL": f"gs://{gcs_bucket}", "DSS_ASYNC_COPY_THRESHOLD": str(2 * MiB)}


@pytest.fixture
def server(dss_env: dict[str, str]):
    started = start_server(dss_env)
    yield started
    started.stop()
    started.runtime.close()


def sync_copies(server: DSSServer) -> list:
    return [r for r in server.runtime.workflows.journal.executions(limit=1000) if r.workflow == LARGE_BLOB_WORKFLOW]


def deferred_sync_events(server: DSSServer) -> set[str]:
    """Keys of the sync messages waiting for a copy (read from the queue's own file, as `dss-ops` would)."""
    path = server.config.queue_url[len("sqlite://"):]
    with sqlite3.connect(path, timeout=30) as db:
        rows = db.execute("SELECT body FROM messages WHERE handler = 'sync' AND last_error LIKE 'deferred:%'")
        return {json.loads(body)["key"] for (body,) in rows}


def gcs_bytes(bucket: str, key: str) -> bytes:
    from google.cloud import storage

    return storage.Client().bucket(bucket).blob(key).download_as_bytes()


def test_large_blob_replicates_through_the_workflow_and_its_metadata_follows(server, gcs_bucket):
    runtime = server.runtime
    gcp = runtime.replicas["gcp"]
    runtime.workflows.stop()  # no process runs executions for now: the copy waits, so the order shows
    data = os.urandom(3 * MiB + 4321)
    file_uuid, version = new_uuid(), new_version()
    assert put_file(server, stage_local(server.staging, data), file_uuid, version).status_code == 201
    file_key = f"files/{file_uuid}.{version}"
    metadata = runtime.replicas["aws"].get_json(file_key)
    blob_key = str(BlobKey(metadata["sha256"], metadata["sha1"], metadata["s3-etag"], metadata["crc32c"]))
    small = os.urandom(MiB)  # below the threshold: copied by the handler as before
    small_uuid, small_version = new_uuid(), new_version()
    assert put_file(server, stage_local(server.staging, small), small_uuid, small_version).status_code == 201

    # The blob's event started one execution; the blob's and the file's events wait in the queue.
    poll_until(lambda: {blob_key, file_key} <= deferred_sync_events(server), "the deferral of blob and file",
               timeout=HANG_GUARD)
    for _ in range(3):  # redelivered events (a crash, the reconcile pass, a duplicate notification)
        runtime.bus.publish(Event("aws", blob_key), handlers=["sync"])
        runtime.bus.publish(Event("aws", file_key), handlers=["sync"])
    poll_until(lambda: gcp.exists(f"files/{small_uuid}.{small_version}"), "the small file's replication",
               timeout=HANG_GUARD)
    poll_until(lambda: runtime.bus.pending() and not _sync_due(server), "the redelivered events' handling",
               timeout=HANG_GUARD)
    copies = sync_copies(server)
    assert [(r.id, r.status) for r in copies] == [(large_copy_name("gcp", blob_key), "RUNNING")]
    assert copies[0].input == {"source": {"url": runtime.replicas["aws"].url, "key": blob_key},
                               "destination": {"url": gcp.url, "key": blob_key}}
    assert not gcp.exists(blob_key) and not gcp.exists(file_key)  # never the metadata before its blob

    runtime.workflows.run()  # an owner appears (as after a restart) and runs what was recorded
    poll_until(lambda: gcp.exists(file_key), "the file's replication after its blob", timeout=HANG_GUARD)
    assert gcs_bytes(gcs_bucket, blob_key) == data
    assert gcp.get_json(file_key) == metadata
    # The file follows as soon as the blob is there (its last task); the execution's status after that.
    poll_until(lambda: all(r.status != RUNNING for r in sync_copies(server)), "the copy's end", timeout=HANG_GUARD)
    [copy] = sync_copies(server)
    assert copy.status == "SUCCEEDED" and copy.output["size"] == len(data)
    parts = [e for e in runtime.workflows.journal.events(copy.id) if e.type == "TaskSucceeded"
             and e.state == "CopySlice"]
    assert parts  # the bytes went through the workflow's parts, visible in its history

    runtime.bus.publish(Event("aws", blob_key), handlers=["sync"])  # once more, now that it is there
    runtime.bus.publish(Event("aws", file_key), handlers=["sync"])
    runtime.workers.drain(timeout=HANG_GUARD)
    assert [r.id for r in sync_copies(server)] == [copy.id]


def _sync_due(server: DSSServer) -> bool:
    """Whether a sync message is due or being handled now (not merely waiting for the copy)."""
    path = server.config.queue_url[len("sqlite://"):]
    with sqlite3.connect(path, timeout=30) as db:
        return db.execute("SELECT COUNT(*) FROM messages WHERE handler = 'sync' AND (due <= ? OR lease_until > ?)",
                          (time.time(), time.time())).fetchone()[0] > 0


@pytest.mark.slow  # needs the hca client, which `make test` installs (`make unit` leaves it out)
def test_hca_upload_and_download_of_300_mib_with_the_gcp_replica(hca, tmp_path: Path):  # noqa: F811
    """`hca dss upload --replica gcp`: the client stages in S3, so the files are written to `aws` (the
    big one through the 202 path) and reach `gcp` by replication — the big blob through the
    `sync-large-blob` workflow — before PUT /bundles on `gcp` finds them; then `hca dss download` from
    `gcp` and from `aws` (through the checkout flow) is byte-identical. One 300 MiB upload serves both
    replicas' round trips (the `aws` upload path is the same; PUT /bundles on `aws` is covered with a
    smaller file by `test_hca_upload_and_download_through_the_202_path`)."""
    source, files = upload_directory(tmp_path, 300 * MiB + 17)
    uploaded = json.loads(hca("dss", "upload", "--src-dir", str(source), "--replica", "gcp",
                              "--staging-bucket", hca.bucket, "--no-progress"))
    bundle_uuid, version = uploaded["bundle_uuid"], uploaded["version"]
    journal = hca.server.runtime.workflows.journal
    # The upload returns once the files are on gcp, which their executions' last tasks allow: they end after.
    poll_until(lambda: not journal.ids(RUNNING), "the executions' end", timeout=HANG_GUARD)
    by_workflow: dict[str, list[str]] = {}
    for record in journal.executions(limit=100):
        by_workflow.setdefault(record.workflow, []).append(record.status)
    assert by_workflow["blob-copy-write-metadata"] == ["SUCCEEDED"]  # the big file's 202 path, once
    assert by_workflow[LARGE_BLOB_WORKFLOW] == ["SUCCEEDED"]  # and its replication, once

    # The bundle replicates back to `aws` (its files are there already): both replicas serve it.
    poll_until(lambda: requests.get(f"{hca.server.url}/v1/bundles/{bundle_uuid}", params={"replica": "aws"},
                                    timeout=60).status_code == 200, "the bundle's replication to aws",
               timeout=HANG_GUARD)
    for replica in ("gcp", "aws"):
        out = tmp_path / f"download-{replica}"
        hca("dss", "download", "--bundle-uuid", bundle_uuid, "--replica", replica, "--download-dir", str(out))
        for name, data in files.items():
            assert (out / f"{bundle_uuid}.{version}" / name).read_bytes() == data, (replica, name)


def test_a_deferred_event_waits_without_using_up_its_attempts(tmp_path: Path):
    """The bus side of the design: a handler that raises Deferred more often than `max_attempts` is
    neither dead-lettered nor dropped; the message runs again until the handler lets it through."""
    from dss.events.bus import Deferred, EventWorkers, RetryPolicy, SQLiteEventBus

    bus = SQLiteEventBus(tmp_path / "queue.sqlite3", handlers=("sync",), policy=RetryPolicy(max_attempts=2))
    calls: list[str] = []

    def handler(event: Event) -> None:
        calls.append(event.key)
        if len(calls) <= 5:
            raise Deferred("the blob is still being copied", after=0.0)

    workers = EventWorkers(bus, {"sync": handler})
    bus.publish(Event("aws", "files/x"))
    workers.drain(timeout=HANG_GUARD)
    assert calls == ["files/x"] * 6 and bus.dead_letters() == [] and bus.pending() == 0
