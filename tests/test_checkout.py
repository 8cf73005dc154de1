"""Checkout against a real server: reads served from the checkout store through the contract's 301 +
Retry-After flow, bundle checkout jobs, freshness and expiry, and the real `hca` client through the 301s.

Servers here run with `DSS_CHECKOUT_WAIT=0` (the original's behaviour: a read never waits for a checkout)
where a test needs to see the 301; with the default a small checkout finishes within the request."""
from __future__ import annotations

import json
import os
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from dss.checkout.freshness import DAY
from dss.identifiers import BlobKey
from tests.infra.dss_server import start_server
from tests.infra.helpers import add_file, new_uuid, poll_until, put_bundle, put_file, stage_local
from tests.test_hca_client import hca  # noqa: F401 - the fixture, reused

HANG_GUARD = 120.0  # seconds: only against a hang, never a speed assertion


@pytest.fixture
def no_wait_env(dss_env):
    return {**dss_env, "DSS_CHECKOUT_WAIT": "0", "DSS_CHECKOUT_RETRY_AFTER": "1"}


@pytest.fixture
def dss_no_wait(no_wait_env):
    server = start_server(no_wait_env)
    yield server
    server.stop()


def _token(location: str) -> dict:
    return json.loads(urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)["token"][0])


def _blob_key(dss, file_uuid: str, replica: str = "aws") -> str:
    head = requests.head(f"{dss.url}/v1/files/{file_uuid}", params={"replica": replica}).headers
    return str(BlobKey(head["X-DSS-SHA256"], head["X-DSS-SHA1"], head["X-DSS-S3-ETAG"], head["X-DSS-CRC32C"]))


def _lose_blob(dss, file_uuid: str) -> None:
    """Delete a file's blob from both replicas once replicated: from one alone, replication or the
    reconcile pass would restore it."""
    poll_until(lambda: requests.head(f"{dss.url}/v1/files/{file_uuid}", params={"replica": "gcp"}).ok, "replication",
               timeout=HANG_GUARD)
    blob = _blob_key(dss, file_uuid)
    for replica in ("aws", "gcp"):
        dss.runtime.replicas[replica].delete(blob)


def _age(dss, key: str, days: float, replica: str = "aws") -> None:
    """Make a checked-out object look `days` old."""
    path = dss.runtime.checkout.stores[replica].path(key)
    then = time.time() - days * DAY
    os.utime(path, (then, then))


def _follow_301s(url: str, params: dict | None = None) -> list[requests.Response]:
    """GET `url`, then each 301's Location (without waiting Retry-After: a test), up to a non-301."""
    responses = [requests.get(url, params=params, allow_redirects=False)]
    deadline = time.monotonic() + HANG_GUARD
    while responses[-1].status_code == 301:
        assert time.monotonic() < deadline, "the checkout never finished"
        time.sleep(0.05)
        responses.append(requests.get(responses[-1].headers["Location"], allow_redirects=False))
    return responses


# --- GET /files --------------------------------------------------------------------------------------
def test_get_file_is_301_with_retry_after_until_checked_out_then_302_to_the_checkout_store(dss_no_wait):
    dss = dss_no_wait
    data = os.urandom(300_000)
    file_uuid = new_uuid()
    assert put_file(dss, stage_local(dss.staging, data, "cells.bin"), file_uuid).status_code == 201

    responses = _follow_301s(f"{dss.url}/v1/files/{file_uuid}", {"replica": "aws"})
    first = responses[0]
    assert first.status_code == 301 and first.headers["Retry-After"] == "1"
    assert "X-DSS-SHA256" not in first.headers
    location = first.headers["Location"]
    assert location.startswith(f"{dss.url}/v1/files/{file_uuid}?") and "replica=aws" in location
    token = _token(location)
    assert token["attempts"] == 0 and token["execution_id"] and token["start_time"] > 0
    if len(responses) > 2:
        assert _token(responses[1].headers["Location"])["attempts"] == 1

    final = responses[-1]
    assert final.status_code == 302 and final.headers["X-DSS-SIZE"] == str(len(data))
    assert "/blobstore/checkout-aws/blobs/" in final.headers["Location"]
    assert requests.get(final.headers["Location"]).content == data
    key = _blob_key(dss, file_uuid)
    assert dss.runtime.checkout.stores["aws"].get(key) == data  # the copy is the blob, under its own key

    again = requests.get(f"{dss.url}/v1/files/{file_uuid}", params={"replica": "aws"}, allow_redirects=False)
    assert again.status_code == 302  # checked out: no 301 any more
    direct = requests.get(f"{dss.url}/v1/files/{file_uuid}", params={"replica": "aws", "directurl": "true"},
                          allow_redirects=False)
    checkout_root = Path(dss.config.data_dir / "checkout" / "aws").as_uri()
    assert direct.status_code == 302 and direct.headers["Location"].startswith(checkout_root + "/blobs/")


