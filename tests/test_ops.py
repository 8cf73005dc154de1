"""scripts/dss-ops.py against a real data directory: reindexing a replica, verifying sync, tokens."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from dss.index.backend import open_search_index
from tests.infra.dss_server import ADMIN, REPO
from tests.infra.helpers import add_file, new_uuid, put_bundle
from tests.infra.opensearch import ENGINES, unique_stage


def ops(dss, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "dss-ops.py"), *args], capture_output=True,
                          text=True, env={"DSS_DATA_DIR": str(dss.config.data_dir), "PATH": "/usr/bin:/bin", **env})


@pytest.mark.parametrize("target", ["embedded", *ENGINES])
def test_reindex_rebuilds_documents_and_tombstones(dss, tmp_path, target, request):
    bundles = []
    for n in range(6):
        bundle_uuid = new_uuid()
        metadata = add_file(dss, json.dumps({"n": n, "organ": "brain" if n % 2 else "heart"}).encode(), "s_0.json")
        assert put_bundle(dss, [metadata], bundle_uuid).status_code == 201
        bundles.append(bundle_uuid)
    requests.delete(f"{dss.url}/v1/bundles/{bundles[0]}", params={"replica": "aws"}, headers=dss.auth(ADMIN),
                    json={"reason": "gone"})
    dss.runtime.workers.drain(timeout=60)
    query = {"query": {"match_all": {}}}
    original = dss.runtime.search.search("aws", query, size=100)

    # into a fresh embedded index, or into fresh indices on a real engine's node
    url, stage = f"sqlite://{tmp_path / 'fresh-index'}", unique_stage("reindex")
    if target in ENGINES:
        url = request.getfixturevalue(f"{target}_url")
    result = ops(dss, "index", "reindex", "--replica", "aws", DSS_SEARCH_URL=url, DSS_DEPLOYMENT_STAGE=stage)
    assert result.returncode == 0, result.stderr
    assert "Reindexed 7 bundle keys" in result.stdout  # six manifests and one tombstone
    with open_search_index(url, stage=stage) as rebuilt:
        again = rebuilt.search("aws", query, size=100)
        assert [h.id for h in again.hits] == [h.id for h in original.hits]
        for hit in original.hits:
            assert rebuilt.get("aws", hit.id) == dss.runtime.search.get("aws", hit.id)
        dead = rebuilt.search("aws", {"query": {"term": {"reason": "gone"}}}, size=10)
        assert [h.id.split(".")[0] for h in dead.hits] == [bundles[0]]


def test_sync_verify_reports_and_then_passes(dss):
    bundle_uuid = new_uuid()
    put_bundle(dss, [add_file(dss, b"to be synced", "x")], bundle_uuid)
    dss.runtime.workers.drain(timeout=60)
    result = ops(dss, "sync", "verify", "--replica", "aws")
    assert result.returncode == 0, result.stdout + result.stderr
    (dss.config.data_dir / "replicas" / "gcp" / "bundles" / f"~{bundle_uuid[:2]}").rename(
        dss.config.data_dir / "moved-away")
    result = ops(dss, "sync", "verify", "--replica", "aws")
    assert result.returncode == 1 and f"missing in gcp: bundles/{bundle_uuid}." in result.stdout


def test_token_command_mints_a_usable_token(dss):
    result = ops(dss, "token", "--email", "ops@example.org", "--group", "hca", "--ttl", "60")
    token = result.stdout.strip()
    response = requests.put(f"{dss.url}/v1/bundles/{new_uuid()}", params={"version": "2020-01-01T000000.000000Z",
                                                                           "replica": "aws"},
                            headers={"Authorization": f"Bearer {token}"}, json={"files": [], "creator_uid": 1})
    assert response.status_code == 201
