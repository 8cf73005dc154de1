"""PUT/GET/PATCH/DELETE /bundles and GET /bundles/all against a real server."""
from __future__ import annotations

import threading
import time

import pytest
import requests

from dss.identifiers import new_version
from tests.infra.dss_server import ADMIN, start_server
from tests.infra.helpers import add_file, new_uuid, put_bundle, put_file, stage_local


def get_bundle(dss, bundle_uuid: str, **params) -> requests.Response:
    return requests.get(f"{dss.url}/v1/bundles/{bundle_uuid}", params={"replica": "aws", **params})


def delete_bundle(dss, bundle_uuid: str, reason: str = "bad data", email: str = ADMIN, **params) -> requests.Response:
    return requests.delete(f"{dss.url}/v1/bundles/{bundle_uuid}", params={"replica": "aws", **params},
                           headers=dss.auth(email), json={"reason": reason})


def test_put_then_get(dss):
    files = [add_file(dss, b'{"a": 1}', "metadata/a.json"), add_file(dss, b"", "empty.bin")]
    bundle_uuid, version = new_uuid(), new_version()
    response = put_bundle(dss, files, bundle_uuid, version)
    assert response.status_code == 201
    manifest = response.json()["manifest"]
    assert response.json()["version"] == version
    assert [f["name"] for f in manifest["files"]] == ["metadata/a.json", "empty.bin"]
    assert "s3-etag" in manifest["files"][0] and manifest["format"] == "0.0.1"

    got = get_bundle(dss, bundle_uuid)
    assert got.status_code == 200
    assert got.headers["X-OpenAPI-Paginated-Content-Key"] == "bundle.files"
    assert got.headers["X-OpenAPI-Pagination"] == "false"
    bundle = got.json()["bundle"]
    assert bundle["uuid"] == bundle_uuid and bundle["version"] == version and bundle["creator_uid"] == 1
    entry = bundle["files"][0]
    assert set(entry) == {"name", "content-type", "size", "uuid", "version", "crc32c", "s3_etag", "sha1", "sha256",
                          "indexed"}
    assert entry["indexed"] is True and bundle["files"][1]["size"] == 0


def test_idempotent_put_and_conflict(dss):
    files = [add_file(dss, b"x", "x")]
    bundle_uuid, version = new_uuid(), new_version()
    assert put_bundle(dss, files, bundle_uuid, version).status_code == 201
    again = put_bundle(dss, files, bundle_uuid, version)
    assert again.status_code == 200 and again.json()["version"] == version
    different = put_bundle(dss, files + [add_file(dss, b"y", "y")], bundle_uuid, version)
    assert different.status_code == 409 and different.json()["code"] == "bundle_already_exists"


@pytest.mark.parametrize("name, ok", [
    ("a/b.json", True), ("good..path", True), (".bashrc", True),
    ("/abs", False), ("~/home", False), ("a/./b", False), ("a/.hidden", False), ("a\\b", False),
    (".", False), ("..", False), ("./x", False),
])
def test_file_name_rules(dss, name, ok):
    entry = add_file(dss, b"n", "n")
    response = put_bundle(dss, [dict(entry, name=name)])
    assert (response.status_code == 201) == ok, response.text
    if not ok:
        assert response.json()["code"] == "illegal_arguments"


def test_duplicate_names_and_missing_files(dss):
    entry = add_file(dss, b"d", "d")
    duplicate = put_bundle(dss, [entry, dict(entry)])
    assert duplicate.status_code == 400 and duplicate.json()["code"] == "duplicate_filename"
    started = time.monotonic()
    missing = put_bundle(dss, [dict(entry, uuid=new_uuid())])
    assert missing.status_code == 400 and missing.json()["code"] == "file_missing"
    # It waited DSS_BUNDLE_FILE_WAIT=1 s (tests' setting) for the file; the upper bound is only a hang guard.
    assert 0.9 <= time.monotonic() - started < 60


def test_a_file_still_being_replicated_is_503_with_retry_after(dss_env):
    """A client that stages in S3 writes its files to aws and may put the bundle in gcp: while a file
    exists only in the other replica, the answer is "retry" (503, which hca retries), not 400."""
    server = start_server({**dss_env, "DSS_WORKERS": "0"})  # no worker: nothing replicates
    try:
        entry = add_file(server, b"only in aws", "a")
        pending = put_bundle(server, [entry], replica="gcp")
        assert pending.status_code == 503, pending.text
        assert pending.json()["code"] == "service_unavailable" and pending.headers["Retry-After"].isdigit()
        missing = put_bundle(server, [dict(entry, uuid=new_uuid())], replica="gcp")
        assert missing.status_code == 400 and missing.json()["code"] == "file_missing"
    finally:
        server.stop()
        server.runtime.close()


