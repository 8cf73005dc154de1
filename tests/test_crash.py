"""A server killed with SIGKILL in the middle of 100 writes: nothing half-written is visible, every
acknowledged write survives, and replication completes after a restart."""
from __future__ import annotations

import hashlib
import json
import os
import threading
import time

import requests

from dss.auth import KeyStore, mint_token
from dss.config import Config
from dss.identifiers import BlobKey, ObjectKey, new_version
from dss.storage.blobstore.local import LocalBlobStore
from tests.infra.dss_server import base_env, free_port, kill_group
from tests.infra.helpers import new_uuid, stage_local


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
    deadline = time.time() + 60
    while len(acked) < 40 and time.time() < deadline and writer.is_alive():
        time.sleep(0.01)
    kill_group(server)
    stop.set()
    writer.join(30)
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

    deadline = time.time() + 120
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
