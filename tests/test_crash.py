"""A server killed with SIGKILL in the middle of 100 writes: nothing half-written is visible, every
acknowledged write survives, and after a restart — with no client retry — both replicas and both search
indexes converge on everything the killed server committed, acknowledged or not (issue 8 §5).

The moments of a crash are covered one by one in test_reconcile.py; here, end to end through `./dss-api`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time

import requests

from dss.auth import KeyStore, mint_token
from dss.checksums import checksum_stream
from dss.config import Config
from dss.identifiers import BlobKey, ObjectKey, new_version
from dss.storage.blobstore.local import LocalBlobStore
from tests.infra.dss_server import REPO, base_env, free_port, kill_group
from tests.infra.helpers import new_uuid, poll_until, stage_local

# Hang guard for convergence after a restart: generous, for a heavily loaded two-core machine (it
# normally takes a few seconds).
CONVERGE = 180.0
WRITES = 600.0  # hang guard for the writes before the kill (a few seconds on an idle machine)


def _writes(url: str, token: str, staging, count: int, acked: list, stop: threading.Event) -> None:
    """Alternate file and bundle PUTs; record each acknowledged write."""
    headers = {"Authorization": f"Bearer {token}"}
    rng = __import__("random").Random(7)
    for n in range(count // 2):
        if stop.is_set():
            return
        data = os.urandom(rng.randint(0, 400_000))
        file_uuid, version = new_uuid(), new_version()
        try:
            response = requests.put(f"{url}/v1/files/{file_uuid}", params={"version": version}, headers=headers,
                                    json={"source_url": stage_local(staging, data), "creator_uid": 1}, timeout=30)
            if response.status_code != 201:
                return
            acked.append(("file", file_uuid, version, hashlib.sha256(data).hexdigest()))
            bundle_uuid = new_uuid()
            response = requests.put(f"{url}/v1/bundles/{bundle_uuid}", params={"version": version, "replica": "aws"},
                                    headers=headers, timeout=30, json={"creator_uid": 1, "files": [
                                        {"uuid": file_uuid, "version": version, "name": f"f{n}", "indexed": False}]})
            if response.status_code != 201:
                return
            acked.append(("bundle", bundle_uuid, version, None))
        except requests.ConnectionError:
            return


def _assert_nothing_partial(store: LocalBlobStore) -> None:
    for key in store.list("blobs/"):
        blob = BlobKey.parse(key)
        assert blob is not None and hashlib.sha256(store.get(key)).hexdigest() == blob.sha256, key
    for prefix in ("files/", "bundles/"):
        for key in store.list(prefix):
            assert ObjectKey.parse(key) is not None, key
            json.loads(store.get(key))  # complete JSON, never a torn write


def test_sigkill_during_writes(tmp_path, staging, dss_process_factory):
    env = base_env(tmp_path / "data", staging)
    config = Config.from_env(env)
    token = mint_token(config, KeyStore(config.data_dir / "auth"), "writer@example.org", ["hca"])
    port = free_port()
    server = dss_process_factory(env, port)
    url = f"http://127.0.0.1:{port}"

    acked: list = []
    stop = threading.Event()
    writer = threading.Thread(target=_writes, args=(url, token, staging, 100, acked, stop))
    writer.start()

    def writer_still_going() -> None:
        if not writer.is_alive() and len(acked) < 40:
            raise AssertionError(f"the writes stopped after {len(acked)} acknowledgements, before the kill")

    try:
        # Kill in the middle of the writes: after 40 acknowledgements however long they take (a hang guard).
        poll_until(lambda: len(acked) >= 40, "40 acknowledged writes", writer_still_going, timeout=WRITES)
    finally:
        kill_group(server)
        stop.set()
        writer.join(60)
    assert len(acked) >= 40

    aws = LocalBlobStore(str(config.data_dir / "replicas" / "aws"))
    _assert_nothing_partial(aws)
    _assert_nothing_partial(LocalBlobStore(str(config.data_dir / "replicas" / "gcp")))

    dss_process_factory(env, port)  # restart on the same data
    for kind, uuid, version, sha256 in acked:
        if kind == "file":
            location = requests.get(f"{url}/v1/files/{uuid}", params={"replica": "aws", "version": version},
                                    allow_redirects=False).headers["Location"]
            assert hashlib.sha256(requests.get(location).content).hexdigest() == sha256
        else:
            assert requests.get(f"{url}/v1/bundles/{uuid}", params={"replica": "aws"}).status_code == 200

    deadline = time.time() + CONVERGE
    pending = list(acked)
    while pending and time.time() < deadline:
        kind, uuid, version, _ = pending[0]
        path = "files" if kind == "file" else "bundles"
        method = requests.head if kind == "file" else requests.get
        if method(f"{url}/v1/{path}/{uuid}", params={"replica": "gcp", "version": version}).status_code == 200:
            pending.pop(0)
        else:
            time.sleep(0.1)
    assert not pending, f"{len(pending)} acknowledged writes never reached the gcp replica"
    # Acknowledged or not: whatever the killed server committed is replicated and searchable.
    _assert_converged(config, url)


def _all_keys(store: LocalBlobStore) -> list[str]:
    return [key for prefix in ("blobs/", "files/", "bundles/") for key in store.list(prefix)]


def _searchable(url: str, replica: str) -> set[str]:
    response = requests.post(f"{url}/v1/search", params={"replica": replica, "per_page": 500},
                             json={"es_query": {"query": {"match_all": {}}}}, timeout=30)
    assert response.status_code == 200, response.text
    return {result["bundle_fqid"] for result in response.json()["results"]}


def _assert_converged(config: Config, url: str) -> None:
    """Every key of the aws replica reaches gcp, and every bundle of aws is in both search indexes."""
    aws = LocalBlobStore(str(config.data_dir / "replicas" / "aws"))
    gcp = LocalBlobStore(str(config.data_dir / "replicas" / "gcp"))
    keys = _all_keys(aws)
    bundles = {key.split("/", 1)[1] for key in keys if (parsed := ObjectKey.parse(key)) and parsed.kind == "bundles"
               and not parsed.dead}
    assert len(bundles) <= 500  # one page of search results
    deadline = time.time() + CONVERGE
    missing: list[str] = keys
    unsearchable: dict[str, set[str]] = {}
    while time.time() < deadline:
        missing = [key for key in missing if not gcp.exists(key)]
        unsearchable = {replica: bundles - _searchable(url, replica) for replica in ("aws", "gcp")}
        if not missing and not any(unsearchable.values()):
            break
        time.sleep(0.5)
    assert not missing, f"{len(missing)} keys of aws never reached gcp, e.g. {missing[:3]}"
    assert not any(unsearchable.values()), f"bundles never indexed: {unsearchable}"
    verify = subprocess.run([sys.executable, str(REPO / "scripts" / "dss-ops.py"), "sync", "verify"],
                            capture_output=True, text=True, timeout=CONVERGE,
                            env={"DSS_DATA_DIR": str(config.data_dir), "PATH": "/usr/bin:/bin"})
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _commit_without_event(store: LocalBlobStore, data: bytes, name: str) -> tuple[str, str]:
    """Write a file and a bundle naming it exactly as a server killed right after its commits leaves
    them: in the replica, with no event queued (what a server older than intents did). (uuid, version)."""
    sums = checksum_stream(io.BytesIO(data), len(data))
    checksums = {key.replace("_", "-"): value for key, value in sums.as_dict().items()}
    file_uuid, bundle_uuid, version = new_uuid(), new_uuid(), new_version()
    store.put(str(sums.blob_key), data)
    store.put_json(f"files/{file_uuid}.{version}", {
        "format": "0.0.4", "creator_uid": 1, "version": version, "content-type": "application/json",
        "size": len(data), **checksums})
    entry = {"name": name, "uuid": file_uuid, "version": version, "content-type": "application/json",
             "size": len(data), "indexed": True, **checksums}
    store.put_json(f"bundles/{bundle_uuid}.{version}",
                   {"format": "0.0.1", "version": version, "creator_uid": 1, "files": [entry]})
    return bundle_uuid, version


def test_objects_committed_without_an_event_converge_after_restart(tmp_path, staging, dss_process_factory):
    """Deterministically the case the random kill rarely hits: commits whose events were never queued,
    a blob whose metadata was never written, a tombstone never indexed, and the killed server's temp
    and spool files. Starting a server, with no client retry, repairs all of it."""
    env = base_env(tmp_path / "data", staging)
    config = Config.from_env(env)
    aws = LocalBlobStore(str(config.data_dir / "replicas" / "aws"))
    searchable = _commit_without_event(aws, json.dumps({"organ": {"text": "pancreas"}}).encode(), "cell_0.json")
    deleted_uuid, deleted_version = _commit_without_event(aws, b"{}", "other_0.json")
    aws.put_json(f"bundles/{deleted_uuid}.{deleted_version}.dead",
                 {"email": "admin@example.org", "reason": "crashed", "admin_deleted": True, "version": deleted_version})
    orphan_blob = str(checksum_stream(io.BytesIO(b"orphan"), 6).blob_key)
    aws.put(orphan_blob, b"orphan")
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True, check=True).stdout)
    an_hour_ago = time.time() - 3600
    leftovers = [aws.tmp_dir / f"{dead_pid}-0123abcd", config.data_dir / "spool" / "0123abcd"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half-written")
        os.utime(path, (an_hour_ago, an_hour_ago))

    port = free_port()
    dss_process_factory(env, port)
    url = f"http://127.0.0.1:{port}"
    _assert_converged(config, url)
    hits = requests.post(f"{url}/v1/search", params={"replica": "gcp"}, timeout=30, json={"es_query": {
        "query": {"match": {"files.cell_json.organ.text": "pancreas"}}}}).json()["results"]
    assert [hit["bundle_fqid"] for hit in hits] == [f"{searchable[0]}.{searchable[1]}"]
    for replica in ("aws", "gcp"):
        def tombstones(replica: str = replica) -> list[str]:
            response = requests.post(f"{url}/v1/search", params={"replica": replica}, timeout=30, json={
                "es_query": {"query": {"term": {"reason": "crashed"}}}})
            assert response.status_code == 200, response.text
            return [hit["bundle_fqid"] for hit in response.json()["results"]]

        # _assert_converged waits for live bundles only: the tombstone's indexing may still be under way
        poll_until(lambda: tombstones() != [], f"the tombstone indexed in {replica}", timeout=CONVERGE)
        assert tombstones() == [f"{deleted_uuid}.{deleted_version}"], replica
    assert not any(path.exists() for path in leftovers)
