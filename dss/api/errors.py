"""The one place where errors become HTTP: status codes and `application/problem+json` bodies.

Body: `{"status", "code", "title", "stacktrace"}`; `stacktrace` is always empty — tracebacks go to the
log, never to clients. Unexpected exceptions are 500 `unhandled_exception`.
"""
from __future__ import annotations

import json
import logging

from connexion.exceptions import ProblemException
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from starlette.exceptions import HTTPException

from dss import errors
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
    if status == 400:
        return problem(400, "illegal_arguments", title)
    code = {401: "Unauthorized", 403: "Forbidden", 404: "not_found", 405: "method_not_allowed",
            415: "unsupported_media_type"}.get(status, str(exc.title or "error").lower().replace(" ", "_"))
    return problem(status, code, title)


def _http_exception(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return problem(exc.status_code, code, str(exc.detail))


def _query_error(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    return problem(400, "elasticsearch_bad_request", str(exc))


def _search_unavailable(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    return problem(503, "service_unavailable", str(exc) or "The search index is unavailable")


def _storage_unavailable(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    logger.warning("Storage unavailable during %s %s: %s", request.method, request.url.path, exc)
    return problem(503, "service_unavailable", "Storage is temporarily unavailable; try again")


def _undecodable(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    return problem(400, "illegal_arguments", "The request body is not valid UTF-8")


def _unhandled(request: ConnexionRequest, exc: Exception) -> ConnexionResponse:
    logger.error("Unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return problem(500, "unhandled_exception", "An unexpected error occurred; it has been logged.")


def register_error_handlers(app) -> None:
    app.add_error_handler(errors.DSSError, _dss_error)
    app.add_error_handler(ProblemException, _connexion_problem)
    app.add_error_handler(HTTPException, _http_exception)
    app.add_error_handler(QueryError, _query_error)
    app.add_error_handler(SearchUnavailable, _search_unavailable)
    app.add_error_handler(BlobStoreUnavailable, _storage_unavailable)
    app.add_error_handler(TableError, _storage_unavailable)
    app.add_error_handler(UnicodeDecodeError, _undecodable)
    app.add_error_handler(Exception, _unhandled)
