"""The Lambda entry point serves the same application: the same requests through Chalice's local test
client and through the local HTTP server get the same answers."""
from __future__ import annotations

import importlib.util
import json
import re

import pytest
from chalice.test import Client

from tests.infra.dss_server import REPO, base_env, start_server

FILE_UUID = "0a1b2c3d-0000-4000-8000-000000000001"
BUNDLE_UUID = "0a1b2c3d-0000-4000-8000-0000000000b1"
VERSION = "2026-01-02T030405.060708Z"


@pytest.fixture
def chalice_app(tmp_path, staging, monkeypatch):
    for name, value in base_env(tmp_path / "lambda-data", staging).items():
        monkeypatch.setenv(name, value)
    spec = importlib.util.spec_from_file_location("dss_lambda_app", REPO / "chalice" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _normalise(text: str) -> str:
    """Host-dependent parts (the base URL, signed-URL query strings, timestamps) are not compared."""
    text = re.sub(r"https?://[^/\"']+", "BASE", text)
    text = re.sub(r"expires=\d+&signature=[\w-]+", "SIGNED", text)
    return re.sub(r"\d{4}-\d{2}-\d{2}T\d{6}\.\d{6}Z", "TS", text)


def test_same_answers_through_chalice_and_the_local_server(chalice_app, tmp_path, staging):
    source = staging / "parity.json"
    source.write_text('{"parity": true}')
    server = start_server(base_env(tmp_path / "server-data", staging))
    lambda_runtime = chalice_app._runtime()  # the Lambda's runtime, built from the environment
    lambda_runtime.workflows.run()  # Step Functions' part in the cloud (the checkout GET /files waits for)

    def requests_for(token: str) -> list[tuple[str, str, dict, bytes | None]]:
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        file_body = json.dumps({"source_url": source.as_uri(), "creator_uid": 3}).encode()
        bundle_body = json.dumps({"creator_uid": 3, "files": [
            {"uuid": FILE_UUID, "version": VERSION, "name": "parity.json", "indexed": True}]}).encode()
        return [
            ("PUT", f"/v1/files/{FILE_UUID}?version={VERSION}", auth, file_body),
            ("PUT", f"/v1/files/{FILE_UUID}?version={VERSION}", auth, file_body),
            ("HEAD", f"/v1/files/{FILE_UUID}?replica=aws", {}, None),
            ("GET", f"/v1/files/{FILE_UUID}?replica=aws", {}, None),
            ("PUT", f"/v1/bundles/{BUNDLE_UUID}?version={VERSION}&replica=aws", auth, bundle_body),
            ("GET", f"/v1/bundles/{BUNDLE_UUID}?replica=aws&replica=aws", {}, None),
            ("GET", "/v1/bundles/all?replica=aws", {}, None),
            ("GET", "/v1/bundles/not-a-uuid?replica=aws", {}, None),
            ("GET", f"/v1/files/{FILE_UUID}", {}, None),
            ("PUT", f"/v1/files/{FILE_UUID}?version={VERSION}", {"Content-Type": "application/json"}, file_body),
            ("DELETE", f"/v1/bundles/{BUNDLE_UUID}?replica=aws", auth, b'{"reason": "parity"}'),
            ("GET", "/version", {}, None),
        ]

    import requests

    try:
        with Client(chalice_app.app) as client:
            lambda_token = server_token = None
            lambda_token = _token(lambda_runtime)
            server_token = _token(server.runtime)
            for (method, path, headers, body), (_, _, server_headers, _) in zip(requests_for(lambda_token),
                                                                                requests_for(server_token)):
                via_lambda = client.http.request(method, path, headers=headers, body=body or b"")
                via_http = requests.request(method, server.url + path, headers=server_headers, data=body,
                                            allow_redirects=False)
                assert via_lambda.status_code == via_http.status_code, (method, path, via_lambda.body)
                if method != "HEAD":
                    assert _normalise(via_lambda.body.decode()) == _normalise(via_http.text), (method, path)
                for header in ("X-DSS-SHA256", "X-OpenAPI-Paginated-Content-Key", "Content-Type"):
                    assert via_lambda.headers.get(header.lower()) == via_http.headers.get(header), (path, header)
    finally:
        lambda_runtime.workflows.stop()
        server.stop()


def _token(runtime) -> str:
    from dss.auth import mint_token

    return mint_token(runtime.config, runtime.keys, "admin@example.org", ["hca"])
