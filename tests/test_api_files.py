"""PUT/HEAD/GET /files against a real server with local staging."""
from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor

import requests

from dss.checksums import checksum_stream
from dss.identifiers import new_version
from tests.infra.helpers import new_uuid, put_file, stage_local


def test_put_head_get_round_trip(dss):
    data = b"hello, cells\n" * 1000
    file_uuid, version = new_uuid(), new_version()
    response = put_file(dss, stage_local(dss.staging, data, "hello.txt"), file_uuid, version, creator_uid=7)
    assert response.status_code == 201 and response.json() == {"version": version}

    head = requests.head(f"{dss.url}/v1/files/{file_uuid}", params={"replica": "aws"})
    sums = checksum_stream(io.BytesIO(data), len(data))
    assert head.status_code == 200
    assert head.headers["X-DSS-SHA256"] == sums.sha256 == hashlib.sha256(data).hexdigest()
    assert head.headers["X-DSS-S3-ETAG"] == hashlib.md5(data).hexdigest()
    assert head.headers["X-DSS-SIZE"] == str(len(data))
    assert head.headers["X-DSS-CONTENT-TYPE"] == "text/plain"
    assert head.headers["X-DSS-CREATOR-UID"] == "7"
    assert head.headers["X-DSS-VERSION"] == version

    get = requests.get(f"{dss.url}/v1/files/{file_uuid}", params={"replica": "aws"}, allow_redirects=False)
    assert get.status_code == 302 and get.headers["X-DSS-SHA1"] == sums.sha1
    assert requests.get(get.headers["Location"]).content == data
    ranged = requests.get(get.headers["Location"], headers={"Range": "bytes=5-"})
    assert ranged.status_code == 206 and ranged.content == data[5:]


def test_identical_reput_is_200_and_different_is_409(dss):
    file_uuid, version = new_uuid(), new_version()
    source = stage_local(dss.staging, b"abc")
    assert put_file(dss, source, file_uuid, version).status_code == 201
    assert put_file(dss, source, file_uuid, version).status_code == 200
    conflict = put_file(dss, stage_local(dss.staging, b"abd"), file_uuid, version)
    assert conflict.status_code == 409 and conflict.json()["code"] == "file_already_exists"
    conflict = put_file(dss, source, file_uuid, version, creator_uid=2)
    assert conflict.status_code == 409


def test_latest_version_and_explicit_versions(dss):
    file_uuid = new_uuid()
    versions = ["2020-01-01T000000.000000Z", "2021-06-01T120000.500000Z", "2019-12-31T235959.999999Z"]
    for n, version in enumerate(versions):
        assert put_file(dss, stage_local(dss.staging, b"v%d" % n), file_uuid, version).status_code == 201
    head = requests.head(f"{dss.url}/v1/files/{file_uuid}", params={"replica": "aws"})
    assert head.headers["X-DSS-VERSION"] == max(versions)
    old = requests.head(f"{dss.url}/v1/files/{file_uuid}", params={"replica": "aws", "version": versions[2]})
    assert old.headers["X-DSS-VERSION"] == versions[2]
    missing = requests.head(f"{dss.url}/v1/files/{file_uuid}",
                            params={"replica": "aws", "version": "2018-01-01T000000.000000Z"})
    assert missing.status_code == 404
    malformed = requests.head(f"{dss.url}/v1/files/{file_uuid}", params={"replica": "aws", "version": "nope"})
    assert malformed.status_code == 400


def test_uppercase_uuid_is_lowercased_on_put_and_on_reads(dss):
    file_uuid, version = new_uuid(), new_version()
    assert put_file(dss, stage_local(dss.staging, b"x"), file_uuid.upper(), version).status_code == 201
    assert requests.head(f"{dss.url}/v1/files/{file_uuid}", params={"replica": "aws"}).status_code == 200
    assert requests.head(f"{dss.url}/v1/files/{file_uuid.upper()}", params={"replica": "aws"}).status_code == 200


def test_directurl_gives_native_url(dss):
    file_uuid = new_uuid()
    put_file(dss, stage_local(dss.staging, b"native"), file_uuid)
    response = requests.get(f"{dss.url}/v1/files/{file_uuid}", params={"replica": "aws", "directurl": "true"},
                            allow_redirects=False)
    assert response.status_code == 302
    assert response.headers["Location"].startswith("file://") and "/blobs/" in response.headers["Location"]


