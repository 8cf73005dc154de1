"""The Swagger UI in a real browser: headless Chromium (Debian's `chromium`, driven by `playwright-core` from
.node-tools) authorizes with a token from the local issuer, runs an authenticated `PUT /files` with
"Try it out" and sees 201; a page on an origin in DSS_CORS_ORIGINS calls the API with `fetch` (preflight
and all), and one on another origin is refused by the browser.

`make test` installs both (`make browser`); the script is tests/browser/swagger_ui.cjs.
"""
from __future__ import annotations

import http.server
import json
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator

import pytest
import requests

from dss.identifiers import new_version
from tests.infra.dss_server import REPO, free_port, start_server
from tests.infra.helpers import new_uuid, stage_local

pytestmark = pytest.mark.slow

NODE_TOOLS = REPO / ".node-tools"
SCRIPT = REPO / "tests" / "browser" / "swagger_ui.cjs"


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = b"<!DOCTYPE html><html><head><title>another origin</title></head><body></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def other_origin() -> Iterator[int]:
    """A plain page on another port: another origin for the browser."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def _browser_tools() -> str:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium) or not (NODE_TOOLS / "node_modules" / "playwright-core").is_dir():
        pytest.fail("Chromium and playwright-core are needed: run `make browser` (make test does).")
    return chromium


def test_try_it_out_with_a_pasted_token_and_cors_from_another_origin(dss_env, other_origin):
    chromium = _browser_tools()
    allowed_origin = f"http://127.0.0.1:{other_origin}"
    dss_env["DSS_CORS_ORIGINS"] = allowed_origin
    server = start_server(dss_env)
    try:
        spec = requests.get(f"{server.url}/v1/swagger.json", timeout=30).json()
        put_files = spec["paths"]["/files/{uuid}"]["put"]
        assert put_files["security"][0] == {"dcpAuth": []}  # the clients' scheme stays first
        assert {"bearerAuth": []} in put_files["security"]
        file_uuid, cors_uuid, refused_uuid, version = new_uuid(), new_uuid(), new_uuid(), new_version()
        source = stage_local(server.staging, b"put from a browser\n", "browser.txt")
        arguments = {"dss": server.url, "token": server.token(), "uuid": file_uuid, "version": version,
                     "sourceUrl": source, "otherOrigin": allowed_origin, "corsUuid": cors_uuid,
                     "refusedOrigin": f"http://localhost:{other_origin}", "refusedUuid": refused_uuid,
                     "chromium": chromium}
        result = subprocess.run(["node", str(SCRIPT), json.dumps(arguments)], capture_output=True, text=True,
                                timeout=300, env={**os.environ, "NODE_PATH": str(NODE_TOOLS / "node_modules")})
        assert result.returncode == 0, result.stdout + result.stderr
        observed = json.loads(result.stdout.strip().splitlines()[-1])
        assert observed["ui"] == "201", observed
        assert observed["allowed"] == {"status": 201, "body": {"version": version}}, observed
        assert "error" in observed["refused"], observed  # the browser refused: no CORS headers for that origin

        head = requests.head(f"{server.url}/v1/files/{file_uuid}", params={"replica": "aws"}, timeout=30)
        assert head.status_code == 200 and head.headers["X-DSS-CREATOR-UID"] == "7"
        assert requests.head(f"{server.url}/v1/files/{refused_uuid}", params={"replica": "aws"},
                             timeout=30).status_code == 404
    finally:
        server.stop()


def test_cors_headers_follow_the_configured_origins(dss_env):
    dss_env["DSS_CORS_ORIGINS"] = "https://portal.example.org"
    server = start_server(dss_env)
    try:
        url = f"{server.url}/v1/files/{new_uuid()}"
        preflight = requests.options(url, timeout=30, headers={
            "Origin": "https://portal.example.org", "Access-Control-Request-Method": "PUT",
            "Access-Control-Request-Headers": "authorization, content-type, x-evil"})
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Origin"] == "https://portal.example.org"
        assert preflight.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
        assert "PUT" in preflight.headers["Access-Control-Allow-Methods"] and preflight.headers["Vary"] == "Origin"
        head = requests.head(url, params={"replica": "aws"}, headers={"Origin": "https://portal.example.org"})
        assert head.headers["Access-Control-Allow-Origin"] == "https://portal.example.org"
        assert "X-DSS-SHA256" in head.headers["Access-Control-Expose-Headers"]
        other = requests.options(url, timeout=30, headers={"Origin": "https://elsewhere.example.org",
                                                           "Access-Control-Request-Method": "PUT"})
        assert other.status_code == 405 and "Access-Control-Allow-Origin" not in other.headers
        assert other.headers["Content-Type"].startswith("application/problem+json")
    finally:
        server.stop()
