"""Routes outside the /v1 contract: the spec, Swagger UI, version, health, OAuth client config, and
the local store's signed-URL downloads."""
from __future__ import annotations

import copy
import html
import json
import logging
from typing import Any

import swagger_ui_bundle
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

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


def render_spec(spec: dict[str, Any], base: str) -> dict[str, Any]:
    """The contract with `servers` pointing at this deployment (the hca client uses servers[0].url)."""
    rendered = copy.copy(spec)
    rendered["servers"] = [{"url": f"{base}/v1"}]
    return rendered


def _error(status: int, code: str, title: str) -> JSONResponse:
    return JSONResponse({"status": status, "code": code, "title": title, "stacktrace": ""}, status_code=status,
                        media_type="application/problem+json")


def system_routes(runtime: Runtime, spec: dict[str, Any]) -> list[BaseRoute]:
    rendered: dict[str, bytes] = {}

    async def swagger_json(request: Request) -> Response:
        base = _base(runtime, request)
        if base not in rendered:
            rendered[base] = json.dumps(render_spec(spec, base)).encode()
        return Response(rendered[base], media_type="application/json")

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
        Route("/", ui, methods=["GET"]),
        Route("/v1/swagger.json", swagger_json, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/internal/health", health, methods=["GET"]),
        Route("/internal/application_secrets", application_secrets, methods=["GET"]),
        Route("/blobstore/{name}/{key:path}", blobstore, methods=["GET", "HEAD"]),
        Mount("/static/swagger-ui", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger-ui"),
    ]


def _serve_blob(runtime: Runtime, request: Request) -> Response:
    store = runtime.replicas.by_name(request.path_params["name"])
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
    headers = {"Content-Disposition": params["disposition"]} if params.get("disposition") else None
    return FileResponse(path, media_type=info.content_type, headers=headers, stat_result=path.stat())
