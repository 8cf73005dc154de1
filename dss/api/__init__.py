"""The HTTP application: the Connexion app for the /v1 contract plus the routes outside it.

`create_app(runtime)` returns one ASGI application; uvicorn serves it locally (`dss-api`) and the
Chalice Lambda (`chalice/app.py`) serves the very same object. Handlers are the functions named by
each operation's `operationId`, with the Runtime bound as their first argument, so no handler reads
global state.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import connexion
import yaml
from connexion.resolver import Resolver
from connexion.security import OAuthSecurityHandler
from starlette.concurrency import run_in_threadpool
from starlette.routing import Router
from starlette.types import ASGIApp

from dss.api.cors import CORSMiddleware
from dss.api.errors import register_error_handlers
from dss.api.middleware import DSSHeadersMiddleware
from dss.api.system import system_routes
from dss.auth import Authenticator
from dss.runtime import Runtime

__all__ = ["create_app", "load_spec", "SPEC_PATH"]

logger = logging.getLogger(__name__)

SPEC_PATH = Path(__file__).resolve().parents[2] / "dss-api.yml"


@functools.lru_cache(maxsize=1)
def load_spec(path: Path = SPEC_PATH) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _bind(runtime: Runtime) -> Callable[[str], Callable]:
    def resolve(operation_id: str) -> Callable:
        module_name, _, name = operation_id.rpartition(".")
        function = getattr(importlib.import_module(module_name), name)
        return functools.partial(function, runtime)
    return resolve


def _security_map(authenticator: Authenticator) -> dict[str, type]:
    """Connexion runs this before parameter validation, as the original did: token problems first."""

    class BearerTokens(OAuthSecurityHandler):
        def get_fn(self, security_scheme: dict, required_scopes: Any) -> Callable:
            async def verify(request: Any) -> dict:
                header = request.headers.get("Authorization")
                principal = await run_in_threadpool(authenticator.authenticate, header)
                return {"sub": principal.subject, "principal": principal}
            return verify

    return {"oauth2": BearerTokens}


def create_app(runtime: Runtime) -> ASGIApp:
    api = connexion.AsyncApp(__name__, security_map=_security_map(runtime.authenticator),
                             swagger_ui_options=connexion.options.SwaggerUIOptions(serve_spec=False, swagger_ui=False))
    spec = load_spec()
    api.add_api(spec, resolver=Resolver(function_resolver=_bind(runtime)), pythonic_params=False,
                validate_responses=False)
    register_error_handlers(api)

    @contextlib.asynccontextmanager
    async def lifespan(_: Any) -> AsyncIterator[None]:
        runtime.start()
        try:
            yield
        finally:
            runtime.stop()

    router = Router(routes=system_routes(runtime, spec), default=api, lifespan=lifespan)
    app = DSSHeadersMiddleware(router, read_only=runtime.config.read_only)
    return CORSMiddleware(app, runtime.config.cors_origins) if runtime.config.cors_origins else app
