"""PUT /files above DSS_ASYNC_COPY_THRESHOLD: 202 `{task_id, version}`, the copy in the
`blob-copy-write-metadata` workflow, HEAD 404 until the metadata is written, 422 if the copy failed.

Real servers on loopback: moto's S3 server for the staging bucket, the DSS server in-process. The
threshold is 1 MiB here so that a few MiB exercise the path; time bounds are hang guards only.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from dss.checksums import checksum_stream
from dss.identifiers import new_version
from tests.infra.dss_server import DSSServer, start_server
from tests.infra.helpers import new_uuid, poll_until, put_file, stage_local
from tests.test_hca_client import hca  # noqa: F401 - the fixture that drives the real client

MiB = 1024 * 1024
HANG_GUARD = 120.0  # seconds; a bound that only a hang exceeds


@pytest.fixture
def dss_env(dss_env: dict[str, str]) -> dict[str, str]:
    """The servers' environment (also that of the `hca` fixture) with a threshold of a few MiB."""
    return {**dss_env, "DSS_ASYNC_COPY_THRESHOLD": str(4 * MiB)}


@pytest.fixture
def async_env(dss_env: dict[str, str], aws_env: str) -> dict[str, str]:
    return {**dss_env, "DSS_ASYNC_COPY_THRESHOLD": str(MiB)}


@pytest.fixture
def server(async_env: dict[str, str]):
    started = start_server(async_env)
    yield started
    started.stop()
    started.runtime.close()


def stage_s3(bucket: str, data: bytes, *, declared: bytes | None = None) -> str:
    """Put `data` in the staging bucket, tagged as the hca client tags it (with the checksums of
    `declared` instead, to make them lie)."""
    import boto3

    key = f"{new_uuid()}/data.bin"
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType="application/octet-stream")
    sums = checksum_stream(io.BytesIO(declared if declared is not None else data), len(data))
    s3.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": [
        {"Key": f"hca-dss-{name}", "Value": value} for name, value in sums.as_dict().items()]})
    return f"s3://{bucket}/{key}"


def head(server: DSSServer, file_uuid: str, version: str) -> requests.Response:
    return requests.head(f"{server.url}/v1/files/{file_uuid}", params={"replica": "aws", "version": version},
                         timeout=30)


def settled(server: DSSServer, file_uuid: str, version: str) -> Callable[[], int | None]:
    """HEAD's status once it is no longer 404."""
    def check() -> int | None:
        status = head(server, file_uuid, version).status_code
        return None if status == 404 else status
    return check


def ended(status: Callable[[str], Any], execution_id: str) -> Callable[[], Any]:
    """The execution's record once it is final (`status`: `workflows.status` or a journal's `execution`).
    What its last task did (HEAD 200 or 422) shows first: the status is recorded after that task returns
    and the states after it run, so a test waits for this before it asserts the status."""
    def check() -> Any:
        record = status(execution_id)
        assert record is not None, f"no execution {execution_id}"
        return None if record.status == "RUNNING" else record
    return check


def download(server: DSSServer, file_uuid: str, version: str) -> bytes:
    response = requests.get(f"{server.url}/v1/files/{file_uuid}", params={"replica": "aws", "version": version},
                            timeout=60)
    assert response.status_code == 200, response.status_code
    return response.content


