"""Collections through the real API (a server per test on loopback): writes, reads, the owner rule, paging,
item verification and bounds, replication to the other replica; the owner index on SQLite and on DynamoDB
(moto's server); and the real `hca` client (7.0.1) as a subprocess."""
from __future__ import annotations

import json
import os
import subprocess
import time
import uuid as uuidlib
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dss.collections.owner_index import OwnerIndex
from dss.identifiers import new_version
from dss.tables import open_table
from tests.infra.dss_server import ADMIN, REPO, USER, start_server
from tests.infra.helpers import add_file, new_uuid, put_bundle

OTHER = "other@example.org"


# --- helpers -------------------------------------------------------------------------------------
def put_collection(dss, contents: list[dict], coll_uuid: str | None = None, version: str | None = None,
                   replica: str = "aws", email: str = USER, **fields: object) -> requests.Response:
    body = {"name": "a collection", "description": "*Markdown*", "details": {"project": "p1"}, "contents": contents,
            **fields}
    params = {"replica": replica, "uuid": coll_uuid or new_uuid(), "version": version or new_version()}
    return requests.put(f"{dss.url}/v1/collections", params=params, json=body, headers=dss.auth(email))


def get_collection(dss, coll_uuid: str, email: str = USER, **params: str) -> requests.Response:
    return requests.get(f"{dss.url}/v1/collections/{coll_uuid}", params={"replica": "aws", **params},
                        headers=dss.auth(email))


def patch_collection(dss, coll_uuid: str, version: str, body: dict, email: str = USER) -> requests.Response:
    return requests.patch(f"{dss.url}/v1/collections/{coll_uuid}", params={"replica": "aws", "version": version},
                          json=body, headers=dss.auth(email))


def a_bundle(dss, files: dict[str, bytes]) -> tuple[dict, list[dict]]:
    """A bundle of `files`; returns its item and its file entries."""
    entries = [add_file(dss, data, name) for name, data in files.items()]
    bundle_uuid, version = new_uuid(), new_version()
    assert put_bundle(dss, entries, bundle_uuid, version).status_code == 201
    return {"type": "bundle", "uuid": bundle_uuid, "version": version}, entries


def item(kind: str, entry: dict, **extra: str) -> dict:
    return {"type": kind, "uuid": entry["uuid"], "version": entry["version"], **extra}


