"""Bad input gets a clear problem+json error, never a 500; read-only mode; headers on every reply."""
from __future__ import annotations

import json
import random

import requests

from dss.identifiers import new_version
from tests.infra.dss_server import start_server
from tests.infra.helpers import add_file, new_uuid, put_bundle

_PROBLEM_KEYS = {"status", "code", "title", "stacktrace"}


def _assert_problem(response: requests.Response, status: int | None = None) -> dict:
    assert response.headers["Content-Type"] == "application/problem+json", response.text
    body = response.json()
    assert set(body) == _PROBLEM_KEYS and body["stacktrace"] == "" and body["status"] == response.status_code
    if status is not None:
        assert response.status_code == status, body
    return body


def test_unknown_routes_and_methods(dss):
    _assert_problem(requests.get(f"{dss.url}/v1/nothing-here"), 404)
    assert _assert_problem(requests.post(f"{dss.url}/v1/files/{new_uuid()}"))["code"] in ("method_not_allowed",
                                                                                            "not_found")


def test_malformed_bodies(dss):
    url = f"{dss.url}/v1/bundles/{new_uuid()}"
    params = {"version": new_version(), "replica": "aws"}
    for body, content_type in [("{", "application/json"), ("[]", "application/json"), ("null", "application/json"),
                               ('{"files": "x", "creator_uid": 1}', "application/json"),
                               ('{"files": [], "creator_uid": "one"}', "application/json"),
                               ('{"files": [{"uuid": 1}], "creator_uid": 1}', "application/json"),
                               ("files=1", "application/x-www-form-urlencoded"), ("\xff\xfe", "application/json")]:
        response = requests.put(url, params=params, data=body.encode("latin-1"),
                                headers={**dss.auth(), "Content-Type": content_type})
        assert 400 <= response.status_code < 500, (body, response.text)
        _assert_problem(response)


def test_fuzzed_requests_never_answer_500(dss):
    """A fixed-seed fuzzer over paths, parameters and bodies of every operation."""
    rng = random.Random(20261121)
    entry = add_file(dss, b"fuzz", "fuzz")
    bundle_uuid = new_uuid()
    put_bundle(dss, [entry], bundle_uuid)
    values = ["", "aws", "gcp", "AWS", "x" * 300, "-1", "0", "9" * 30, "true", "null", "%00", "../../etc/passwd",
              "2020-01-01T000000.000000Z", "2020-13-45T256161.000000Z", new_uuid(), bundle_uuid, entry["uuid"],
              "\u2603", "'; DROP TABLE messages; --", "{}", "[]", "*"]
    bodies = [None, {}, [], "", {"files": None}, {"files": [{}]}, {"source_url": "s3://b/k", "creator_uid": 1},
              {"source_url": "gs://b/" + "k" * 2000, "creator_uid": -1}, {"reason": 7}, {"es_query": []},
              {"files": [entry], "creator_uid": 2 ** 70}, {"add_files": [entry] * 3, "remove_files": "x"}]
    paths = ["/v1/files/{}", "/v1/bundles/{}", "/v1/bundles/all", "/v1/bundles/{}/extra", "/v1/files/"]
    for _ in range(400):
        path = rng.choice(paths).format(rng.choice(values))
        params = {name: rng.choice(values) for name in rng.sample(
            ["replica", "version", "per_page", "start_at", "prefix", "search_after", "token", "directurl",
             "directurls", "presignedurls", "content_disposition"], rng.randint(0, 4))}
        method = rng.choice(["GET", "HEAD", "PUT", "PATCH", "DELETE"])
        body = rng.choice(bodies)
        headers = dss.auth("admin@example.org") if rng.random() < 0.7 else {}
        response = requests.request(method, dss.url + path, params=params, headers=headers,
                                    data=None if body is None else json.dumps(body),
                                    allow_redirects=False)
        assert response.status_code < 500, (method, path, params, body, response.text)
        if response.status_code >= 400 and method != "HEAD":
            _assert_problem(response)


def test_every_reply_carries_the_common_headers(dss):
    response = requests.get(f"{dss.url}/v1/bundles/all", params={"replica": "aws"}, headers={"Origin": "https://a.org"})
    assert "Access-Control-Allow-Origin" not in response.headers  # DSS_CORS_ORIGINS names none by default
    assert "max-age" in response.headers["Strict-Transport-Security"]


def test_repeated_query_parameters_take_the_first_value(dss):
    response = requests.get(f"{dss.url}/v1/bundles/all?replica=aws&replica=gcp&replica=nonsense")
    assert response.status_code == 200


def test_read_only_mode(dss_env):
    server = start_server({**dss_env, "DSS_READ_ONLY_MODE": "1"})
    try:
        put = requests.put(f"{server.url}/v1/bundles/{new_uuid()}", params={"version": new_version(), "replica": "aws"},
                           headers=server.auth(), json={"files": [], "creator_uid": 1})
        assert _assert_problem(put, 503)["code"] == "read_only" and put.headers["Retry-After"] == "10"
        patch = requests.patch(f"{server.url}/v1/bundles/{new_uuid()}", params={"version": new_version(),
                                                                                 "replica": "aws"}, json={})
        assert patch.status_code == 503 and patch.headers["Retry-After"] == "600"
        head = requests.head(f"{server.url}/v1/files/{new_uuid()}", params={"replica": "aws"})
        assert head.status_code == 503 and head.headers["Retry-After"] == "10"  # every idempotent method
        delete = requests.delete(f"{server.url}/v1/subscriptions/{new_uuid()}", params={"replica": "aws"})
        assert delete.status_code == 503 and delete.headers["Retry-After"] == "10"
        assert requests.get(f"{server.url}/v1/bundles/all", params={"replica": "aws"}).status_code == 200
    finally:
        server.stop()


def test_swagger_ui_and_spec(dss):
    ui = requests.get(dss.url + "/")
    assert ui.status_code == 200 and "swagger-ui" in ui.text
    assert requests.get(dss.url + "/static/swagger-ui/swagger-ui-bundle.js").status_code == 200
    spec = requests.get(dss.url + "/v1/swagger.json").json()
    assert spec["openapi"].startswith("3.") and spec["servers"][0]["url"] == dss.url + "/v1"
    assert requests.get(dss.url + "/v1/swagger.json", headers={"Host": "dss.example.org"}).json()["servers"] == [
        {"url": "http://dss.example.org/v1"}]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            assert operation["operationId"].startswith("dss.api."), (path, method)
    assert requests.get(dss.url + "/version").json() == {"version_info": {"version": "unversioned"}}
    assert requests.get(dss.url + "/internal/health").json() == {"Healthy": True}
    assert requests.get(dss.url + "/internal/application_secrets").json()["installed"]["client_id"]