def test_large_source_answers_202_and_appears_once_copied(server, s3_bucket):
    data = os.urandom(3 * MiB + 12345)
    source = stage_s3(s3_bucket, data)
    file_uuid, version = new_uuid(), new_version()

    response = put_file(server, source, file_uuid, version)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["version"] == version and isinstance(body["task_id"], str)

    assert poll_until(settled(server, file_uuid, version), "the copy", timeout=HANG_GUARD) == 200
    answer = head(server, file_uuid, version)
    assert answer.headers["X-DSS-SHA256"] == hashlib.sha256(data).hexdigest()
    assert answer.headers["X-DSS-SIZE"] == str(len(data))
    assert download(server, file_uuid, version) == data
    assert poll_until(ended(server.runtime.workflows.status, body["task_id"]), "the execution's end",
                      timeout=HANG_GUARD).status == "SUCCEEDED"

    # The metadata was written through the files domain: its events replicate it like any other file.
    server.runtime.workers.drain(timeout=HANG_GUARD)
    assert server.runtime.replicas["gcp"].exists(f"files/{file_uuid}.{version}")

    # Now the blob is stored: the same bytes under another uuid are synchronous.
    assert put_file(server, source).status_code == 201
    # And an identical re-PUT of the finished version is the usual 200.
    assert put_file(server, source, file_uuid, version).status_code == 200


def test_small_and_local_sources_stay_synchronous(server, s3_bucket):
    assert put_file(server, stage_s3(s3_bucket, os.urandom(MiB))).status_code == 201
    assert put_file(server, stage_local(server.staging, os.urandom(2 * MiB))).status_code == 201


def test_declared_checksum_that_does_not_match_is_422(server, s3_bucket):
    data = os.urandom(2 * MiB + 1)
    source = stage_s3(s3_bucket, data, declared=os.urandom(len(data)))
    file_uuid, version = new_uuid(), new_version()

    response = put_file(server, source, file_uuid, version)
    assert response.status_code == 202, response.text
    assert poll_until(settled(server, file_uuid, version), "the failure", timeout=HANG_GUARD) == 422
    problem = requests.get(f"{server.url}/v1/files/{file_uuid}", params={"replica": "aws", "version": version},
                           allow_redirects=False, timeout=30)
    assert problem.status_code == 422 and problem.json()["code"] == "missing_checksum"
    assert poll_until(ended(server.runtime.workflows.status, response.json()["task_id"]),
                      "the execution's end", timeout=HANG_GUARD).status == "FAILED"
    for replica in ("aws", "gcp"):
        store = server.runtime.replicas[replica]
        assert list(store.list(f"files/{file_uuid}")) == []
        assert list(store.list("blobs/")) == []
    # A version that was never written is still a plain 404.
    assert head(server, file_uuid, new_version()).status_code == 404


def test_re_put_during_the_copy_returns_the_same_task(server, s3_bucket):
    workflows = server.runtime.workflows
    workflows.stop()  # no process runs executions for now: the copy cannot finish before the re-PUT
    data = os.urandom(2 * MiB + 7)
    source = stage_s3(s3_bucket, data)
    file_uuid, version = new_uuid(), new_version()

    first = put_file(server, source, file_uuid, version)
    again = put_file(server, source, file_uuid, version)
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert head(server, file_uuid, version).status_code == 404
    other = put_file(server, source, file_uuid, version, creator_uid=2)  # same version, other metadata
    assert other.status_code == 409, other.text
    copies = [r for r in workflows.journal.executions(limit=1000) if r.workflow == "blob-copy-write-metadata"]
    assert [r.id for r in copies] == [first.json()["task_id"]]

    workflows.run()  # an owner appears (as after a restart) and runs what was recorded
    assert poll_until(settled(server, file_uuid, version), "the copy", timeout=HANG_GUARD) == 200
    assert download(server, file_uuid, version) == data


