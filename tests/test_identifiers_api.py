"""Identifiers and names through the real API: what used to be a 500, a 404 or a poisoned bundle is a 400
with a stable code, and a uuid reads back in whatever case it was written."""
from __future__ import annotations

import json

import pytest
import requests

from dss.identifiers import MAX_FILE_NAME_BYTES, BundleFQID, Replica, new_version
from tests.infra.helpers import add_file, new_uuid, put_bundle, put_file, stage_local

VERSION = "2020-01-01T000000.000000Z"
MALFORMED_VERSIONS = ["nope", "", "2020-01-01T00:00:00Z", "2020-01-01T00:00:00.000000Z", "2020-02-30T000000.000000Z",
                      VERSION + "\n"]


def _raw_put(dss, path: str, params: dict, body: str) -> requests.Response:
    """A PUT whose JSON text is sent as written (lone surrogates escaped as \\udXXX, as a client may)."""
    return requests.put(f"{dss.url}{path}", params=params, data=body.encode(),
                        headers={**dss.auth(), "Content-Type": "application/json"})


def test_an_upper_case_uuid_reads_back_in_upper_case(dss):
    file_uuid, bundle_uuid = new_uuid(), new_uuid()
    assert put_file(dss, stage_local(dss.staging, b"case"), file_uuid.upper(), VERSION).status_code == 201
    for uuid in (file_uuid, file_uuid.upper()):
        head = requests.head(f"{dss.url}/v1/files/{uuid}", params={"replica": "aws"})
        assert head.status_code == 200 and head.headers["X-DSS-VERSION"] == VERSION
        get = requests.get(f"{dss.url}/v1/files/{uuid}", params={"replica": "aws", "version": VERSION},
                           allow_redirects=False)
        assert get.status_code == 302
    entry = {"uuid": file_uuid.upper(), "version": VERSION, "name": "f", "indexed": False}
    assert put_bundle(dss, [entry], bundle_uuid.upper(), VERSION).status_code == 201
    got = requests.get(f"{dss.url}/v1/bundles/{bundle_uuid.upper()}", params={"replica": "aws"})
    assert got.status_code == 200 and got.json()["bundle"]["files"][0]["uuid"] == file_uuid
    deleted = requests.delete(f"{dss.url}/v1/bundles/{bundle_uuid.upper()}", params={"replica": "aws"},
                              json={"reason": "case"}, headers=dss.auth("admin@example.org"))
    assert deleted.status_code == 200
    assert requests.get(f"{dss.url}/v1/bundles/{bundle_uuid}", params={"replica": "aws"}).status_code == 404


@pytest.mark.parametrize("bad", ["{u}-zz", "{u}.2020-01-01T000000.000000Z", "..{u}", "~{u}", "{u}%00",
                                 "%ED%A0%80{u}", "{u}%0A", "%C2%85{u}"])  # control characters: no route matches
def test_a_uuid_that_is_not_whole_is_400_on_every_operation(dss, bad):
    uuid = bad.format(u=new_uuid())
    put = requests.put(f"{dss.url}/v1/files/{uuid}", params={"version": new_version()}, headers=dss.auth(),
                       json={"source_url": stage_local(dss.staging, b"u"), "creator_uid": 1})
    assert (put.status_code, put.json()["code"]) == (400, "illegal_arguments"), put.text
    assert requests.head(f"{dss.url}/v1/files/{uuid}", params={"replica": "aws"}).status_code == 400
    for method in ("GET", "DELETE"):
        response = requests.request(method, f"{dss.url}/v1/bundles/{uuid}", params={"replica": "aws"},
                                    json={"reason": "x"}, headers=dss.auth("admin@example.org"))
        assert (response.status_code, response.json()["code"]) == (400, "illegal_arguments"), response.text
    bundle = put_bundle(dss, [], uuid)
    assert bundle.status_code == 400
    assert not list(dss.runtime.replicas[Replica.aws].list("files/")), "nothing may be stored under such a key"