def test_put_waits_for_a_file_that_arrives_late(dss_env):
    # The file arrives 0.3 s after the bundle PUT starts, but a busy machine may take seconds to register
    # it: the server waits up to 20 s (the tests' usual 1 s is too short for that; 20 s stays inside the
    # API's 25 s deadline, so a file that never arrives is still a clean 400, not a 504).
    server = start_server({**dss_env, "DSS_BUNDLE_FILE_WAIT": "20"})
    try:
        file_uuid, version = new_uuid(), new_version()
        source = stage_local(server.staging, b"late")
        registered: list[requests.Response] = []
        timer = threading.Timer(0.3, lambda: registered.append(put_file(server, source, file_uuid, version)))
        timer.start()
        response = put_bundle(server, [{"uuid": file_uuid, "version": version, "name": "late", "indexed": False}])
        timer.join()
        assert [r.status_code for r in registered] == [201], [r.text for r in registered]
        assert response.status_code == 201, response.text
    finally:
        server.stop()


def test_bad_versions_are_illegal_version(dss):
    entry = add_file(dss, b"v", "v")
    assert put_bundle(dss, [entry], version="2020-01-01T00:00:00.000000Z").json()["code"] == "illegal_version"
    assert put_bundle(dss, [dict(entry, version="2020-01-01")]).json()["code"] == "illegal_version"


def test_pagination_over_more_than_a_thousand_files(dss):
    file_entry = add_file(dss, b"shared bytes", "f")
    files = [dict(file_entry, name=f"dir/file-{n:05d}.bin") for n in range(1234)]
    bundle_uuid = new_uuid()
    assert put_bundle(dss, files, bundle_uuid).status_code == 201

    first = get_bundle(dss, bundle_uuid, per_page=500)
    assert first.status_code == 206 and first.headers["X-OpenAPI-Pagination"] == "true"
    assert "rel='next'" in first.headers["Link"]
    names, response = [], first
    while True:
        names += [f["name"] for f in response.json()["bundle"]["files"]]
        if "next" not in response.links:
            assert response.status_code == 200
            break
        # clients re-append the original query parameters to the Link URL
        response = requests.get(response.links["next"]["url"], params={"replica": "aws", "per_page": 500})
    assert names == [f["name"] for f in files]


def test_per_page_limits(dss):
    bundle_uuid = new_uuid()
    put_bundle(dss, [add_file(dss, b"p", "p")], bundle_uuid)
    for per_page in (9, 501):
        response = get_bundle(dss, bundle_uuid, per_page=per_page)
        assert response.status_code == 400 and response.json()["code"] == "illegal_arguments"


def test_get_latest_and_versions(dss):
    bundle_uuid, entry = new_uuid(), add_file(dss, b"l", "l")
    versions = ["2020-01-01T000000.000000Z", "2022-01-01T000000.000000Z", "2021-01-01T000000.000000Z"]
    for version in versions:
        assert put_bundle(dss, [entry], bundle_uuid, version).status_code == 201
    assert get_bundle(dss, bundle_uuid).json()["bundle"]["version"] == versions[1]
    assert get_bundle(dss, bundle_uuid, version=versions[0]).json()["bundle"]["version"] == versions[0]
    assert get_bundle(dss, bundle_uuid, version="2023-01-01T000000.000000Z").status_code == 404
    assert get_bundle(dss, new_uuid()).status_code == 404


def test_url_flags(dss):
    bundle_uuid = new_uuid()
    put_bundle(dss, [add_file(dss, b"u", "u")], bundle_uuid)
    both = get_bundle(dss, bundle_uuid, directurls="true", presignedurls="true")
    assert both.status_code == 400 and both.json()["code"] == "only_one_urltype"
    direct = get_bundle(dss, bundle_uuid, directurls="true").json()["bundle"]["files"][0]["url"]
    assert direct.startswith("file://")
    signed = get_bundle(dss, bundle_uuid, presignedurls="true").json()["bundle"]["files"][0]["url"]
    assert requests.get(signed).content == b"u"


def test_patch_creates_a_new_version(dss):
    a, b, c = (add_file(dss, data, name) for data, name in ((b"a", "a"), (b"b", "b"), (b"c", "c")))
    bundle_uuid, version = new_uuid(), new_version()
    put_bundle(dss, [a, b], bundle_uuid, version)
    response = requests.patch(f"{dss.url}/v1/bundles/{bundle_uuid}", params={"replica": "aws", "version": version},
                              headers=dss.auth(), json={"add_files": [c], "remove_files": [a]})
    assert response.status_code == 200
    new = response.json()["version"]
    assert new > version
    patched = get_bundle(dss, bundle_uuid, version=new).json()["bundle"]
    assert [f["name"] for f in patched["files"]] == ["b", "c"] and patched["creator_uid"] == 1
    assert [f["name"] for f in get_bundle(dss, bundle_uuid, version=version).json()["bundle"]["files"]] == ["a", "b"]

    duplicate = requests.patch(f"{dss.url}/v1/bundles/{bundle_uuid}", params={"replica": "aws", "version": new},
                               headers=dss.auth(), json={"add_files": [dict(a, name="b")]})
    assert duplicate.status_code == 400 and duplicate.json()["code"] == "duplicate_filename"
    too_many = requests.patch(f"{dss.url}/v1/bundles/{bundle_uuid}", params={"replica": "aws", "version": new},
                              headers=dss.auth(), json={"add_files": [a] * 1001})
    assert too_many.status_code == 400
    missing = requests.patch(f"{dss.url}/v1/bundles/{new_uuid()}", params={"replica": "aws", "version": new},
                             headers=dss.auth(), json={})
    assert missing.status_code == 404