def test_requests_follows_the_301s_by_itself(dss_no_wait):
    data = b"followed\n" * 1000
    file_uuid = new_uuid()
    put_file(dss_no_wait, stage_local(dss_no_wait.staging, data), file_uuid)
    session = requests.Session()
    session.max_redirects = 10_000  # requests does not wait Retry-After; the hca client does
    assert session.get(f"{dss_no_wait.url}/v1/files/{file_uuid}", params={"replica": "aws"}).content == data


def test_small_json_files_are_checked_out_when_registered(dss_no_wait):
    dss = dss_no_wait
    document = json.dumps({"organ": "pancreas"}).encode()
    file_uuid = new_uuid()
    assert put_file(dss, stage_local(dss.staging, document, "organ.json"), file_uuid).status_code == 201
    key = _blob_key(dss, file_uuid)
    poll_until(lambda: dss.runtime.checkout.stores["aws"].exists(key), "the eager checkout", timeout=HANG_GUARD)
    response = requests.get(f"{dss.url}/v1/files/{file_uuid}", params={"replica": "aws"}, allow_redirects=False)
    assert response.status_code == 302  # one redirect, straight to the checkout store
    assert requests.get(response.headers["Location"]).content == document


def test_a_failed_file_checkout_is_500_checkout_error(dss_no_wait):
    dss = dss_no_wait
    file_uuid = new_uuid()
    put_file(dss, stage_local(dss.staging, b"about to vanish"), file_uuid)
    _lose_blob(dss, file_uuid)  # nothing to copy: the checkout fails
    responses = _follow_301s(f"{dss.url}/v1/files/{file_uuid}", {"replica": "aws"})
    assert responses[-1].status_code == 500, responses[-1].text
    assert responses[-1].json()["code"] == "checkout_error"


# --- freshness and expiry ----------------------------------------------------------------------------
def test_an_expired_checkout_is_copied_again_and_a_stale_one_refreshed_while_served(dss):
    data = b"fresh again\n" * 500
    file_uuid = new_uuid()
    put_file(dss, stage_local(dss.staging, data), file_uuid)
    url, params = f"{dss.url}/v1/files/{file_uuid}", {"replica": "aws"}
    assert _follow_301s(url, params)[-1].status_code == 302
    key, store = _blob_key(dss, file_uuid), dss.runtime.checkout.stores["aws"]

    def age_days() -> float:
        return (time.time() - store.path(key).stat().st_mtime) / DAY

    _age(dss, key, 15)  # past DSS_BLOB_TTL_DAYS: not served, copied again
    final = _follow_301s(url, params)[-1]
    assert final.status_code == 302 and requests.get(final.headers["Location"]).content == data
    assert age_days() < 1

    _age(dss, key, 8)  # past DSS_BLOB_PUBLIC_TTL_DAYS: served at once, copied again in the background
    assert requests.get(url, params=params, allow_redirects=False).status_code == 302
    poll_until(lambda: age_days() < 1, "the background refresh", timeout=HANG_GUARD)


