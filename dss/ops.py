"""Operator actions (used by scripts/dss-ops.py and tests): storage checks and repairs, reindexing, and
the Lambda environment kept in SSM.

The Lambda environment of a stage is the SSM parameter `/dss/<stage>/environment`, a JSON object of
`DSS_*` variables (`LambdaEnvironment`). `update_deployed()` gives every Lambda function of the stage
(named `dss-<stage>-*`) exactly those `DSS_*` variables plus `DSS_SECRETS_URL`, keeping the function's
other variables; a `DSS_*` variable no longer in the parameter is removed from the functions.
"""
from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dss.events import Event
from dss.events.bus import EventBus
from dss.events.handlers.index import IndexHandler
from dss.events.handlers.sync import SyncHandler
from dss.identifiers import ObjectKey, Replica
from dss.index.backend import SearchIndex
from dss.storage.blobstore import BlobNotFound
from dss.storage.replicas import Replicas

__all__ = ["verify_sync", "sync_differences", "repair_sync", "SyncRepair", "reindex", "queue_reindex",
           "LambdaEnvironment", "environment_parameter", "LambdaEnvironmentError"]

logger = logging.getLogger(__name__)

_SYNCED_PREFIXES = ("blobs/", "files/", "bundles/")  # in dependency order: a copy's dependencies come first


def sync_differences(replicas: Replicas, source: Replica,
                     progress: Callable[[int], None] = lambda n: None) -> Iterator[tuple[str, str]]:
    """(key, "missing" | "size differs") for each key of `source` the other replica lacks or holds with
    another size, blobs before files before bundles."""
    src, dst = replicas[source], replicas[source.other]
    for prefix in _SYNCED_PREFIXES:
        for key in src.list(prefix):
            progress(1)
            try:
                if dst.head(key).size != src.head(key).size:
                    yield key, "size differs"
            except BlobNotFound:
                yield key, "missing"
            except Exception:  # noqa: BLE001 - an unreadable key is reported, as a missing one
                logger.warning("could not compare %s", key, exc_info=True)
                yield key, "missing"


def verify_sync(replicas: Replicas, source: Replica, progress: Callable[[int], None] = lambda n: None) -> list[str]:
    """Keys present in `source` but missing (or of another size) in the other replica."""
    return [f"missing in {source.other.value}: {key}" if what == "missing" else f"size differs: {key}"
            for key, what in sync_differences(replicas, source, progress)]


@dataclass
class SyncRepair:
    copied: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "<key>: <reason>"


def repair_sync(replicas: Replicas, bus: EventBus, source: Replica,
                progress: Callable[[int], None] = lambda n: None) -> SyncRepair:
    """Copy to the other replica what `verify_sync` finds missing there, here and now, with the sync
    handler (dependencies first, conditional creates: running it again copies nothing). Each copy is
    announced on `bus` for the destination, so it is indexed there as if replicated by the daemons.
    A key of another size is not overwritten (keys are write-once): it is reported as failed."""
    handler = SyncHandler(replicas, bus)
    report = SyncRepair()
    for key, what in sync_differences(replicas, source, progress):
        if what != "missing":
            report.failed.append(f"{key}: {what}")
            continue
        try:
            handler(Event(source.value, key))
            report.copied.append(key)
        except Exception as exc:  # noqa: BLE001 - one key's failure is reported; the others go on
            logger.warning("could not copy %s", key, exc_info=True)
            report.failed.append(f"{key}: {type(exc).__name__}")
    return report


def reindex(replicas: Replicas, search: SearchIndex, replica: Replica, manifest_file_limit: int,
            progress: Callable[[int], None] = lambda n: None) -> int:
    """Rebuild a replica's search documents from storage; returns the number of bundle keys read.

    Keys come in storage order, so each uuid's tombstones (`.dead` sorts last) follow its versions and
    replace their documents, exactly as when the events arrived. Subscribers are not notified."""
    handler = IndexHandler(replicas, search, manifest_file_limit, notifier=None)
    count = 0
    for key in replicas[replica].list("bundles/"):
        if ObjectKey.parse(key) is not None:
            handler(Event(replica.value, key))
        count += 1
        progress(1)
    search.refresh(replica.value)  # leave it searchable without pending work (this process is about to end)
    return count


def queue_reindex(replicas: Replicas, bus: EventBus, replica: Replica,
                  progress: Callable[[int], None] = lambda n: None) -> int:
    """The cloud's reindex: one `index` event per bundle key, for the index daemons to handle (in storage
    order, as `reindex`); returns the number published. Unlike `reindex`, the index handler of the
    deployment runs, so subscribers not yet notified of a bundle are notified now."""
    count = 0
    for key in replicas[replica].list("bundles/"):
        if ObjectKey.parse(key) is not None:
            bus.publish(Event(replica.value, key), handlers=("index",))
            count += 1
        progress(1)
    return count


# --- the Lambda environment in SSM ----------------------------------------------------------------
_NAME = re.compile(r"DSS_[A-Z0-9_]{1,100}")
_UPDATE_ATTEMPTS = 10  # a function being updated refuses another update for a moment


