"""CORS for browser clients on other origins (`DSS_CORS_ORIGINS`; none by default, `*` for any).

A request from an allowed `Origin` gets `Access-Control-Allow-Origin` and the response headers a client
reads (`Location`, `Link`, `Retry-After`, `X-DSS-*`) exposed; its preflight (`OPTIONS` with
`Access-Control-Request-Method`) is answered here, 204, allowing the request's method and headers, among
them `Authorization`. Anything else passes through untouched: a preflight from another origin reaches the
API, which answers 405, and the browser refuses the request.
"""
from __future__ import annotations

from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["CORSMiddleware"]

_METHODS = b"GET, HEAD, PUT, PATCH, POST, DELETE"
_ALLOWED_HEADERS = frozenset({"authorization", "content-type", "range", "accept", "accept-language",
                              "content-language", "x-requested-with"})
_EXPOSED = (b"Location, Link, Retry-After, Content-Range, X-OpenAPI-Paginated-Content-Key, X-DSS-VERSION, "
            b"X-DSS-CREATOR-UID, X-DSS-CONTENT-TYPE, X-DSS-SIZE, X-DSS-CRC32C, X-DSS-S3-ETAG, X-DSS-SHA1, "
            b"X-DSS-SHA256")
MAX_AGE = b"600"


class CORSMiddleware:
    def __init__(self, app: ASGIApp, origins: Iterable[str]) -> None:
        self.app = app
        self.origins = frozenset(o.rstrip("/") for o in origins)

    def _allowed(self, origin: str | None) -> bytes | None:
        """The Access-Control-Allow-Origin value for `origin`, or None if it is not allowed."""
        if not origin:
            return None
        if "*" in self.origins:
            return b"*"
        return origin.encode("latin-1") if origin in self.origins else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        allow_origin = self._allowed(headers.get("origin"))
        if allow_origin is None:
            await self.app(scope, receive, send)
            return
        vary = [(b"vary", b"Origin")] if allow_origin != b"*" else []
        requested_method = headers.get("access-control-request-method")
        if scope["method"] == "OPTIONS" and requested_method:
            await _preflight(send, allow_origin, headers.get("access-control-request-headers", ""), vary)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = dict(message, headers=[*message.get("headers", []), *vary,
                                                 (b"access-control-allow-origin", allow_origin),
                                                 (b"access-control-expose-headers", _EXPOSED)])
            await send(message)

        await self.app(scope, receive, send_with_cors)


async def _preflight(send: Send, allow_origin: bytes, requested: str, vary: list[tuple[bytes, bytes]]) -> None:
    names = [n.strip().lower() for n in requested.split(",") if n.strip()]
    allowed = ", ".join(n for n in names if n in _ALLOWED_HEADERS)
    await send({"type": "http.response.start", "status": 204, "headers": [
        *vary, (b"access-control-allow-origin", allow_origin), (b"access-control-allow-methods", _METHODS),
        (b"access-control-allow-headers", allowed.encode("latin-1")), (b"access-control-max-age", MAX_AGE)]})
    await send({"type": "http.response.body", "body": b""})