def test_the_sweep_deletes_expired_checkout_objects_but_keeps_small_json(dss):
    # The server's start-up pass sweeps too: once it is over (recorded), only the forced pass below sees
    # the objects aged here.
    reconciler = dss.runtime.reconciler
    poll_until(lambda: reconciler.last_started() >= dss.runtime.created, "the start-up reconcile pass",
               timeout=HANG_GUARD)
    old_bin, old_json = new_uuid(), new_uuid()
    put_file(dss, stage_local(dss.staging, b"\x00" * 100), old_bin)
    put_file(dss, stage_local(dss.staging, b'{"a": 1}', "a.json"), old_json)
    for file_uuid in (old_bin, old_json):
        assert _follow_301s(f"{dss.url}/v1/files/{file_uuid}", {"replica": "aws"})[-1].status_code == 302
        _age(dss, _blob_key(dss, file_uuid), 20)
    report = dss.runtime.reconciler.run(force=True)
    assert report["checkout_expired"] == 1
    store = dss.runtime.checkout.stores["aws"]
    assert not store.exists(_blob_key(dss, old_bin)) and store.exists(_blob_key(dss, old_json))


# --- bundle checkout jobs ----------------------------------------------------------------------------
def _checkout(dss, bundle_uuid: str, body: dict | None = None, **params) -> requests.Response:
    return requests.post(f"{dss.url}/v1/bundles/{bundle_uuid}/checkout", params={"replica": "aws", **params},
                         json=body if body is not None else {})


def _status(dss, job_id: str) -> dict:
    response = requests.get(f"{dss.url}/v1/bundles/checkout/{job_id}", params={"replica": "aws"})
    assert response.status_code == 200, response.text
    return response.json()


def _finished(dss, job_id: str) -> dict:
    return poll_until(lambda: (s := _status(dss, job_id))["status"] != "RUNNING" and s, f"job {job_id}",
                      timeout=HANG_GUARD, pause=0.2)


@pytest.mark.timeout(900)
def test_a_bundle_of_1000_files_is_checked_out_whole(dss):
    contents = {f"dir{n % 7}/file-{n:04d}.txt": f"file {n}\n".encode() * (n % 13 + 1) for n in range(1000)}
    with ThreadPoolExecutor(8) as pool:
        entries = list(pool.map(lambda item: add_file(dss, item[1], item[0]), contents.items()))
    bundle_uuid, version = new_uuid(), "2024-01-02T030405.000000Z"
    assert put_bundle(dss, entries, bundle_uuid, version).status_code == 201

    response = _checkout(dss, bundle_uuid)
    assert response.status_code == 200
    job_id = response.json()["checkout_job_id"]
    assert _status(dss, job_id)["status"] in ("RUNNING", "SUCCEEDED")  # known at once
    status = _finished(dss, job_id)
    root = dss.config.data_dir / "checkout" / "aws"
    assert status == {"status": "SUCCEEDED", "location": f"{root.as_uri()}/bundles/{bundle_uuid}.{version}"}
    store = dss.runtime.checkout.stores["aws"]
    listed = set(store.list(f"bundles/{bundle_uuid}.{version}/"))
    assert listed == {f"bundles/{bundle_uuid}.{version}/{name}" for name in contents}
    for name, data in contents.items():
        assert store.get(f"bundles/{bundle_uuid}.{version}/{name}") == data, name

    # GET /bundles?presignedurls is served from that checkout, with no 301
    page = requests.get(f"{dss.url}/v1/bundles/{bundle_uuid}", params={"replica": "aws", "presignedurls": "true",
                                                                       "per_page": 10}, allow_redirects=False)
    assert page.status_code == 206
    for entry in page.json()["bundle"]["files"]:
        assert "/blobstore/checkout-aws/bundles/" in entry["url"]
        assert requests.get(entry["url"]).content == contents[entry["name"]]


