"""Record why a workflow failed, where the API can find it (the async-state table of the 202 path)."""
from __future__ import annotations

import time
from typing import Any

from dss.workflows.registry import TaskContext, task
from dss.workflows.tasks.common import InvalidTaskInput

__all__ = ["FAILURE_TTL"]

FAILURE_TTL = 10 * 86400  # seconds a failure record is kept; `expires_at` lets a sweeper drop it


@task("workflow-record-failure")
def record_failure(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Payload: the machine's state with `failure: {Error, Cause}` (from a Catch) and, optionally,
    `record: {table, hash_key, sort_key}`: where to write `{status: FAILED, error, cause, …}`.
    Without `record` there is nothing to do."""
    record = payload.get("record")
    if not record:
        return {"recorded": False}
    if context.tables is None:
        raise InvalidTaskInput("a failure record needs tables, and the task context has none")
    failure = payload.get("failure") or {}
    now = time.time()
    context.tables(record["table"]).put(record["hash_key"], record["sort_key"], {
        "status": "FAILED", "error": failure.get("Error"), "cause": failure.get("Cause"),
        "recorded_at": now, "expires_at": now + FAILURE_TTL,
    })
    return {"recorded": True}