def test_delete_versioned_and_whole_bundle(dss):
    bundle_uuid, entry = new_uuid(), add_file(dss, b"del", "del")
    old, new = "2020-01-01T000000.000000Z", "2021-01-01T000000.000000Z"
    put_bundle(dss, [entry], bundle_uuid, old)
    put_bundle(dss, [entry], bundle_uuid, new)

    assert delete_bundle(dss, bundle_uuid, email="someone@example.org").status_code == 403
    assert delete_bundle(dss, bundle_uuid, version=new).status_code == 200
    assert delete_bundle(dss, bundle_uuid, version=new).status_code == 200  # identical repeat
    conflict = delete_bundle(dss, bundle_uuid, reason="other reason", version=new)
    assert conflict.status_code == 409 and conflict.json()["code"] == "bundle_tombstone_already_exists"
    assert get_bundle(dss, bundle_uuid, version=new).status_code == 404
    assert get_bundle(dss, bundle_uuid).json()["bundle"]["version"] == old  # latest skips the tombstoned one

    assert delete_bundle(dss, bundle_uuid).status_code == 200
    assert get_bundle(dss, bundle_uuid).status_code == 404
    assert get_bundle(dss, bundle_uuid, version=old).status_code == 404
    assert delete_bundle(dss, new_uuid()).status_code == 404
    assert delete_bundle(dss, bundle_uuid, version="2030-01-01T000000.000000Z").status_code == 404


def test_enumerate_pages_in_key_order_and_skips_tombstones(dss):
    entry = add_file(dss, b"e", "e")
    uuids = sorted(new_uuid() for _ in range(25))
    for bundle_uuid in uuids:
        assert put_bundle(dss, [entry], bundle_uuid).status_code == 201
    dead_all, dead_one = uuids[3], uuids[7]
    extra_version = new_version()
    put_bundle(dss, [entry], dead_one, extra_version)
    delete_bundle(dss, dead_all)
    delete_bundle(dss, dead_one, version=extra_version)

    seen, url, params = [], f"{dss.url}/v1/bundles/all", {"replica": "aws", "per_page": 10}
    while True:
        response = requests.get(url, params=params)
        body = response.json()
        assert response.headers["X-OpenAPI-Paginated-Content-Key"] == "bundles"
        seen += [b["uuid"] for b in body["bundles"]]
        if not body["has_more"]:
            assert response.status_code == 200 and "token" not in body
            break
        assert response.status_code == 206 and body["page_count"] == 10 and body["link"] in response.headers["Link"]
        url, params = response.links["next"]["url"], {}
    assert seen == [u for u in uuids if u != dead_all]
    prefixed = requests.get(f"{dss.url}/v1/bundles/all", params={"replica": "aws", "prefix": uuids[0][:3]}).json()
    assert {b["uuid"] for b in prefixed["bundles"]} == {u for u in uuids if u.startswith(uuids[0][:3])} - {dead_all}
    assert prefixed["search_prefix"] == f"bundles/{uuids[0][:3]}"
    bad = requests.get(f"{dss.url}/v1/bundles/all", params={"replica": "aws", "prefix": "-x"})
    assert bad.status_code == 400


def test_writes_replicate_to_the_other_replica(dss):
    entry = add_file(dss, b"replicate me", "r.bin")
    bundle_uuid = new_uuid()
    put_bundle(dss, [entry], bundle_uuid)
    dss.runtime.workers.drain()
    replicated = requests.get(f"{dss.url}/v1/bundles/{bundle_uuid}", params={"replica": "gcp"})
    assert replicated.status_code == 200
    location = requests.get(f"{dss.url}/v1/files/{entry['uuid']}", params={"replica": "gcp"},
                            allow_redirects=False).headers["Location"]
    assert requests.get(location).content == b"replicate me"
    delete_bundle(dss, bundle_uuid)
    dss.runtime.workers.drain()
    assert requests.get(f"{dss.url}/v1/bundles/{bundle_uuid}", params={"replica": "gcp"}).status_code == 404
