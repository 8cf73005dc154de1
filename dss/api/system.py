"""Routes outside the /v1 contract: the spec, Swagger UI, version, health, OAuth client config, and
the local store's signed-URL downloads."""
from __future__ import annotations

import copy
import html
import inspect
import json
import logging
import urllib.parse
from collections.abc import Callable
from typing import Any

import swagger_ui_bundle
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from dss.api.responses import header_value_ok
from dss.runtime import Runtime
from dss.storage.blobstore import BlobNotFound
from dss.storage.blobstore.local import LocalBlobStore

__all__ = ["system_routes", "render_spec", "ROOT_PATHS"]

logger = logging.getLogger(__name__)

# Paths served here, outside the spec; chalice/app.py routes them to the same app.
ROOT_PATHS = ("/", "/v1/swagger.json", "/version", "/internal/health", "/internal/application_secrets")

_UI = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>DSS API</title>
<link rel="stylesheet" href="/static/swagger-ui/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="/static/swagger-ui/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "%s", dom_id: "#ui", deepLinking: true});</script>
</body></html>"""


def _base(runtime: Runtime, request: Request) -> str:
    return runtime.config.api_url or f"{request.url.scheme}://{request.url.netloc}"


_MARKER = "\u0000dss-servers-url"  # a NUL never occurs in the spec, so the marker is found only where placed


def render_spec(spec: dict[str, Any], base: str) -> dict[str, Any]:
    """The contract with `servers` pointing at this deployment (the hca client uses servers[0].url), and
    its `host`: not an OpenAPI 3 field, but the hca and dbio clients fetch
    `https://{host}/internal/application_secrets` from it when their configuration has no OAuth client."""
    rendered = _with_bearer_scheme(spec)
    rendered["servers"] = [{"url": f"{base}/v1"}]
    rendered["host"] = urllib.parse.urlsplit(base).netloc
    return rendered


BEARER_SCHEME = "bearerAuth"


def _with_bearer_scheme(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with a second way to authenticate each secured operation: an HTTP bearer token, which the
    Swagger UI's "Authorize" dialog takes as pasted (e.g. from `dss-ops.py token`). The OAuth2 scheme
    stays first, as the clients read it; the server verifies the same `Authorization: Bearer` header
    whichever of the two a caller names."""
    rendered = copy.deepcopy(spec)
    schemes = rendered.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes[BEARER_SCHEME] = {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                              "description": "A token from `scripts/dss-ops.py token` or your identity provider"}
    for operations in rendered.get("paths", {}).values():
        for operation in operations.values():
            security = operation.get("security") if isinstance(operation, dict) else None
            if security and {BEARER_SCHEME: []} not in security:
                security.append({BEARER_SCHEME: []})
    return rendered


def _error(status: int, code: str, title: str) -> JSONResponse:
    return JSONResponse({"status": status, "code": code, "title": title, "stacktrace": ""}, status_code=status,
                        media_type="application/problem+json")


def _spec_renderer(spec: dict[str, Any]) -> Callable[[str], bytes]:
    """The serialised spec for a base URL, in time and memory independent of how many bases are asked for.

    Without DSS_API_URL the base comes from the request's Host header, which any client chooses: a cache
    keyed by it grew without bound (20,000 hosts, ~400 MiB). The spec is serialised once around a marker
    instead, and each request splices in its own `servers` URL."""
    marker = f"{_MARKER}/v1"
    rendered = render_spec(spec, "")
    rendered["servers"], rendered["host"] = [{"url": marker}], _MARKER
    head, _, tail = json.dumps(rendered).partition(json.dumps(marker))
    middle, _, tail = tail.partition(json.dumps(_MARKER))
    parts = head.encode(), middle.encode(), tail.encode()

    def render(base: str) -> bytes:
        host = urllib.parse.urlsplit(base).netloc
        return parts[0] + json.dumps(f"{base}/v1").encode() + parts[1] + json.dumps(host).encode() + parts[2]
    return render


def system_routes(runtime: Runtime, spec: dict[str, Any]) -> list[BaseRoute]:
    rendered = _spec_renderer(spec)

    async def swagger_json(request: Request) -> Response:
        return Response(rendered(_base(runtime, request)), media_type="application/json")

    async def ui(request: Request) -> Response:
        return HTMLResponse(_UI % html.escape("/v1/swagger.json"))

    async def version(request: Request) -> Response:
        return JSONResponse({"version_info": {"version": runtime.config.version}})

    def health(request: Request) -> Response:
        return JSONResponse({"Healthy": runtime.healthy()})

    async def application_secrets(request: Request) -> Response:
        return JSONResponse(runtime.application_secrets(_base(runtime, request)))

    def blobstore(request: Request) -> Response:
        return _serve_blob(runtime, request)

    return [
        _route("/", ui, "GET"),
        _route("/v1/swagger.json", swagger_json, "GET"),
        _route("/version", version, "GET"),
        _route("/internal/health", health, "GET"),
        _route("/internal/application_secrets", application_secrets, "GET"),
        _route("/blobstore/{name}/{key:path}", blobstore, "GET", "HEAD"),
        Mount("/static/swagger-ui", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui"),
    ]


def _route(path: str, endpoint: Callable[[Request], Any], *methods: str) -> Route:
    """A route that answers other methods with a problem+json 405 and `Allow`, as the API's own routes do
    (Starlette's own 405 here would be plain text)."""
    allowed = set(methods) | ({"HEAD"} if "GET" in methods else set())
    allow = ", ".join(sorted(allowed))

    async def handle(request: Request) -> Response:
        if request.method not in allowed:
            response = _error(405, "method_not_allowed", "Method Not Allowed")
            response.headers["Allow"] = allow
            return response
        if inspect.iscoroutinefunction(endpoint):
            return await endpoint(request)
        return await run_in_threadpool(endpoint, request)  # blocking work stays off the event loop

    return Route(path, handle, methods=_ALL_METHODS)


_ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"]


def _serve_blob(runtime: Runtime, request: Request) -> Response:
    name = request.path_params["name"]
    store = runtime.replicas.by_name(name) or runtime.checkout.stores.by_name(name)
    key = request.path_params["key"]
    params = request.query_params
    if not isinstance(store, LocalBlobStore) or not store.verify_signature(
            key, params.get("expires", ""), params.get("signature", ""), params.get("disposition", "")):
        return _error(403, "invalid_signature", "The URL's signature is invalid or has expired")
    try:
        info = store.head(key)
        path = store.path(key)
    except BlobNotFound:
        return _error(404, "not_found", "Cannot find the object")
    disposition = params.get("disposition")
    if disposition and not header_value_ok(disposition):
        return _error(400, "illegal_arguments", "The URL's disposition is not a valid header value")
    headers = {"Content-Disposition": disposition} if disposition else None
    return FileResponse(path, media_type=info.content_type, headers=headers, stat_result=path.stat())

