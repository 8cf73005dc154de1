"""The one place where errors become HTTP: status codes and `application/problem+json` bodies.

Body: `{"status", "code", "title", "stacktrace"}`; `stacktrace` is always empty — tracebacks go to the
log, never to clients. Unexpected exceptions are 500 `unhandled_exception`.

A method the spec does not list for a known path is 405 with an `Allow` header naming the methods it
does list. `format: DSS_VERSION` in the spec answers a malformed version with the contract's 400
`illegal_version` rather than the generic `illegal_arguments` of a schema mismatch.
"""
from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import dataclass

from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from jsonschema import Draft4Validator
from starlette.exceptions import HTTPException

from dss import errors
from dss.identifiers import validate_version
from dss.index.backend import QueryError, SearchUnavailable
from dss.storage.blobstore import BlobStoreUnavailable
from dss.tables import TableError

__all__ = ["problem", "register_error_handlers", "STATUS"]

logger = logging.getLogger(__name__)

STATUS: dict[type[errors.DSSError], int] = {
    errors.InvalidRequest: 400,
    errors.AuthProblem: 401,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.NotFound: 404,
    errors.TooManySubscriptions: 406,
    errors.Conflict: 409,
    errors.Unprocessable: 422,
    errors.ReadOnly: 503,
    errors.Unavailable: 503,
}


def status_of(exc: errors.DSSError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def problem(status: int, code: str, title: str, headers: dict[str, str] | None = None) -> ConnexionResponse:
    body = json.dumps({"status": status, "code": code, "title": title, "stacktrace": ""})
    return ConnexionResponse(status_code=status, content_type="application/problem+json", body=body,
                             headers=headers or {})


def _dss_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, errors.DSSError)
    status = status_of(exc)
    if status >= 500:
        logger.warning("%s %s → %d %s: %s", request.method, request.url.path, status, exc.code, exc.title)
    return problem(status, exc.code, exc.title)


def _connexion_problem(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, ProblemException)
    status = exc.status or 400
    title = str(exc.detail or exc.title or "Bad request").split("\n\n")[0]
    if status == 400 and (allowed := _literal_path_refusing(request.method, request.url.path)):
        # `PUT /v1/bundles/all` reaches PUT /bundles/{uuid}, whose uuid pattern refuses "all": the spec's
        # /bundles/all has no PUT, so the answer is the one for any unlisted method.
        return problem(405, "method_not_allowed", "Method Not Allowed", {"Allow": allowed})
    if status == 400:
        return problem(400, "illegal_arguments", title)
    code = {401: "Unauthorized", 403: "Forbidden", 404: "not_found", 405: "method_not_allowed",
            415: "unsupported_media_type"}.get(status, str(exc.title or "error").lower().replace(" ", "_"))
    return problem(status, code, title)


def _http_exception(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        # Connexion routes each (path, method) on its own, so Starlette's own Allow names only one of them.
        headers["Allow"] = _allowed_methods(request.url.path) or headers.get("Allow", "")
    return problem(exc.status_code, code, str(exc.detail), headers)


_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@dataclass(frozen=True)
class _SpecPath:
    pattern: re.Pattern[str]
    literal: bool  # no {parameter} in the template
    methods: frozenset[str]


@functools.cache
def _spec_paths() -> tuple[_SpecPath, ...]:
    from dss.api import load_spec  # here, not at the top: dss.api imports this module

    spec = load_spec()
    base = spec.get("servers", [{}])[0].get("url", "").rstrip("/")
    paths = []
    for template, item in spec["paths"].items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(base + template))
        methods = {method.upper() for method in item if method in _HTTP_METHODS}
        if "GET" in methods:
            methods.add("HEAD")  # Starlette answers HEAD wherever it answers GET
        paths.append(_SpecPath(re.compile(pattern), "{" not in template, frozenset(methods)))
    return tuple(paths)


def _allowed_methods(path: str) -> str:
    """The Allow header of `path`: the methods the spec lists for it. A literal path wins over templates
    that also match it (/bundles/all, not /bundles/{uuid}, whose uuid pattern refuses "all")."""
    matching = [p for p in _spec_paths() if p.pattern.fullmatch(path)]
    literal = [p for p in matching if p.literal]
    return ", ".join(sorted(set().union(*(p.methods for p in literal or matching))))


def _literal_path_refusing(method: str, path: str) -> str | None:
    """The Allow header of `path` if the spec names it literally and lists no `method` for it."""
    if any(p.literal and p.pattern.fullmatch(path) and method not in p.methods for p in _spec_paths()):
        return _allowed_methods(path)
    return None


def _query_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    return problem(400, "elasticsearch_bad_request", str(exc))


def _search_unavailable(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    return problem(503, "service_unavailable", str(exc) or "The search index is unavailable")


def _storage_unavailable(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    logger.warning("Storage unavailable during %s %s: %s", request.method, request.url.path, exc)
    return problem(503, "service_unavailable", "Storage is temporarily unavailable; try again")


def _undecodable(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    return problem(400, "illegal_arguments", "The request body is not valid UTF-8")


def _check_version_format(value: object) -> bool:
    if isinstance(value, str):
        validate_version(value)  # raises IllegalVersion itself: jsonschema would make it illegal_arguments
    return True


def _unhandled(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    logger.error("Unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "unhandled_exception", "An unexpected error occurred; it has been logged.")


def register_error_handlers(app) -> None:
    # Connexion validates with jsonschema's one Draft 4 format checker; DSS_VERSION is only in our spec.
    Draft4Validator.FORMAT_CHECKER.checks("DSS_VERSION")(_check_version_format)
    app.add_error_handler(errors.DSSError, _dss_error)
    app.add_error_handler(ProblemException, _connexion_problem)
    app.add_error_handler(HTTPException, _http_exception)
    app.add_error_handler(QueryError, _query_error)
    app.add_error_handler(SearchUnavailable, _search_unavailable)
    app.add_error_handler(BlobStoreUnavailable, _storage_unavailable)
    app.add_error_handler(TableError, _storage_unavailable)
    app.add_error_handler(UnicodeDecodeError, _undecodable)
    app.add_error_handler(Exception, _unhandled)