def test_any_process_starts_one_process_runs(async_env, s3_bucket):
    """Two runtimes on one data directory (as `dss-api` runs several processes): one owns the journal and
    runs what the other records; when it stops, the other takes over."""
    first = start_server(async_env)
    second = start_server(async_env)
    try:
        poll_until(lambda: bool(first.runtime.workflows.owner or second.runtime.workflows.owner), "an owner",
                   timeout=HANG_GUARD)
        owner, other = (first, second) if first.runtime.workflows.owner else (second, first)
        assert not other.runtime.workflows.owner
        data = os.urandom(2 * MiB + 3)
        file_uuid, version = new_uuid(), new_version()
        assert put_file(other, stage_s3(s3_bucket, data), file_uuid, version).status_code == 202
        assert poll_until(settled(other, file_uuid, version), "the copy", timeout=HANG_GUARD) == 200

        owner.runtime.workflows.stop()
        poll_until(lambda: bool(other.runtime.workflows.owner), "the hand-over", timeout=HANG_GUARD)
        data = os.urandom(2 * MiB + 5)
        file_uuid, version = new_uuid(), new_version()
        assert put_file(owner, stage_s3(s3_bucket, data), file_uuid, version).status_code == 202
        assert poll_until(settled(owner, file_uuid, version), "the copy", timeout=HANG_GUARD) == 200
        assert download(owner, file_uuid, version) == data
    finally:
        for server in (first, second):
            server.stop()
            server.runtime.close()


def test_failed_copy_is_tried_again_by_a_re_put(server, s3_bucket):
    import boto3

    data = os.urandom(2 * MiB + 9)
    source = stage_s3(s3_bucket, data, declared=os.urandom(len(data)))
    file_uuid, version = new_uuid(), new_version()
    failed = put_file(server, source, file_uuid, version).json()["task_id"]
    assert poll_until(settled(server, file_uuid, version), "the failure", timeout=HANG_GUARD) == 422
    # Until that run has ended (its failure is recorded first) a re-PUT would return it again.
    assert poll_until(ended(server.runtime.workflows.status, failed), "the failed run's end",
                      timeout=HANG_GUARD).status == "FAILED"

    # The submitter fixes the staged object (right bytes for the declared checksums) and PUTs again.
    bucket, key = source[len("s3://"):].split("/", 1)
    sums = checksum_stream(io.BytesIO(data), len(data))
    boto3.client("s3").put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": [
        {"Key": f"hca-dss-{name}", "Value": value} for name, value in sums.as_dict().items()]})
    retried = put_file(server, source, file_uuid, version)
    assert retried.status_code == 202 and retried.json()["task_id"] != failed
    assert poll_until(settled(server, file_uuid, version), "the second copy", timeout=HANG_GUARD) == 200
    assert download(server, file_uuid, version) == data


def test_workflow_journal_setting(async_env, tmp_path):
    from dss.config import Config

    config = Config.from_env({**async_env, "DSS_WORKFLOW_JOURNAL": str(tmp_path / "j.sqlite3")})
    assert config.workflow_journal == tmp_path / "j.sqlite3" and config.async_copy_threshold == MiB
    defaults = Config.from_env({"DSS_DATA_DIR": str(tmp_path / "d")})
    assert defaults.workflow_journal == tmp_path / "d" / "workflows.sqlite3"
    assert (defaults.workflow_threads, defaults.workflow_task_budget) == (0, 600.0)
    assert defaults.async_copy_threshold == 64 * MiB
    assert json.loads(config.describe())  # still one line of JSON


# --- the unmodified hca client through the 202 path --------------------------------------------------

def upload_directory(tmp_path: Path, big: int, metadata_name: str = "meta/donor_0.json",
                     ) -> tuple[Path, dict[str, bytes]]:
    """A directory for `hca dss upload`: one file of `big` bytes, one small file, one metadata JSON."""
    source = tmp_path / "upload"
    files = {"big.bin": os.urandom(big), "small.txt": b"below the threshold\n" * 10,
             metadata_name: json.dumps({"organism": "Homo sapiens"}).encode()}
    for name, data in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(data)
    return source, files


def _hca_round_trip(run, tmp_path, big: int) -> None:
    source, files = upload_directory(tmp_path, big)
    uploaded = json.loads(run("dss", "upload", "--src-dir", str(source), "--replica", "aws",
                              "--staging-bucket", run.bucket, "--no-progress"))
    bundle_uuid, version = uploaded["bundle_uuid"], uploaded["version"]
    journal = run.server.runtime.workflows.journal
    copies = [r.id for r in journal.executions(limit=100) if r.workflow == "blob-copy-write-metadata"]
    # the big file took the 202 path, once (the upload returns once its metadata is there: maybe before the end)
    assert [poll_until(ended(journal.execution, copy), "the copy's end", timeout=HANG_GUARD).status
            for copy in copies] == ["SUCCEEDED"]

    out = tmp_path / "download"
    run("dss", "download", "--bundle-uuid", bundle_uuid, "--replica", "aws", "--download-dir", str(out))
    for name, data in files.items():
        assert (out / f"{bundle_uuid}.{version}" / name).read_bytes() == data, name


