"""End to end with the real `hca` client (7.0.1) as a subprocess: upload to a moto S3 staging bucket,
register through this server, download byte-identical; read a >1,000-file bundle through pagination.

`make test` installs the client into .venv-hca and sets DSS_HCA_BIN; running this file alone needs
`make hca-client` first.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.infra.dss_server import REPO, start_server
from tests.infra.helpers import add_file, new_uuid, put_bundle
from tests.infra.opensearch import ALL_ENGINES

pytestmark = pytest.mark.slow

SA_EMAIL = "hca-uploader@dss-test.iam.gserviceaccount.com"


def _hca_binary() -> str:
    binary = os.environ.get("DSS_HCA_BIN") or str(REPO / ".venv-hca" / "bin" / "hca")
    if not Path(binary).exists():
        pytest.fail(f"The hca client is not installed at {binary}: run `make hca-client` (make test does).")
    return binary


@pytest.fixture
def dss_env(dss_env, search_engine_env):
    return {**dss_env, **search_engine_env}  # a real engine as the search where ALL_ENGINES says so


@pytest.fixture
def hca(tmp_path, dss_env, aws_env, s3_bucket):
    """A server, and a function running `hca` against it with a trusted service-account key."""
    server = start_server(dss_env)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "service-account.json"
    key_file.write_text(json.dumps({
        "type": "service_account", "client_email": SA_EMAIL, "client_id": "1", "private_key_id": "test-key-1",
        "private_key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode()}))
    server.runtime.keys.trust_service_account(json.loads(key_file.read_text()))
    config_home = tmp_path / "hca-config"
    (config_home / "hca").mkdir(parents=True)
    swagger = f"{server.url}/v1/swagger.json"
    (config_home / "hca" / "config.json").write_text(json.dumps({
        "DSSClient": {"swagger_url": swagger}, "AuthClient": {"swagger_url": swagger},
        "application_secrets": {"installed": {"client_id": "local"}}}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DSS_")}, "XDG_CONFIG_HOME": str(config_home),
           "GOOGLE_APPLICATION_CREDENTIALS": str(key_file), "OAUTHLIB_INSECURE_TRANSPORT": "1"}

    def run(*args: str) -> str:
        result = subprocess.run([_hca_binary(), *args], env=env, capture_output=True, text=True, timeout=600,
                                cwd=tmp_path)
        assert result.returncode == 0, f"hca {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    run.server = server  # type: ignore[attr-defined]
    run.bucket = s3_bucket  # type: ignore[attr-defined]
    yield run
    server.stop()


def _make_tree(root: Path) -> dict[str, bytes]:
    files = {
        "sub/dir/nested.txt": b"nested file\n" * 100,
        "empty.dat": b"",
        "donor_organism_0.json": json.dumps({"organism": "Homo sapiens", "age": 42}).encode(),
        "big.bin": os.urandom(64 * 1024 * 1024 + 1024 * 1024 + 17),  # > 64 MiB: a multipart S3 upload
    }
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


@ALL_ENGINES
def test_upload_and_download_round_trip(hca, tmp_path):
    source = tmp_path / "upload"
    files = _make_tree(source)
    started = time.monotonic()
    uploaded = json.loads(hca("dss", "upload", "--src-dir", str(source), "--replica", "aws",
                              "--staging-bucket", hca.bucket, "--no-progress"))
    bundle_uuid, version = uploaded["bundle_uuid"], uploaded["version"]
    assert sorted(f["name"] for f in uploaded["files"]) == sorted(files)

    out = tmp_path / "download"
    hca("dss", "download", "--bundle-uuid", bundle_uuid, "--replica", "aws", "--download-dir", str(out))
    for name, data in files.items():
        assert (out / f"{bundle_uuid}.{version}" / name).read_bytes() == data, name

    manifest = requests.get(f"{hca.server.url}/v1/bundles/{bundle_uuid}", params={"replica": "aws"}).json()
    indexed = {f["name"]: f["indexed"] for f in manifest["bundle"]["files"]}
    assert indexed["donor_organism_0.json"] is True and indexed["big.bin"] is False
    assert time.monotonic() - started < 300

    hca.server.runtime.workers.drain(timeout=60)
    query = json.dumps({"query": {"match": {"files.donor_organism_json.organism": "homo SAPIENS"}}})
    found = json.loads(hca("dss", "post-search", "--replica", "aws", "--es-query", query))
    assert [r["bundle_fqid"] for r in found["results"]] == [f"{bundle_uuid}.{version}"]
    raw = json.loads(hca("dss", "post-search", "--replica", "aws", "--es-query", query, "--output-format", "raw"))
    assert raw["results"][0]["metadata"]["files"]["donor_organism_json"] == [{"organism": "Homo sapiens", "age": 42}]


def test_large_bundle_through_pagination(hca):
    server = hca.server
    entry = add_file(server, b"one of many", "x")
    names = [f"files/part-{n:05d}.bin" for n in range(1234)]
    bundle_uuid = new_uuid()
    assert put_bundle(server, [dict(entry, name=name) for name in names], bundle_uuid).status_code == 201
    bundle = json.loads(hca("dss", "get-bundle", "--uuid", bundle_uuid, "--replica", "aws"))
    assert [f["name"] for f in bundle["bundle"]["files"]] == names


def test_put_file_through_the_cli_uses_tags_from_the_staging_object(hca, aws_env):
    import hashlib
    import io

    import boto3

    from dss.checksums import checksum_stream

    data = b"staged by hand\n"
    sums = checksum_stream(io.BytesIO(data), len(data))
    s3 = boto3.client("s3")
    s3.put_object(Bucket=hca.bucket, Key="manual/file.txt", Body=data, ContentType="text/plain")
    s3.put_object_tagging(Bucket=hca.bucket, Key="manual/file.txt", Tagging={"TagSet": [
        {"Key": f"hca-dss-{name}", "Value": value} for name, value in sums.as_dict().items()]})
    file_uuid = new_uuid()
    out = json.loads(hca("dss", "put-file", "--uuid", file_uuid, "--version", "2026-01-01T000000.000000Z",
                         "--creator-uid", "5", "--source-url", f"s3://{hca.bucket}/manual/file.txt"))
    assert out == {"version": "2026-01-01T000000.000000Z"}
    head = requests.head(f"{hca.server.url}/v1/files/{file_uuid}", params={"replica": "aws"})
    assert head.headers["X-DSS-SHA256"] == hashlib.sha256(data).hexdigest()
