"""Small helpers for API tests: stage bytes, register files and bundles through the real API; poll."""
from __future__ import annotations

import time
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import requests

from dss.identifiers import new_version

T = TypeVar("T")


def new_uuid() -> str:
    return str(uuidlib.uuid4())


def stage_local(staging: Path, data: bytes, name: str = "data.bin") -> str:
    directory = staging / new_uuid()
    directory.mkdir()
    path = directory / name
    path.write_bytes(data)
    return path.as_uri()


def put_file(dss, source_url: str, file_uuid: str | None = None, version: str | None = None,
             creator_uid: int = 1) -> requests.Response:
    file_uuid, version = file_uuid or new_uuid(), version or new_version()
    return requests.put(f"{dss.url}/v1/files/{file_uuid}", params={"version": version}, headers=dss.auth(),
                        json={"source_url": source_url, "creator_uid": creator_uid})


def add_file(dss, data: bytes, name: str = "data.bin") -> dict:
    """Stage and register a file; returns a bundle entry for it."""
    file_uuid, version = new_uuid(), new_version()
    response = put_file(dss, stage_local(dss.staging, data, name.rsplit("/", 1)[-1]), file_uuid, version)
    assert response.status_code == 201, response.text
    return {"uuid": file_uuid, "version": version, "name": name, "indexed": name.endswith(".json")}


def put_bundle(dss, files: list[dict], bundle_uuid: str | None = None, version: str | None = None,
               replica: str = "aws", creator_uid: int = 1) -> requests.Response:
    bundle_uuid, version = bundle_uuid or new_uuid(), version or new_version()
    return requests.put(f"{dss.url}/v1/bundles/{bundle_uuid}", params={"version": version, "replica": replica},
                        headers=dss.auth(), json={"files": files, "creator_uid": creator_uid})


def poll_until(condition: Callable[[], T], what: str, step: Callable[[], object] = lambda: None, *,
               timeout: float = 60.0, pause: float = 0.05, explain: Callable[[], str] | None = None) -> T:
    """Calls `step` (then sleeps `pause` seconds) until `condition` returns a truthy value, and returns that value;
    AssertionError naming `what`, with `explain()`'s text if given, after `timeout` seconds (generous: a busy
    machine)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            message = f"timed out after {timeout} s waiting for {what}"
            raise AssertionError(f"{message}\n{explain()}" if explain is not None else message)
        step()
        time.sleep(pause)
    return value