def test_bundle_urls_go_through_301s_then_200(dss_no_wait):
    dss = dss_no_wait
    entries = [add_file(dss, b"first", "a.txt"), add_file(dss, b"second", "b/c.txt")]
    bundle_uuid = new_uuid()
    put_bundle(dss, entries, bundle_uuid)
    responses = _follow_301s(f"{dss.url}/v1/bundles/{bundle_uuid}", {"replica": "aws", "directurls": "true"})
    assert responses[0].status_code == 301 and responses[0].headers["Retry-After"] == "1"
    assert responses[-1].status_code == 200
    urls = {f["name"]: f["url"] for f in responses[-1].json()["bundle"]["files"]}
    prefix = f"bundles/{bundle_uuid}.{responses[-1].json()['bundle']['version']}"
    assert urls["b/c.txt"] == f"{(dss.config.data_dir / 'checkout' / 'aws').as_uri()}/{prefix}/b/c.txt"
    assert dss.runtime.checkout.stores["aws"].get(f"{prefix}/a.txt") == b"first"


def test_names_a_file_system_treats_specially_check_out_like_any_other(dss_no_wait):
    dss = dss_no_wait
    names = [".bashrc", "~y", "%2ebashrc", "a.meta", "a", ".d/~e.meta"]
    entries = [dict(add_file(dss, name.encode()), name=name) for name in names]
    bundle_uuid = new_uuid()
    assert put_bundle(dss, entries, bundle_uuid).status_code == 201
    responses = _follow_301s(f"{dss.url}/v1/bundles/{bundle_uuid}", {"replica": "aws", "presignedurls": "true"})
    assert responses[-1].status_code == 200, responses[-1].text
    for entry in responses[-1].json()["bundle"]["files"]:
        assert requests.get(entry["url"]).content == entry["name"].encode(), entry["name"]


def test_a_failed_bundle_checkout_is_500_checkout_error(dss_no_wait):
    dss = dss_no_wait
    entry = add_file(dss, b"gone before the checkout", "gone.txt")
    bundle_uuid = new_uuid()
    put_bundle(dss, [entry], bundle_uuid)
    _lose_blob(dss, entry["uuid"])
    responses = _follow_301s(f"{dss.url}/v1/bundles/{bundle_uuid}", {"replica": "aws", "presignedurls": "true"})
    assert responses[-1].status_code == 500 and responses[-1].json()["code"] == "checkout_error"


def test_a_destination_that_is_not_writable_fails_the_job_with_a_cause(dss):
    bundle_uuid = new_uuid()
    put_bundle(dss, [add_file(dss, b"x", "x.txt")], bundle_uuid)
    blocked = dss.config.data_dir / "checkout" / "destinations" / "read-only-bucket"
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file where the bucket's directory would be")
    job_id = _checkout(dss, bundle_uuid, {"destination": "read-only-bucket", "email": "me@example.org"}).json()[
        "checkout_job_id"]
    status = _finished(dss, job_id)
    assert status["status"] == "FAILED" and "not writable" in status["cause"]

    writable = _finished(dss, _checkout(dss, bundle_uuid, {"destination": "my-bucket"}).json()["checkout_job_id"])
    assert writable["status"] == "SUCCEEDED" and "/checkout/destinations/my-bucket/bundles/" in writable["location"]


def test_checkout_request_errors(dss):
    assert _checkout(dss, new_uuid()).status_code == 404
    unknown = requests.get(f"{dss.url}/v1/bundles/checkout/{new_uuid()}", params={"replica": "aws"})
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    bundle_uuid = new_uuid()
    put_bundle(dss, [add_file(dss, b"y", "y.txt")], bundle_uuid)
    for destination in ("a/b", "..", "../../etc"):
        response = _checkout(dss, bundle_uuid, {"destination": destination})
        assert response.status_code == 400 and response.json()["code"] == "illegal_arguments", destination
    replica_dir = dss.config.data_dir / "replicas"
    (dss.config.data_dir / "checkout" / "destinations").mkdir(parents=True, exist_ok=True)
    os.symlink(replica_dir / "aws", dss.config.data_dir / "checkout" / "destinations" / "sneaky")
    assert _checkout(dss, bundle_uuid, {"destination": "sneaky"}).status_code == 400
    no_body = requests.post(f"{dss.url}/v1/bundles/{bundle_uuid}/checkout", params={"replica": "aws"})
    assert no_body.status_code == 200 and no_body.json()["checkout_job_id"]  # the body is optional
    bad_token = requests.get(f"{dss.url}/v1/bundles/{bundle_uuid}", allow_redirects=False,
                             params={"replica": "aws", "presignedurls": "true", "token": "{}"})
    assert bad_token.status_code == 400 and bad_token.json()["code"] == "illegal_token"