def assert_problem(response: requests.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    assert response.json()["code"] == code, response.text


# --- the API -------------------------------------------------------------------------------------
def test_put_get_patch_list_delete(dss):
    bundle, (doc,) = a_bundle(dss, {"donor.json": json.dumps({"donor": {"age": 42, "a/b": [1, 2]}}).encode()})
    items = [bundle, item("file", doc), item("file", doc, path="/donor/a~1b/1"), bundle,
             item("donor", doc, fragment="/donor/a~1b/1")]
    coll_uuid, version = new_uuid(), new_version()
    response = put_collection(dss, items, coll_uuid.upper(), version)
    assert response.status_code == 201, response.text
    assert response.json() == {"uuid": coll_uuid, "version": version}

    stored = get_collection(dss, coll_uuid).json()
    assert stored == {"name": "a collection", "description": "*Markdown*", "details": {"project": "p1"},
                      "owner": USER, "contents": [  # de-duplicated, first positions kept, `path` read as `fragment`
                          bundle, item("file", doc), item("file", doc, fragment="/donor/a~1b/1"),
                          item("donor", doc, fragment="/donor/a~1b/1")]}
    assert put_collection(dss, items, coll_uuid, version).status_code == 200  # an identical re-PUT
    assert_problem(put_collection(dss, items[:1], coll_uuid, version), 409, "collection_already_exists")

    response = patch_collection(dss, coll_uuid, version, {"remove_contents": [item("file", doc)], "name": "renamed",
                                                          "add_contents": [item("file", doc), bundle]})
    assert response.status_code == 200, response.text
    patched = response.json()["version"]
    assert patched > version and response.json()["uuid"] == coll_uuid
    latest = get_collection(dss, coll_uuid).json()
    assert latest["name"] == "renamed" and latest["details"] == {"project": "p1"}
    assert latest["contents"] == [bundle, item("file", doc, fragment="/donor/a~1b/1"),
                                  item("donor", doc, fragment="/donor/a~1b/1"), item("file", doc)]
    assert get_collection(dss, coll_uuid, version=version).json() == stored

    listed = requests.get(f"{dss.url}/v1/collections", headers=dss.auth()).json()["collections"]
    assert listed == [{"uuid": coll_uuid, "version": version}, {"uuid": coll_uuid, "version": patched}]

    delete = requests.delete(f"{dss.url}/v1/collections/{coll_uuid}", params={"replica": "aws"}, headers=dss.auth())
    assert delete.status_code == 200 and delete.json() == {}
    assert_problem(get_collection(dss, coll_uuid), 404, "not_found")
    assert_problem(get_collection(dss, coll_uuid, version=version), 404, "not_found")
    assert requests.get(f"{dss.url}/v1/collections", headers=dss.auth()).json() == {"collections": []}
    again = requests.delete(f"{dss.url}/v1/collections/{coll_uuid}", params={"replica": "aws"}, headers=dss.auth())
    assert_problem(again, 404, "not_found")
    assert_problem(put_collection(dss, [], coll_uuid), 409, "collection_deleted")
    assert_problem(patch_collection(dss, coll_uuid, version, {"name": "x"}), 404, "not_found")


def test_the_owner_rule(dss):
    coll_uuid, version = new_uuid(), new_version()
    assert put_collection(dss, [], coll_uuid, version).status_code == 201
    # The original let any user overwrite anyone's collection with a PUT; here the first writer owns the uuid.
    assert_problem(put_collection(dss, [], coll_uuid, new_version(), email=OTHER), 403, "forbidden")
    assert_problem(put_collection(dss, [], coll_uuid, version, email=OTHER), 403, "forbidden")
    assert_problem(get_collection(dss, coll_uuid, email=OTHER), 403, "forbidden")
    assert_problem(patch_collection(dss, coll_uuid, version, {"name": "mine"}, email=OTHER), 403, "forbidden")
    delete = requests.delete(f"{dss.url}/v1/collections/{coll_uuid}", params={"replica": "aws"},
                             headers=dss.auth(OTHER))
    assert_problem(delete, 403, "forbidden")
    assert requests.get(f"{dss.url}/v1/collections", headers=dss.auth(OTHER)).json() == {"collections": []}
    assert get_collection(dss, coll_uuid, email=ADMIN).json()["owner"] == USER
    # An administrator's patch keeps the owner, and the new version is listed for the owner.
    new = patch_collection(dss, coll_uuid, version, {"description": "fixed"}, email=ADMIN).json()["version"]
    assert get_collection(dss, coll_uuid).json()["owner"] == USER
    listed = requests.get(f"{dss.url}/v1/collections", headers=dss.auth()).json()["collections"]
    assert {"uuid": coll_uuid, "version": new} in listed

    no_group = {"Authorization": f"Bearer {dss.token(USER, groups=('public',))}"}
    response = requests.get(f"{dss.url}/v1/collections/{coll_uuid}", params={"replica": "aws"}, headers=no_group)
    assert_problem(response, 403, "Forbidden")
    assert_problem(requests.get(f"{dss.url}/v1/collections"), 401, "OAuthProblem")


def test_every_item_must_name_a_live_small_object_of_the_replica(dss):
    bundle, (doc, text) = a_bundle(dss, {"doc.json": b'{"a": {"b": [1]}}', "notes.txt": b"not json"})
    big = add_file(dss, b'{"x": "' + b"y" * (1024 * 1024) + b'"}', "big.json")
    missing_uuid = new_uuid()
    refused = [
        item("file", dict(doc, uuid=missing_uuid)),
        item("bundle", dict(bundle, version=new_version())),
        {"type": "collection", "uuid": missing_uuid, "version": new_version()},
        item("file", doc, fragment="/a/c"),  # names nothing
        item("file", doc, fragment="/a/b/1"),
        item("file", text, fragment="/a"),  # not JSON
        item("file", big, fragment="/x"),  # over 1 MiB
        item("biomaterial", doc),  # a custom type is a fragment, and needs one
    ]
    for bad in refused:
        assert_problem(put_collection(dss, [bundle, bad]), 422, "invalid_link")
    accepted = [item("file", big), item("bundle", bundle, fragment="/files/0/name"), item("file", doc, path="#/a/b/0")]
    assert put_collection(dss, accepted).status_code == 201

    delete = requests.delete(f"{dss.url}/v1/bundles/{bundle['uuid']}", params={"replica": "aws"},
                             json={"reason": "test"}, headers=dss.auth(ADMIN))
    assert delete.status_code == 200, delete.text
    assert_problem(put_collection(dss, [bundle]), 422, "invalid_link")


def test_inputs_are_bounded(dss):
    entry = add_file(dss, b"x", "x.bin")
    many = [{"type": "file", "uuid": new_uuid(), "version": new_version()} for _ in range(1001)]
    cases = [
        ({"contents": many}, 400, "illegal_arguments"),
        ({"name": "n" * 1025}, 400, "illegal_arguments"),
        ({"description": "a\x00b"}, 400, "illegal_arguments"),
        ({"details": json.loads('{"a":' * 40 + "1" + "}" * 40)}, 400, "illegal_arguments"),
        ({"details": {"k": "v" * 70_000}}, 400, "illegal_arguments"),
        ({"contents": [item("file", entry, fragment="no-slash")]}, 400, "illegal_arguments"),
        ({"contents": [item("file", entry, fragment="/a", path="/b")]}, 400, "illegal_arguments"),
        ({"contents": [item("file", entry, fragment="/~2")]}, 400, "illegal_arguments"),
        ({"contents": [dict(item("file", entry), version="2020-01-01T00:00:00Z")]}, 400, "illegal_version"),
        ({"contents": [dict(item("file", entry), uuid="../etc")]}, 400, "illegal_arguments"),
        ({"description": "d" * (5 * 1024 * 1024)}, 413, "request_too_large"),
    ]
    for fields, status, code in cases:
        contents = fields.pop("contents", [])
        assert_problem(put_collection(dss, contents, **fields), status, code)
    assert_problem(put_collection(dss, [], version="2020-01-01T000000Z"), 400, "illegal_version")

    coll_uuid, version = new_uuid(), new_version()
    assert put_collection(dss, [], coll_uuid, version).status_code == 201
    assert_problem(patch_collection(dss, coll_uuid, version, {"add_contents": many}), 400, "illegal_arguments")
    assert_problem(patch_collection(dss, coll_uuid, version, {"remove_contents": many}), 400, "illegal_arguments")
    assert_problem(patch_collection(dss, coll_uuid, new_version(), {"name": "x"}), 404, "not_found")
    assert_problem(patch_collection(dss, new_uuid(), version, {"name": "x"}), 404, "not_found")
    for per_page in (9, 501):
        response = requests.get(f"{dss.url}/v1/collections", params={"per_page": per_page}, headers=dss.auth())
        assert_problem(response, 400, "illegal_arguments")


def test_listing_pages_with_links(dss):
    made = sorted((new_uuid(), new_version()) for _ in range(23))
    for coll_uuid, version in made:
        assert put_collection(dss, [], coll_uuid, version).status_code == 201
    url, params, seen, statuses = f"{dss.url}/v1/collections", {"per_page": "10"}, [], []
    while url:
        response = requests.get(url, params=params, headers=dss.auth())
        statuses.append(response.status_code)
        assert response.headers["X-OpenAPI-Paginated-Content-Key"] == "collections"
        assert response.headers["X-OpenAPI-Pagination"] == ("true" if response.status_code == 206 else "false")
        seen += [(c["uuid"], c["version"]) for c in response.json()["collections"]]
        url, params = response.links.get("next", {}).get("url"), {}
    assert statuses == [206, 206, 200]
    assert seen == made


def test_collections_replicate_after_what_they_name(dss):
    bundle, (entry,) = a_bundle(dss, {"a.json": b'{"k": 1}'})
    loose = add_file(dss, b"loose file", "loose.bin")
    inner_uuid, inner_version = new_uuid(), new_version()
    assert put_collection(dss, [bundle], inner_uuid, inner_version).status_code == 201
    outer_uuid, outer_version = new_uuid(), new_version()
    contents = [{"type": "collection", "uuid": inner_uuid, "version": inner_version}, item("file", loose),
                item("file", entry, fragment="/k")]
    assert put_collection(dss, contents, outer_uuid, outer_version).status_code == 201
    outer = _wait_in_gcp(dss, outer_uuid)
    assert outer["contents"] == contents
    gcp = dss.runtime.replicas["gcp"]
    for key in (f"bundles/{bundle['uuid']}.{bundle['version']}", f"files/{loose['uuid']}.{loose['version']}",
                f"collections/{inner_uuid}.{inner_version}", f"files/{entry['uuid']}.{entry['version']}"):
        assert gcp.exists(key), key
    # Verified in the other replica, so writes there may name it now.
    named = [{"type": "collection", "uuid": outer_uuid, "version": outer_version}, *contents]
    assert put_collection(dss, named, replica="gcp").status_code == 201

    delete = requests.delete(f"{dss.url}/v1/collections/{outer_uuid}", params={"replica": "aws"}, headers=dss.auth())
    assert delete.status_code == 200
    deadline = time.monotonic() + 60
    while gcp.exists(f"collections/{outer_uuid}.dead") is False:
        assert time.monotonic() < deadline, "the tombstone was not replicated"
        time.sleep(0.1)


def _wait_in_gcp(dss, coll_uuid: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        response = requests.get(f"{dss.url}/v1/collections/{coll_uuid}", params={"replica": "gcp"},
                                headers=dss.auth())
        if response.status_code == 200:
            return response.json()
        assert response.status_code == 404 and time.monotonic() < deadline, response.text
        time.sleep(0.1)


# --- the owner index on both table backends -----------------------------------------------------
@pytest.fixture(params=["sqlite", "dynamodb"])
def owner_index(request, tmp_path):
    if request.param == "dynamodb":
        request.getfixturevalue("aws_env")  # boto3 → moto's server, as in tests/test_tables.py
        table = open_table("dynamodb://us-east-1", f"dss-test-collections-{uuidlib.uuid4().hex[:8]}",
                           create_if_missing=True)
    else:
        table = open_table(f"sqlite://{tmp_path / 'tables.sqlite3'}", "dss-test-collections")
    yield OwnerIndex(table)
    table.close()


def test_owner_index_pages_in_key_order_and_forgets_deleted_uuids(owner_index):
    versions = [f"2026-01-0{d}T000000.000000Z" for d in range(1, 4)]
    uuids = sorted(new_uuid() for _ in range(7))
    for coll_uuid in reversed(uuids):
        for version in versions:
            owner_index.add(USER, coll_uuid, version)
    owner_index.add(OTHER, uuids[0], versions[0])
    everything = [{"uuid": u, "version": v} for u in uuids for v in versions]
    pages, start, more = [], 0, True
    while more:
        page, more = owner_index.page(USER, start, 10)
        pages.append(page)
        start += 10
    assert [len(p) for p in pages] == [10, 10, 1]
    assert [i for p in pages for i in p] == everything
    assert owner_index.page(USER, 20, 10) == (everything[20:], False)
    assert owner_index.page(USER, 21, 10) == ([], False)
    owner_index.remove(USER, uuids[3])
    assert owner_index.page(USER, 0, 100)[0] == [i for i in everything if i["uuid"] != uuids[3]]
    assert owner_index.page(OTHER, 0, 10) == ([{"uuid": uuids[0], "version": versions[0]}], False)


# --- the real hca client -------------------------------------------------------------------------
SA_EMAIL = "collector@dss-test.iam.gserviceaccount.com"


@pytest.fixture
def hca(tmp_path, dss_env):
    """A server and a function running `hca` (or its Python API) against it as a trusted service account."""
    binary = os.environ.get("DSS_HCA_BIN") or str(REPO / ".venv-hca" / "bin" / "hca")
    if not Path(binary).exists():
        pytest.fail(f"The hca client is not installed at {binary}: run `make hca-client` (make test does).")
    server = start_server(dss_env)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account = {"type": "service_account", "client_email": SA_EMAIL, "client_id": "1", "private_key_id": "k1",
               "private_key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()).decode()}
    (tmp_path / "sa.json").write_text(json.dumps(account))
    server.runtime.keys.trust_service_account(account)
    swagger = f"{server.url}/v1/swagger.json"
    (tmp_path / "config" / "hca").mkdir(parents=True)
    (tmp_path / "config" / "hca" / "config.json").write_text(json.dumps({
        "DSSClient": {"swagger_url": swagger}, "AuthClient": {"swagger_url": swagger},
        "application_secrets": {"installed": {"client_id": "local"}}}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DSS_")},
           "XDG_CONFIG_HOME": str(tmp_path / "config"), "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "sa.json"),
           "OAUTHLIB_INSECURE_TRANSPORT": "1"}

    def run(*args: str, check: bool = True, python: str | None = None) -> subprocess.CompletedProcess:
        command = [str(Path(binary).parent / "python"), "-c", python] if python else [binary, *args]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        if check:
            assert result.returncode == 0, f"{command} failed:\n{result.stdout}\n{result.stderr}"
        return result

    run.server = server  # type: ignore[attr-defined]
    yield run
    server.stop()


@pytest.mark.slow
def test_the_hca_client(hca, tmp_path):
    server = hca.server
    b1, _ = a_bundle(server, {"a.json": b'{"organ": "heart"}', "data/r1.fastq": b"ACGT" * 100})
    b2, (b2_file,) = a_bundle(server, {"b.txt": b"second bundle\n"})
    loose = add_file(server, b'{"donor": {"age": 7}}', "loose.json")

    def put(contents: list[dict]) -> dict:
        coll_uuid, version = new_uuid(), new_version()
        out = hca("dss", "put-collection", "--replica", "aws", "--uuid", coll_uuid, "--version", version,
                  "--name", "c", "--description", "d", "--details", '{"n": 1}',
                  "--contents", *[json.dumps(c) for c in contents]).stdout
        assert json.loads(out) == {"uuid": coll_uuid, "version": version}
        return {"type": "collection", "uuid": coll_uuid, "version": version}

    inner = put([b2])
    outer = put([b1, inner])
    shown = json.loads(hca("dss", "get-collection", "--uuid", outer["uuid"], "--replica", "aws").stdout)
    assert shown["contents"] == [b1, inner] and shown["owner"] == SA_EMAIL

    # download-collection of bundles and a nested collection holding another bundle.
    hca("dss", "download-collection", "--uuid", outer["uuid"], "--replica", "aws", "--download-dir", "bundles")
    assert (tmp_path / "bundles" / f"{b1['uuid']}.{b1['version']}" / "data" / "r1.fastq").read_bytes() == b"ACGT" * 100
    assert (tmp_path / "bundles" / f"{b2['uuid']}.{b2['version']}" / "b.txt").read_bytes() == b"second bundle\n"

    # patch-collection: text fields from the CLI; add_contents through the client's Python API (its CLI cannot
    # pass an optional array argument).
    patched = json.loads(hca("dss", "patch-collection", "--uuid", outer["uuid"], "--replica", "aws", "--version",
                             outer["version"], "--name", "renamed").stdout)
    assert patched["uuid"] == outer["uuid"] and patched["version"] > outer["version"]
    added_items = [item("file", b2_file), item("file", loose, fragment="/donor/age")]
    script = ("import json; from hca.dss import DSSClient; c = DSSClient(); "
              f"print(json.dumps(c.patch_collection(uuid={outer['uuid']!r}, replica='aws', "
              f"version={patched['version']!r}, add_contents={json.dumps(added_items)})))")
    added = json.loads(hca(python=script).stdout)
    with_files = get_collection(server, outer["uuid"], email=SA_EMAIL).json()
    assert with_files["name"] == "renamed" and with_files["contents"] == [b1, inner, *added_items]

    # hca 7.0.1 downloads only bundles: it counts each `file` item (a fragment too) as a failure and stops before
    # downloading anything. The server serves every item as stored; this is the client's own limit.
    result = hca("dss", "download-collection", "--uuid", outer["uuid"], "--replica", "aws", "--download-dir", "all",
                 check=False)
    assert result.returncode != 0 and "2 download failure(s)" in result.stderr, result.stderr

    for _ in range(10):  # the same owner through the API (a local token with the account's e-mail)
        assert put_collection(server, [b2], email=SA_EMAIL).status_code == 201
    listed = json.loads(hca("dss", "get-collections", "--per-page", "10").stdout)["collections"]
    assert len(listed) == 2 + 2 + 10  # the client followed the Link; both PATCHed versions are listed
    assert {"uuid": outer["uuid"], "version": added["version"]} in listed

    hca("dss", "delete-collection", "--uuid", outer["uuid"], "--replica", "aws")
    assert_problem(get_collection(server, outer["uuid"], email=SA_EMAIL), 404, "not_found")