@pytest.mark.parametrize("source_url, code", [
    ("file:///staging/a\x00b", "illegal_arguments"), ("s3:///key", "illegal_arguments"),
    ("gs:///key", "illegal_arguments"), ("s3://bucket/" + "k" * 1025, "illegal_arguments"),
    ("s3://bucket/key\n", "illegal_arguments"), ("s3://bucket-only", "illegal_arguments"),
    ("gs://T-x/.", "illegal_arguments"), ("gs://bucket/..", "illegal_arguments"),  # names GCS cannot hold
])
def test_a_source_url_that_no_store_could_open_is_400(dss, source_url, code):
    response = put_file(dss, source_url)
    assert (response.status_code, response.json()["code"]) == (400, code), response.text


@pytest.mark.parametrize("json_text", [
    '{"source_url": "file:///staging/x\\ud800", "creator_uid": 1}',
    '{"source_url": "s3://bucket/\\udc80", "creator_uid": 1}',
])
def test_a_lone_surrogate_in_a_source_url_is_400(dss, json_text):
    response = _raw_put(dss, f"/v1/files/{new_uuid()}", {"version": new_version()}, json_text)
    assert (response.status_code, response.json()["code"]) == (400, "illegal_arguments"), response.text


@pytest.mark.parametrize("creator_uid", ["-1", str(2**63), "9" * 5000])
def test_creator_uid_is_an_int64_that_is_not_negative(dss, creator_uid):
    source = stage_local(dss.staging, b"uid")
    for path, params, body in [
        (f"/v1/files/{new_uuid()}", {"version": new_version()}, f'{{"source_url": "{source}", "creator_uid": '),
        (f"/v1/bundles/{new_uuid()}", {"version": new_version(), "replica": "aws"}, '{"files": [], "creator_uid": '),
    ]:
        response = _raw_put(dss, path, params, body + creator_uid + "}")
        assert (response.status_code, response.json()["code"]) == (400, "illegal_arguments"), response.text


@pytest.mark.parametrize("name", [
    "a\x00b", "a\x01b", "bell\x07", "nel\x85", "line\u2028sep", "a\n", "a//b", "dir/", "a/b/", "．．／x", "‥/x", "x/．",
    "a／．hidden", "a＼b", "x" * (MAX_FILE_NAME_BYTES + 1), "é" * 500, "s/" + "x" * 256,
])
def test_bundle_file_names_no_store_or_client_could_hold_are_400(dss, name):
    entry = add_file(dss, b"n", "n")
    response = put_bundle(dss, [dict(entry, name=name)])
    assert (response.status_code, response.json()["code"]) == (400, "illegal_file_name"), response.text


def test_a_lone_surrogate_in_a_file_name_is_400_and_nothing_is_stored(dss):
    entry = add_file(dss, b"s", "s")
    bundle_uuid = new_uuid()
    files = json.dumps([dict(entry, name="NAME")]).replace("NAME", "bad\\ud800name")
    response = _raw_put(dss, f"/v1/bundles/{bundle_uuid}", {"version": new_version(), "replica": "aws"},
                        f'{{"files": {files}, "creator_uid": 1}}')
    # Refused before parsing, as in any JSON body (dss.jsonlimits); validate_file_name would refuse it too.
    assert (response.status_code, response.json()["code"]) == (400, "illegal_arguments"), response.text
    assert "lone surrogate" in response.json()["title"]
    assert not list(dss.runtime.replicas[Replica.aws].list(f"bundles/{bundle_uuid}"))


def test_the_longest_names_are_accepted(dss):
    entry = add_file(dss, b"long", "long")
    longest = "/".join(["d" * 255, "e" * 255, "f" * 255]) + "/" + "g" * (MAX_FILE_NAME_BYTES - 3 * 256)
    response = put_bundle(dss, [dict(entry, name=longest), dict(entry, name="données/été.json")])
    assert response.status_code == 201, response.text


def test_patch_add_files_are_validated_but_names_already_stored_are_not_re_judged(dss):
    entry = add_file(dss, b"p", "p")
    bundle_uuid, version = new_uuid(), new_version()
    # A manifest written under the old rules, with a name that would be refused today.
    legacy = {"format": "0.0.1", "version": version, "creator_uid": 1,
              "files": [{**entry, "name": "old//name", "content-type": "application/octet-stream", "size": 1,
                         "crc32c": "0" * 8, "s3-etag": "0" * 32, "sha1": "0" * 40, "sha256": "0" * 64}]}
    dss.runtime.replicas[Replica.aws].put_json(str(BundleFQID(bundle_uuid, version)), legacy)

    def patch(body: dict) -> requests.Response:
        return requests.patch(f"{dss.url}/v1/bundles/{bundle_uuid}", params={"replica": "aws", "version": version},
                              json=body, headers=dss.auth())

    refused = patch({"add_files": [dict(entry, name="．．／escape")]})
    assert (refused.status_code, refused.json()["code"]) == (400, "illegal_file_name"), refused.text
    accepted = patch({"add_files": [dict(entry, name="fine.txt")]})
    assert accepted.status_code == 200, accepted.text