def test_content_disposition_is_passed_to_the_signed_url(dss):
    file_uuid = new_uuid()
    put_file(dss, stage_local(dss.staging, b"named"), file_uuid)
    response = requests.get(f"{dss.url}/v1/files/{file_uuid}",
                            params={"replica": "aws", "content_disposition": 'attachment; filename="a.bin"'})
    assert response.status_code == 200 and response.content == b"named"
    assert response.headers["Content-Disposition"] == 'attachment; filename="a.bin"'


def test_tampered_or_expired_signed_urls_are_refused(dss):
    file_uuid = new_uuid()
    put_file(dss, stage_local(dss.staging, b"secret-ish"), file_uuid)
    location = requests.get(f"{dss.url}/v1/files/{file_uuid}", params={"replica": "aws"},
                            allow_redirects=False).headers["Location"]
    assert requests.get(location.replace("signature=", "signature=x")).status_code == 403
    assert requests.get(location.replace("expires=", "expires=1")).status_code == 403


def test_bad_tokens_on_get_are_400(dss):
    file_uuid = new_uuid()
    put_file(dss, stage_local(dss.staging, b"t"), file_uuid)
    for token in ("not json", json.dumps({"execution_id": "x"})):
        response = requests.get(f"{dss.url}/v1/files/{file_uuid}", params={"replica": "aws", "token": token},
                                allow_redirects=False)
        assert response.status_code == 400 and response.json()["code"] == "illegal_token"


def test_put_errors(dss):
    file_uuid = new_uuid()
    cases = [
        ({"version": "2020-01-01T00:00:00Z"}, {"source_url": stage_local(dss.staging, b"a"), "creator_uid": 1}, 400,
         "illegal_version"),
        ({"version": new_version()}, {"source_url": "wasb://bucket/key", "creator_uid": 1}, 400,
         "unknown_source_schema"),
        ({"version": new_version()}, {"source_url": "s3://bucket-only", "creator_uid": 1}, 400, "illegal_arguments"),
        ({"version": new_version()}, {"source_url": "http://example.org/x", "creator_uid": 1}, 400,
         "illegal_arguments"),
        ({"version": new_version()}, {"source_url": "file:///etc/passwd", "creator_uid": 1}, 400, "illegal_source_url"),
        ({"version": new_version()}, {"source_url": (dss.staging / "missing").as_uri(), "creator_uid": 1}, 400,
         "source_not_found"),
        ({"version": new_version()}, {"creator_uid": 1}, 400, "illegal_arguments"),
        ({}, {"source_url": stage_local(dss.staging, b"a"), "creator_uid": 1}, 400, "illegal_arguments"),
    ]
    for params, body, status, code in cases:
        response = requests.put(f"{dss.url}/v1/files/{file_uuid}", params=params, json=body, headers=dss.auth())
        assert (response.status_code, response.json()["code"]) == (status, code), (params, body, response.text)
        assert response.headers["Content-Type"] == "application/problem+json"


def test_staging_root_escape_through_symlink_is_refused(dss, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    (dss.staging / "link.txt").symlink_to(outside)
    response = put_file(dss, (dss.staging / "link.txt").as_uri())
    assert response.status_code == 400 and response.json()["code"] == "illegal_source_url"


def test_fifty_concurrent_puts_of_one_version(dss):
    """Different content: exactly one 201, the rest 409. Identical content: one 201, then 200s."""
    file_uuid, version = new_uuid(), new_version()
    sources = [stage_local(dss.staging, b"content %d" % n) for n in range(50)]
    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(lambda s: put_file(dss, s, file_uuid, version).status_code, sources))
    assert sorted(statuses) == [201] + [409] * 49

    file_uuid, version = new_uuid(), new_version()
    same = [stage_local(dss.staging, b"same content") for _ in range(50)]
    with ThreadPoolExecutor(50) as pool:
        statuses = list(pool.map(lambda s: put_file(dss, s, file_uuid, version).status_code, same))
    assert sorted(statuses) == [200] * 49 + [201]
