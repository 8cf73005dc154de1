"""The API over every storage backend: replicas on local disk, S3 (moto) and GCS (the emulator), files
staged in S3 (tags, as the hca client does) or GCS (custom metadata), replication between kinds."""
from __future__ import annotations

import io

import boto3
import pytest
import requests

from dss.checksums import checksum_stream
from dss.identifiers import new_version
from tests.infra.dss_server import start_server
from tests.infra.helpers import new_uuid, put_bundle, put_file

# (aws replica, gcp replica): every kind is both a source and a destination of sync
PAIRS = [("file", "s3"), ("s3", "gs"), ("gs", "file")]


def _declared(data: bytes, prefix: str = "hca-dss-") -> dict[str, str]:
    return {f"{prefix}{name}": value for name, value in checksum_stream(io.BytesIO(data), len(data)).as_dict().items()}


def stage_s3(bucket: str, key: str, data: bytes, tags: dict[str, str] | None = None,
             metadata: dict[str, str] | None = None, content_type: str = "application/octet-stream") -> str:
    s3 = boto3.client("s3")
    s3.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type, Metadata=metadata or {})
    if tags:
        s3.put_object_tagging(Bucket=bucket, Key=key,
                              Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})
    return f"s3://{bucket}/{key}"


def stage_gs(bucket: str, key: str, data: bytes, metadata: dict[str, str]) -> str:
    from google.cloud import storage

    blob = storage.Client().bucket(bucket).blob(key)
    blob.metadata = metadata
    blob.upload_from_string(data, content_type="application/json")
    return f"gs://{bucket}/{key}"


@pytest.fixture(params=PAIRS, ids=[f"{a}-{g}" for a, g in PAIRS])
def cloud_dss(request, dss_env, tmp_path, new_s3_bucket, new_gcs_bucket):
    def replica_url(kind: str, name: str) -> str:
        return {"file": (tmp_path / name).as_uri(), "s3": f"s3://{new_s3_bucket()}",
                "gs": f"gs://{new_gcs_bucket()}"}[kind]

    aws_kind, gcp_kind = request.param
    server = start_server({**dss_env, "DSS_AWS_REPLICA_URL": replica_url(aws_kind, "aws"),
                           "DSS_GCP_REPLICA_URL": replica_url(gcp_kind, "gcp")})
    server.s3_staging = new_s3_bucket()
    server.gs_staging = new_gcs_bucket()
    yield server
    server.stop()


def _download(server, file_uuid: str, replica: str) -> bytes:
    response = requests.get(f"{server.url}/v1/files/{file_uuid}", params={"replica": replica},
                            allow_redirects=False)
    assert response.status_code == 302, response.text
    return requests.get(response.headers["Location"], timeout=30).content


def test_register_read_and_replicate(cloud_dss):
    data = b"cells " * 5000
    file_uuid, version = new_uuid(), new_version()
    source = stage_s3(cloud_dss.s3_staging, f"{file_uuid}/cells.txt", data, tags=_declared(data))
    assert put_file(cloud_dss, source, file_uuid, version).status_code == 201
    assert put_file(cloud_dss, source, file_uuid, version).status_code == 200
    assert _download(cloud_dss, file_uuid, "aws") == data

    bundle_uuid = new_uuid()
    entry = {"uuid": file_uuid, "version": version, "name": "cells.txt", "indexed": False}
    assert put_bundle(cloud_dss, [entry], bundle_uuid).status_code == 201
    cloud_dss.runtime.workers.drain(timeout=60)
    assert requests.get(f"{cloud_dss.url}/v1/bundles/{bundle_uuid}", params={"replica": "gcp"}).status_code == 200
    assert _download(cloud_dss, file_uuid, "gcp") == data
    direct = requests.get(f"{cloud_dss.url}/v1/files/{file_uuid}", params={"replica": "gcp", "directurl": "true"},
                          allow_redirects=False).headers["Location"]
    # reads are served from the replica's checkout store (here the embedded default, a local directory)
    assert direct.startswith(cloud_dss.runtime.checkout.stores["gcp"].url + "/blobs/")


def test_gcs_staging_lands_in_the_gcp_replica(cloud_dss):
    data = b'{"organ": "pancreas"}'
    file_uuid = new_uuid()
    source = stage_gs(cloud_dss.gs_staging, f"{file_uuid}/organ.json", data, _declared(data))
    cloud_dss.runtime.workers.stop()  # no background sync yet, so where the write landed is visible
    assert put_file(cloud_dss, source, file_uuid).status_code == 201
    head = requests.head(f"{cloud_dss.url}/v1/files/{file_uuid}", params={"replica": "gcp"})
    assert head.status_code == 200 and head.headers["X-DSS-CONTENT-TYPE"] == "application/json"
    assert requests.head(f"{cloud_dss.url}/v1/files/{file_uuid}", params={"replica": "aws"}).status_code == 404
    assert _download(cloud_dss, file_uuid, "gcp") == data
    cloud_dss.runtime.workers.drain(timeout=60)
    assert _download(cloud_dss, file_uuid, "aws") == data


def test_checksum_sources_and_failures(cloud_dss):
    data, other = b"the real bytes", b"something else"
    bucket = cloud_dss.s3_staging
    wrong = {**_declared(data), "hca-dss-sha256": _declared(other)["hca-dss-sha256"]}
    cases = [
        (stage_s3(bucket, "dbio", data, tags=_declared(data, "dss-")), 201, None),
        (stage_s3(bucket, "meta", data, metadata=_declared(data)), 201, None),
        (stage_s3(bucket, "tags-win", data, tags=_declared(data), metadata=_declared(other)), 201, None),
        (stage_s3(bucket, "upper", data, tags={k: v.upper() for k, v in _declared(data).items()}), 201, None),
        (stage_s3(bucket, "missing", data, tags={"hca-dss-sha256": _declared(data)["hca-dss-sha256"]}), 422,
         "missing_checksum"),
        (stage_s3(bucket, "malformed", data, tags={**_declared(data), "hca-dss-crc32c": "xyz"}), 422,
         "invalid_checksum"),
        (stage_s3(bucket, "mismatch", data, tags=wrong), 422, "checksum_mismatch"),
        (f"s3://{bucket}/does-not-exist", 400, "source_not_found"),
    ]
    for source, status, code in cases:
        response = put_file(cloud_dss, source)
        assert response.status_code == status, (source, response.text)
        if code:
            assert response.json()["code"] == code, source
    store = cloud_dss.runtime.replicas["aws"]
    assert not any(_declared(other)["hca-dss-sha256"] in key for key in store.list("blobs/"))


def test_concurrent_puts_of_one_version_on_every_backend(cloud_dss):
    """The conditional create holds on each store: one 201, then 409 (different) or 200 (identical)."""
    from concurrent.futures import ThreadPoolExecutor

    file_uuid, version = new_uuid(), new_version()
    sources = [stage_s3(cloud_dss.s3_staging, f"race/{n}", b"body %d" % n, tags=_declared(b"body %d" % n))
               for n in range(20)]
    with ThreadPoolExecutor(20) as pool:
        statuses = sorted(pool.map(lambda s: put_file(cloud_dss, s, file_uuid, version).status_code, sources))
    assert statuses == [201] + [409] * 19
    same = stage_s3(cloud_dss.s3_staging, "race/same", b"same", tags=_declared(b"same"))
    file_uuid = new_uuid()
    with ThreadPoolExecutor(20) as pool:
        statuses = sorted(pool.map(lambda _: put_file(cloud_dss, same, file_uuid, version).status_code, range(20)))
    assert statuses == [200] * 19 + [201]