@pytest.mark.parametrize("version", MALFORMED_VERSIONS)
def test_a_malformed_version_on_reads_is_400_illegal_version(dss, version):
    file_uuid, bundle_uuid = new_uuid(), new_uuid()
    assert put_file(dss, stage_local(dss.staging, b"r"), file_uuid, VERSION).status_code == 201
    params = {"replica": "aws", "version": version}
    head = requests.head(f"{dss.url}/v1/files/{file_uuid}", params=params)
    assert head.status_code == 400
    get = requests.get(f"{dss.url}/v1/files/{file_uuid}", params=params, allow_redirects=False)
    assert (get.status_code, get.json()["code"]) == (400, "illegal_version"), get.text
    bundle = requests.get(f"{dss.url}/v1/bundles/{bundle_uuid}", params=params)
    assert (bundle.status_code, bundle.json()["code"]) == (400, "illegal_version"), bundle.text
    delete = requests.delete(f"{dss.url}/v1/bundles/{bundle_uuid}", params=params, json={"reason": "x"},
                             headers=dss.auth("admin@example.org"))
    assert (delete.status_code, delete.json()["code"]) == (400, "illegal_version"), delete.text


def test_a_well_formed_version_that_does_not_exist_is_still_404(dss):
    file_uuid = new_uuid()
    assert put_file(dss, stage_local(dss.staging, b"w"), file_uuid, VERSION).status_code == 201
    params = {"replica": "aws", "version": "2021-01-01T000000.000000Z"}
    assert requests.head(f"{dss.url}/v1/files/{file_uuid}", params=params).status_code == 404
    assert requests.get(f"{dss.url}/v1/bundles/{new_uuid()}", params=params).status_code == 404


@pytest.mark.parametrize("reason", ["bad\\ud800reason", "nul\\u0000"])
def test_a_deletion_reason_that_could_not_be_indexed_is_400(dss, reason):
    bundle_uuid = new_uuid()
    assert put_bundle(dss, [add_file(dss, b"d", "d")], bundle_uuid).status_code == 201
    response = requests.delete(f"{dss.url}/v1/bundles/{bundle_uuid}", params={"replica": "aws"},
                               data=f'{{"reason": "{reason}"}}'.encode(),
                               headers={**dss.auth("admin@example.org"), "Content-Type": "application/json"})
    assert (response.status_code, response.json()["code"]) == (400, "illegal_arguments"), response.text
    assert requests.get(f"{dss.url}/v1/bundles/{bundle_uuid}", params={"replica": "aws"}).status_code == 200


@pytest.mark.parametrize("disposition, ok", [
    ('attachment; filename="cells.h5ad"', True), ("attachment; filename=\"é.txt\"", True),
    ("attachment; filename*=UTF-8''%E2%9C%93.txt", True),
    ("attachment\r\nX-Injected: 1", False), ("attachment\n", False), ("a\x00b", False), ("\u2713", False),
])
def test_content_disposition_is_a_header_value_the_download_can_send(dss, disposition, ok):
    file_uuid = new_uuid()
    assert put_file(dss, stage_local(dss.staging, b"cd"), file_uuid).status_code == 201
    response = requests.get(f"{dss.url}/v1/files/{file_uuid}", allow_redirects=False,
                            params={"replica": "aws", "content_disposition": disposition})
    if not ok:
        assert (response.status_code, response.json()["code"]) == (400, "illegal_arguments"), response.text
        return
    assert response.status_code == 302
    download = requests.get(response.headers["Location"])
    assert download.status_code == 200 and download.content == b"cd"
    assert download.headers["Content-Disposition"].encode("latin-1") == disposition.encode("latin-1")
