"""The API Lambda: Chalice routes every path of the contract (and the few outside it) to the very
same ASGI application that `dss-api` serves locally. The route list is derived from `dss-api.yml`,
so there is no second routing table to keep in step.

The packaged Lambda carries `dss/` and `dss-api.yml` in `chalicelib/`; in a checkout they are
found one directory up.
"""
from __future__ import annotations

import asyncio
import os
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

_here = Path(__file__).resolve().parent
for candidate in (_here / "chalicelib", _here.parent):
    if (candidate / "dss").is_dir():
        sys.path.insert(0, str(candidate))
        break

from chalice import Chalice, Response  # noqa: E402
from dss.api import create_app, load_spec  # noqa: E402
from dss.api.system import ROOT_PATHS  # noqa: E402
from dss.daemons import LambdaRuntime  # noqa: E402
from dss.tracing import traced  # noqa: E402

app = Chalice(app_name="dss", configure_logs=False)  # its logger "dss" is our package's: keep our levels
_METHODS = ("get", "put", "post", "patch", "delete", "head")
_built: dict[str, Any] = {}
# Built once per cold start (as the daemons' are): configuration from the Lambda environment, logging and
# X-Ray set up before any client is made, clients created once.
_runtime = LambdaRuntime(os.environ)


def _application() -> Any:
    if "app" not in _built:
        _built["app"] = create_app(_runtime())
    return _built["app"]


def _scope(event: dict, request: Any, body: bytes) -> dict:
    path = event.get("path") or event["requestContext"]["path"]
    params = request.query_params
    query = [(k, v) for k in (params or {}) for v in params.getlist(k)]
    headers = {k.lower(): v for k, v in (request.headers or {}).items()}
    headers["content-length"] = str(len(body))  # API Gateway events may omit it; Connexion relies on it
    host = headers.get("host", "localhost")
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": request.method,
        "scheme": headers.get("x-forwarded-proto", "https"), "path": path, "raw_path": path.encode(),
        "root_path": "", "query_string": urllib.parse.urlencode(query).encode(),
        "headers": [(k.encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()],
        "server": (host.split(":")[0], 443), "client": (event["requestContext"].get("identity", {}).get("sourceIp"), 0),
    }


async def _call(asgi: Any, scope: dict, body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    sent = {"status": 500, "headers": [], "body": b""}
    delivered = False

    async def receive() -> dict:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            sent["status"], sent["headers"] = message["status"], message.get("headers", [])
        elif message["type"] == "http.response.body":
            sent["body"] += message.get("body", b"")

    await asgi(scope, receive, send)
    return sent["status"], sent["headers"], sent["body"]  # type: ignore[return-value]


def _dispatch() -> Response:
    request = app.current_request
    body = request.raw_body or b""
    scope = _scope(request.to_original_event(), request, body)
    application = _application()
    with traced("dss-api", method=scope["method"], url=scope["path"]):
        status, raw_headers, body = asyncio.run(_call(application, scope, body))
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in raw_headers if k.lower() != b"content-length"}
    return Response(body=body.decode("utf-8", errors="replace"), status_code=status, headers=headers)


def _view(name: str) -> Callable[[], Response]:
    def view(**_path_params: str) -> Response:
        return _dispatch()
    view.__name__ = name
    return view


def _register_routes() -> None:
    spec = load_spec()
    base = spec["servers"][0]["url"]
    for path, operations in spec["paths"].items():
        methods = [m.upper() for m in _METHODS if m in operations]
        app.route(base + path, methods=methods)(_view("api" + path.replace("/", "_").replace("{", "").replace("}", "")))
    for path in ROOT_PATHS:
        app.route(path, methods=["GET"])(_view("root" + path.replace("/", "_").replace(".", "_")))
    app.route("/static/swagger-ui/{name}", methods=["GET"])(_view("swagger_ui_assets"))


_register_routes()