# --- the real client ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_hca_download_follows_the_301s(hca, tmp_path):  # noqa: F811
    server = hca.server
    server.runtime.checkout.wait = 0  # every first read is a 301, as with the original
    server.runtime.config = server.runtime.config.replace(checkout_retry_after=1)
    entries = [add_file(server, b"through the redirects\n" * 100, "a.txt"), add_file(server, b"two", "b/two.bin")]
    bundle_uuid, version = new_uuid(), "2024-05-06T070809.000000Z"
    put_bundle(server, entries, bundle_uuid, version)
    out = tmp_path / "download"
    hca("dss", "download", "--bundle-uuid", bundle_uuid, "--replica", "aws", "--download-dir", str(out))
    assert (out / f"{bundle_uuid}.{version}" / "a.txt").read_bytes() == b"through the redirects\n" * 100
    assert (out / f"{bundle_uuid}.{version}" / "b/two.bin").read_bytes() == b"two"
    checked_out = set(server.runtime.checkout.stores["aws"].list("blobs/"))
    assert {_blob_key(server, e["uuid"]) for e in entries} <= checked_out  # the download went through checkouts


# --- operators -----------------------------------------------------------------------------------------
def test_dss_ops_checkout_add_verify_remove_status(dss):
    from tests.test_ops import ops

    file_uuid, data = new_uuid(), b"operated\n" * 100
    put_file(dss, stage_local(dss.staging, data), file_uuid)
    added = ops(dss, "checkout", "add", "--file", file_uuid)
    assert added.returncode == 0 and "SUCCEEDED" in added.stdout, added.stdout + added.stderr
    key, store = _blob_key(dss, file_uuid), dss.runtime.checkout.stores["aws"]
    assert store.get(key) == data
    assert ops(dss, "checkout", "verify").returncode == 0

    store.path(key).write_bytes(b"X" * len(data))  # a copy that is not the blob
    broken = ops(dss, "checkout", "verify")
    assert broken.returncode == 1 and key in broken.stdout
    assert ops(dss, "checkout", "remove", "--file", file_uuid).returncode == 0 and not store.exists(key)

    bundle_uuid = new_uuid()
    put_bundle(dss, [add_file(dss, b"b", "b.txt")], bundle_uuid)
    assert ops(dss, "checkout", "add", "--bundle", bundle_uuid).returncode == 0
    listed = ops(dss, "checkout", "status")
    assert listed.returncode == 0 and "SUCCEEDED" in listed.stdout
    job_id = listed.stdout.split()[0]
    assert json.loads(ops(dss, "checkout", "status", "--job", job_id).stdout)["status"] == "SUCCEEDED"


def test_a_client_sent_round_for_too_long_is_told_the_checkout_failed():
    from dss.checkout.service import _token
    from dss.errors import CheckoutError

    first = _token("execution", None, 10)
    assert first["attempts"] == 0 and _token("execution", first, 10)["attempts"] == 1
    assert _token("another", first, 10)["attempts"] == 0  # a new checkout starts a new count
    with pytest.raises(CheckoutError):
        _token("execution", {**first, "start_time": time.time() - 2 * 3600}, 10)
    assert _token("execution", {**first, "start_time": time.time() - 2 * 3600}, 10**12)["attempts"] == 1