@pytest.mark.slow  # needs the hca client, which `make test` installs (`make unit` leaves it out)
def test_hca_upload_and_download_through_the_202_path(hca, tmp_path):  # noqa: F811 - the imported fixture
    _hca_round_trip(hca, tmp_path, 20 * MiB + 4321)

# The 300 MiB round trip runs once, with the gcp replica on the GCS emulator and downloads from both
# replicas: tests/test_sync_large_blob.py::test_hca_upload_and_download_of_300_mib_with_the_gcp_replica.


def _server_processes(env: dict[str, str], dss_process_factory):
    """`./dss-api` started with `env` on a free port: (config, a writer's auth header, port, url, process)."""
    from dss.auth import KeyStore, mint_token
    from dss.config import Config
    from tests.infra.dss_server import free_port

    config = Config.from_env(env)
    auth = {"Authorization": "Bearer " + mint_token(config, KeyStore(config.data_dir / "auth"), "w@example.org",
                                                    ["hca"])}
    port = free_port()
    return config, auth, port, f"http://127.0.0.1:{port}", dss_process_factory(env, port)


def test_copies_survive_sigkill_of_every_server_process(tmp_path, async_env, s3_bucket, dss_process_factory):
    """`dss-api` with two processes: executions recorded by either, the whole group SIGKILLed right after
    the 202s, a restart resumes them (one of the new processes takes the journal's lock)."""
    from dss.identifiers import BlobKey
    from dss.storage.blobstore.local import LocalBlobStore
    from tests.infra.dss_server import kill_group

    env = {**async_env, "DSS_API_PROCESSES": "2"}
    config, auth, port, url, server = _server_processes(env, dss_process_factory)
    files = {new_uuid(): os.urandom(3 * MiB + n) for n in range(4)}
    version = new_version()
    for file_uuid, data in files.items():
        response = requests.put(f"{url}/v1/files/{file_uuid}", params={"version": version}, headers=auth,
                                json={"source_url": stage_s3(s3_bucket, data), "creator_uid": 1}, timeout=60)
        assert response.status_code == 202, response.text
    kill_group(server)

    blobs = LocalBlobStore(str(config.data_dir / "replicas" / "aws"))
    for key in blobs.list("blobs/"):  # whatever the kill interrupted, no blob is partial
        blob = BlobKey.parse(key)
        assert blob is not None and hashlib.sha256(blobs.get(key)).hexdigest() == blob.sha256

    dss_process_factory(env, port)
    for file_uuid, data in files.items():
        def status(file_uuid: str = file_uuid) -> int | None:
            code = requests.head(f"{url}/v1/files/{file_uuid}", params={"replica": "aws", "version": version},
                                 timeout=30).status_code
            return None if code == 404 else code
        assert poll_until(status, "the resumed copy", timeout=HANG_GUARD) == 200
        got = requests.get(f"{url}/v1/files/{file_uuid}", params={"replica": "aws", "version": version},
                           timeout=60)
        assert got.status_code == 200 and got.content == data


