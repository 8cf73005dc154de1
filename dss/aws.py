"""Every AWS client DSS makes comes from here: one boto3 session per process, shared by all of them.

botocore loads its endpoint rules and the list of services once per session, and each service's model
once per session too, so a client of a session that already made one costs a fraction of a client of a
fresh session: a Lambda cold start that builds half a dozen clients saves about a third of a second. The
session is boto3's default session (what `boto3.client` uses), so moto's in-process mock, which swaps it
out, still sees every client. Creating clients from one session is not thread-safe in botocore, hence
the lock; the clients themselves are.
"""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["client", "dynamodb_pages", "error_code"]

_lock = threading.Lock()


def client(service: str, **options: Any) -> Any:
    """A boto3 client of `service` (`region_name=`, `config=`, … as `boto3.client` takes them)."""
    import boto3

    with _lock:
        return boto3.client(service, **options)  # type: ignore[call-overload]


def error_code(error: BaseException) -> str:
    """The AWS error code of a botocore ClientError (`NoSuchKey`, …); "" for any other exception."""
    response = getattr(error, "response", None) or {}
    return str(response.get("Error", {}).get("Code", ""))


def dynamodb_pages(call: Callable[..., dict[str, Any]], operation: str, **arguments: Any) -> Iterator[dict[str, Any]]:
    """Every page of a DynamoDB `query` or `scan` (at most 1 MB each), following `LastEvaluatedKey`;
    `call(operation, **arguments)` makes one request, wrapping its errors as its caller needs."""
    start: dict[str, Any] | None = None
    while True:
        page = call(operation, **arguments, **({"ExclusiveStartKey": start} if start else {}))
        yield page
        start = page.get("LastEvaluatedKey")
        if not start:
            return
