"""Write a file's metadata document once its blob is verified (the end of the 202 `PUT /files` path)."""
from __future__ import annotations

from typing import Any

from dss.storage.blobstore import BlobAlreadyExists
from dss.workflows.registry import TaskContext, task
from dss.workflows.tasks.common import InvalidTaskInput, store

__all__ = ["MetadataConflict"]


class MetadataConflict(Exception):
    """Another document is already stored under the metadata key."""


@task("files-write-metadata")
def write_metadata(payload: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Payload: `metadata: {url, key, document, replica?}`. A conditional create: the same document
    already there is success (a re-run), a different one is MetadataConflict.

    With `replica` and the files domain in the context (the runtime's), the files domain commits the
    document and announces it (blob and file events, durable intents before the commit), exactly as a
    synchronous PUT does; otherwise only the object is written."""
    spec = payload.get("metadata")
    if not (isinstance(spec, dict) and isinstance(spec.get("url"), str) and isinstance(spec.get("key"), str)
            and isinstance(spec.get("document"), dict)):
        raise InvalidTaskInput("metadata must be an object with url, key and a document object")
    if context.files is not None and isinstance(spec.get("replica"), str):
        if not context.files.commit_metadata(spec["replica"], spec["key"], spec["document"]):
            raise MetadataConflict(f"{spec['key']} already holds a different document")
        return {"key": spec["key"]}
    target = store(context, spec["url"])
    try:
        target.put_json(spec["key"], spec["document"], if_absent=True)
    except BlobAlreadyExists:
        if target.get_json(spec["key"]) != spec["document"]:
            raise MetadataConflict(f"{spec['key']} already holds a different document") from None
    return {"key": spec["key"]}