class LambdaEnvironmentError(ValueError):
    """A variable name or value the Lambda environment does not take."""


def environment_parameter(stage: str) -> str:
    return f"/dss/{stage}/environment"


def _checked(variables: Mapping[str, str]) -> dict[str, str]:
    for name, value in variables.items():
        if not _NAME.fullmatch(name):
            raise LambdaEnvironmentError(f"{name!r} is not a DSS_* variable name (DSS_ and A-Z, 0-9, _)")
        if not isinstance(value, str):
            raise LambdaEnvironmentError(f"the value of {name} must be a string")
    if len(json.dumps(variables)) > 4000:  # Lambda's limit for a function's whole environment is 4 KB
        raise LambdaEnvironmentError("the environment is larger than a Lambda function takes (4 KB)")
    return dict(variables)


class LambdaEnvironment:
    """The `DSS_*` environment of a stage's Lambdas (SSM parameter `/dss/<stage>/environment`); clients
    injected (`open()` builds them from boto3's configuration, the Lambda client only when needed)."""

    def __init__(self, stage: str, ssm: Any, lambda_client: Any | Callable[[], Any],
                 secrets_url: str | None = None) -> None:
        self.stage, self.ssm, self._lambda_client = stage, ssm, lambda_client
        self.parameter = environment_parameter(stage)
        self.secrets_url = secrets_url or f"secretsmanager://dss/{stage}/"

    @classmethod
    def open(cls, stage: str, secrets_url: str | None = None) -> LambdaEnvironment:
        import boto3

        # The default session: an operator's command makes each client once, and shares the SDK's models.
        return cls(stage, boto3.client("ssm"), lambda: boto3.client("lambda"), secrets_url)

    @property
    def lambda_client(self) -> Any:
        if callable(self._lambda_client) and not hasattr(self._lambda_client, "meta"):
            self._lambda_client = self._lambda_client()
        return self._lambda_client

    def get(self) -> dict[str, str]:
        try:
            raw = self.ssm.get_parameter(Name=self.parameter)["Parameter"]["Value"]
        except self.ssm.exceptions.ParameterNotFound:
            return {}
        variables = json.loads(raw)
        if not isinstance(variables, dict):
            raise LambdaEnvironmentError(f"{self.parameter} does not hold a JSON object")
        return {str(k): str(v) for k, v in variables.items()}

    def _put(self, variables: Mapping[str, str]) -> dict[str, str]:
        checked = _checked(variables)
        self.ssm.put_parameter(Name=self.parameter, Value=json.dumps(checked, sort_keys=True), Type="String",
                               Overwrite=True)
        return checked

    def set(self, changes: Mapping[str, str]) -> dict[str, str]:
        return self._put({**self.get(), **_checked(changes)})

    def unset(self, names: Iterable[str]) -> dict[str, str]:
        gone = set(names)
        return self._put({k: v for k, v in self.get().items() if k not in gone})

    def functions(self) -> list[str]:
        """The functions named `dss-<stage>-*` (`update_deployed` then skips any whose own
        DSS_DEPLOYMENT_STAGE names another stage)."""
        prefix = f"dss-{self.stage}-"
        names: list[str] = []
        for page in self.lambda_client.get_paginator("list_functions").paginate():
            names += [f["FunctionName"] for f in page.get("Functions", []) if f["FunctionName"].startswith(prefix)]
        return sorted(names)

    def deployed_environment(self, current: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str]:
        """A function's new variables: its non-`DSS_*` ones, then `wanted`, then `DSS_SECRETS_URL`."""
        kept = {k: v for k, v in current.items() if not k.startswith("DSS_")}
        return {**kept, **wanted, "DSS_SECRETS_URL": wanted.get("DSS_SECRETS_URL") or self.secrets_url}

    def update_deployed(self, progress: Callable[[int], None] = lambda n: None) -> dict[str, bool]:
        """Push the environment into every deployed function of the stage; {function: whether it changed}."""
        wanted = self.get()
        changed: dict[str, bool] = {}
        for name in self.functions():
            current = (self.lambda_client.get_function_configuration(FunctionName=name)
                       .get("Environment", {}).get("Variables", {}))
            if current.get("DSS_DEPLOYMENT_STAGE", self.stage) != self.stage:
                progress(1)  # stage "dev-2"'s dss-dev-2-api has the prefix of stage "dev": not ours
                continue
            variables = self.deployed_environment(current, wanted)
            changed[name] = variables != current
            if changed[name]:
                self._update(name, variables)
                logger.info("Updated the environment of %s", name)
            progress(1)
        return changed

    def _update(self, name: str, variables: Mapping[str, str]) -> None:
        for attempt in range(_UPDATE_ATTEMPTS):
            try:
                self.lambda_client.update_function_configuration(FunctionName=name,
                                                                 Environment={"Variables": dict(variables)})
                return
            except self.lambda_client.exceptions.ResourceConflictException:
                if attempt == _UPDATE_ATTEMPTS - 1:
                    raise
                time.sleep(min(2 ** attempt, 10))  # an update of this function is still in progress
