"""AWS X-Ray tracing for the Lambda entry points, on when `DSS_XRAY_TRACE` is set (`Config.xray_trace`).

`configure_tracing(config)` sets up the SDK's global recorder once per process and patches boto3/botocore
and requests, so that every AWS call and outgoing HTTP request of an invocation becomes a subsegment.
`traced(name)` wraps one invocation: inside Lambda the function's own (facade) segment exists and the
work is a subsegment of it; anywhere else (a test, a local run) a segment is opened for it. The SDK sends
to the daemon at `AWS_XRAY_DAEMON_ADDRESS` (the SDK's own variable; Lambda sets it) over UDP, so nothing
blocks when no daemon listens. With tracing off, neither function imports the SDK.

Outside Lambda the SDK's own context keeps the open segment in a thread-local, which the worker threads
that run the API's synchronous handlers do not see; `_ContextLocal` keeps it in a context variable
instead, which asyncio tasks and anyio's worker threads inherit.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Iterator
from typing import Any

from dss.config import Config

__all__ = ["configure_tracing", "traced", "PATCHED"]

logger = logging.getLogger(__name__)

PATCHED = ("boto3", "botocore", "requests")
_state: dict[str, Any] = {"recorder": None}
_lock = threading.Lock()


class _ContextLocal:
    """`threading.local`'s attribute interface over a context variable holding a dict."""

    def __init__(self) -> None:
        object.__setattr__(self, "_var", contextvars.ContextVar("dss_xray_entities", default=None))

    def _values(self) -> dict[str, Any]:
        values = self._var.get()
        if values is None:
            values = {}
            self._var.set(values)
        return values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values()[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self._values()[name] = value

    def clear(self) -> None:
        self._values().clear()


def _task_context() -> Any:
    from aws_xray_sdk.core.context import Context

    class TaskContext(Context):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__(context_missing="LOG_ERROR")
            self._local = _ContextLocal()

        def clear_trace_entities(self) -> None:
            self._local.clear()

    return TaskContext()


def configure_tracing(config: Config) -> bool:
    """Turn tracing on for this process if the configuration asks for it; returns whether it is on."""
    if not config.xray_trace:
        return False
    with _lock:
        if _state["recorder"] is None:
            from aws_xray_sdk.core import patch, xray_recorder
            from aws_xray_sdk.core.lambda_launcher import LambdaContext

            # Every request is recorded (no local sampling: in Lambda the decision is Lambda's own),
            # and code running outside a traced invocation (a background thread) logs rather than raises.
            in_lambda = isinstance(xray_recorder.context, LambdaContext)
            xray_recorder.configure(service=f"dss-{config.stage}", sampling=False, context_missing="LOG_ERROR",
                                    context=None if in_lambda else _task_context())
            patch(PATCHED)
            _state["recorder"] = xray_recorder
            logger.info("X-Ray tracing on (%s patched)", ", ".join(PATCHED))
    return True


@contextlib.contextmanager
def traced(name: str, **http: str) -> Iterator[Any]:
    """Record the block as one (sub)segment named `name` if tracing is on, with `http` (`method`, `url`)
    as its request metadata; yields it (or None)."""
    recorder = _state["recorder"]
    if recorder is None:
        yield None
        return
    from aws_xray_sdk.core.lambda_launcher import LambdaContext

    opened = recorder.in_subsegment if isinstance(recorder.context, LambdaContext) else recorder.in_segment
    with opened(name) as entity:
        for key, value in http.items():
            entity.put_http_meta(key, value)
        yield entity