class _PartWatcher:
    """Polls a local replica while a copy runs: every staged part record (`workflows/parts/<upload>/<n>`,
    published atomically, so one that is listed is complete) with the identity of its file, and every
    size seen under `blobs/`. A part written twice shows two identities."""

    def __init__(self, root: Path) -> None:
        from dss.storage.blobstore.local import LocalBlobStore

        self.store = LocalBlobStore(str(root))
        self.parts: dict[str, set[tuple[int, int]]] = {}
        self.blob_sizes: set[int] = set()
        self.files_before_blob = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(FileNotFoundError, OSError):
                for key in list(self.store.list("workflows/parts/")):
                    stat = os.stat(self.store.path(key))
                    self.parts.setdefault(key.rsplit("/", 1)[1], set()).add((stat.st_ino, stat.st_mtime_ns))
                blobs = [self.store.head(key).size for key in self.store.list("blobs/")]
                self.blob_sizes.update(blobs)
                if not blobs and next(iter(self.store.list("files/")), None) is not None:
                    self.files_before_blob = True
            self._stop.wait(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def test_sigkill_during_a_multipart_copy_copies_no_finished_part_again(tmp_path, async_env, s3_bucket,
                                                                      dss_process_factory):
    """What the test above does not show: the kill lands *during* a copy of several parts (one task thread,
    so parts are copied one at a time; killed once a part is staged and before the blob is published).
    After the restart the copy completes; every staged part record was written exactly once (the part in
    flight at the kill had none yet), no Map item that had finished is run again (the journal), and
    neither a partial blob nor the metadata before its blob was ever visible."""
    from dss.workflows.journal import Journal
    from tests.infra.dss_server import kill_group

    env = {**async_env, "DSS_API_PROCESSES": "2", "DSS_WORKFLOW_THREADS": "1"}
    config, auth, port, url, server = _server_processes(env, dss_process_factory)
    data = os.urandom(3 * 64 * MiB)  # three parts of the DSS part size (64 MiB), copied one after another
    file_uuid, version = new_uuid(), new_version()
    watcher = _PartWatcher(config.data_dir / "replicas" / "aws")
    try:
        response = requests.put(f"{url}/v1/files/{file_uuid}", params={"version": version}, headers=auth,
                                json={"source_url": stage_s3(s3_bucket, data), "creator_uid": 1}, timeout=60)
        assert response.status_code == 202, response.text
        poll_until(lambda: bool(watcher.parts), "the first staged part", timeout=HANG_GUARD)
        kill_group(server)
        staged_at_kill = set(watcher.parts)
        assert watcher.blob_sizes == set() and len(staged_at_kill) < 3  # the kill landed mid-copy

        journal = Journal(config.workflow_journal)
        execution_id = response.json()["task_id"]

        def slice_events(kind: str) -> dict[str, int]:
            counts: dict[str, int] = {}
            for event in journal.events(execution_id):
                if event.type == kind and event.state == "CopySlice":
                    counts[event.scope] = counts.get(event.scope, 0) + 1
            return counts

        finished_at_kill = set(slice_events("TaskSucceeded"))
        dss_process_factory(env, port)

        def resumed() -> int | None:
            code = head_status(url, file_uuid, version)
            return None if code == 404 else code
        assert poll_until(resumed, "the resumed copy", timeout=HANG_GUARD) == 200
    finally:
        watcher.stop()
    assert poll_until(ended(journal.execution, execution_id), "the resumed execution's end",
                      timeout=HANG_GUARD).status == "SUCCEEDED"
    assert sorted(watcher.parts) == ["00001", "00002", "00003"]
    assert all(len(identities) == 1 for identities in watcher.parts.values()), watcher.parts  # each copied once
    scheduled = slice_events("TaskScheduled")
    assert len(scheduled) == 3 and all(scheduled[scope] == 1 for scope in finished_at_kill), scheduled
    assert watcher.blob_sizes <= {len(data)} and not watcher.files_before_blob
    got = requests.get(f"{url}/v1/files/{file_uuid}", params={"replica": "aws", "version": version}, timeout=120)
    assert got.status_code == 200 and got.content == data
    journal.close()


def head_status(url: str, file_uuid: str, version: str) -> int:
    return requests.head(f"{url}/v1/files/{file_uuid}", params={"replica": "aws", "version": version},
                         timeout=30).status_code
