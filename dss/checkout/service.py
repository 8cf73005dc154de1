"""Checkout: reads are served from a copy in the replica's checkout store, made by a workflow.

    service.file(replica, metadata, token)      → Ready(key) | Pending(token)     GET /files
    service.bundle(replica, uuid, version, files, token) → Ready(prefix) | Pending  GET /bundles?…urls
    service.start_bundle(replica, uuid, version, destination, email) → job id     POST …/checkout
    service.job_status(replica, job_id)         → {status, location | cause}      GET …/checkout/{id}
    service.eager(metadata, replica)            small JSON files, right after PUT /files

A read of something not checked out (or about to expire) starts the checkout — a `file-checkout`
execution per blob, one running at a time (`records`), or a `bundle-checkout` job — and waits for it at
most `wait` seconds (a small one is done by then: one redirect, no retry); if not, the read is Pending:
the API answers 301 to itself with the `token` (`{execution_id, start_time, attempts}`) and
Retry-After. A retry carrying the token looks at that execution: failed → CheckoutError (500
`checkout_error`); still running → Pending again, unless the client has been sent round for longer
than the checkout should take (`patience`: an hour, more for huge files), then CheckoutError too; over
(or unknown, or lost) but nothing to serve → a new checkout. An object past `refresh_after` is served
and copied again in the background.
"""
from __future__ import annotations

import dataclasses
import logging
import time
import uuid as uuidlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from dss.checkout.freshness import Freshness, State, cacheable
from dss.checkout.keys import bundle_file_key, bundle_prefix, file_key
from dss.checkout.records import CheckoutRecords
from dss.checkout.stores import CheckoutStores
from dss.errors import CheckoutError, NotFound
from dss.identifiers import BlobKey, Replica
from dss.storage.blobstore import BlobInfo, BlobNotFound, BlobStore
from dss.storage.replicas import Replicas

__all__ = ["CheckoutService", "Ready", "Pending", "Workflows"]

logger = logging.getLogger(__name__)

_POLL = 0.05


class Workflows(Protocol):
    """The workflow port (`Runtime.workflows`, `dss.workflows.service.Workflows`)."""

    def start(self, workflow: str, data: Any, *, name: str) -> str: ...

    def status(self, execution_id: str) -> Any: ...


@dataclasses.dataclass(frozen=True)
class Ready:
    store: BlobStore
    key: str  # the object (file) or the prefix (bundle) in the checkout store


@dataclasses.dataclass(frozen=True)
class Pending:
    token: dict[str, Any]


def _blob_key(entry: dict[str, Any]) -> BlobKey:
    return BlobKey(entry["sha256"], entry["sha1"], entry["s3-etag"], entry["crc32c"])


def _token(execution_id: str, previous: dict[str, Any] | None, size: int) -> dict[str, Any]:
    """The token of the next 301. A client that has been sent round for longer than the checkout of
    `size` bytes may take (`patience`) is told it failed, rather than redirected forever."""
    if previous is None or previous.get("execution_id") != execution_id:
        return {"execution_id": execution_id, "start_time": time.time(), "attempts": 0}
    start = previous.get("start_time")
    if isinstance(start, (int, float)) and time.time() - start > patience(size):
        raise CheckoutError("The checkout did not finish in time; request the URL again without its token")
    return {**previous, "attempts": int(previous.get("attempts") or 0) + 1}


def patience(size: int) -> float:
    """Seconds a read follows a running checkout: an hour (the original's checkout timeout), and more for
    more than 90 GB (at 25 MB/s)."""
    return 3600.0 + size / 25e6


class CheckoutService:
    def __init__(self, replicas: Replicas, stores: CheckoutStores, records: CheckoutRecords,
                 workflows: Workflows, freshness: Freshness, *, wait: float = 2.0) -> None:
        """`wait`: seconds a read waits for a small checkout to finish before it answers Pending."""
        self.replicas = replicas
        self.stores = stores
        self.records = records
        self.workflows = workflows
        self.freshness = freshness
        self.wait = wait

    def url(self, ready: Ready, name: str | None, ttl: int, *, direct: bool,
            content_disposition: str | None = None) -> str:
        """A URL of a checked-out object: native (`direct`) or signed. `name`: a file of a bundle."""
        key = ready.key if name is None else f"{ready.key}/{name}"
        return ready.store.native_url(key) if direct else ready.store.signed_url(key, ttl, content_disposition)

    # --- files ---------------------------------------------------------------------------------------
    def file(self, replica: Replica, metadata: dict[str, Any], token: dict[str, Any] | None) -> Ready | Pending:
        blob, size = _blob_key(metadata), metadata["size"]
        store, key = self.stores[replica], file_key(blob)
        state = self._file_state(store, key, size)
        if state is State.STALE:
            self.start_file(replica, blob)  # in the background: this read is served from the current copy
        if state.servable:
            return Ready(store, key)
        execution = self._file_execution(replica, blob, token)
        if self.wait and self._await(lambda: self._file_state(store, key, size).servable
                                     or not self._running(execution)):
            if self._file_state(store, key, size).servable:
                return Ready(store, key)
            self._raise_if_failed(execution, "file")
        return Pending(_token(execution, token, size))

    def _file_state(self, store: BlobStore, key: str, size: int) -> State:
        try:
            info: BlobInfo | None = store.head(key)
        except BlobNotFound:
            info = None
        return self.freshness.of_object(info, size)

    def _file_execution(self, replica: Replica, blob: BlobKey, token: dict[str, Any] | None) -> str:
        """The execution this read waits for: the token's while it runs, else a running or new one. A
        token naming anything but a checkout of this blob into this store is ignored."""
        execution = token.get("execution_id") if token is not None else None
        record = self.workflows.status(execution) if isinstance(execution, str) else None
        if record is not None and record.workflow == "file-checkout" and isinstance(record.input, dict) \
                and record.input.get("destination") == {"url": self.stores[replica].url, "key": file_key(blob)}:
            self._raise_if_failed(record.id, "file")
            if record.status == "RUNNING":
                return record.id
        return self.start_file(replica, blob)

    def start_file(self, replica: Replica, blob: BlobKey) -> str:
        """Check out a blob, unless a checkout of it is running (then that one's id)."""
        current = self.records.file_checkout(replica, str(blob))
        if current is not None and self._running(current["execution"]):
            return current["execution"]
        name = f"checkout-{uuidlib.uuid4().hex}"
        data = {"source": {"url": self.replicas[replica].url, "key": str(blob)},
                "destination": {"url": self.stores[replica].url, "key": file_key(blob)},
                "refresh_after": self.freshness.refresh_after}
        self.workflows.start("file-checkout", data, name=name)
        self.records.set_file_checkout(replica, str(blob), name)
        return name

    def eager(self, replica: Replica, metadata: dict[str, Any]) -> str | None:
        """Start checking out a small JSON file right after it is registered (indexers read them all)."""
        if not cacheable(metadata["content-type"], metadata["size"]):
            return None
        store, key = self.stores[replica], file_key(_blob_key(metadata))
        if self._file_state(store, key, metadata["size"]) is State.FRESH:
            return None
        return self.start_file(replica, _blob_key(metadata))

    # --- bundles -------------------------------------------------------------------------------------
    def bundle(self, replica: Replica, uuid: str, version: str, files: Sequence[dict[str, Any]],
               token: dict[str, Any] | None) -> Ready | Pending:
        """Serve a bundle's URLs from its checkout into the replica's checkout store (see module doc)."""
        ready = self._bundle_ready(replica, uuid, version, files)
        if ready is not None:
            return ready
        job_id = self._bundle_job(replica, uuid, version, token)
        if self.wait and self._await(lambda: self._job(replica, job_id)["status"] != "RUNNING"):
            ready = self._bundle_ready(replica, uuid, version, files)
            if ready is not None:
                return ready
            self._raise_if_job_failed(replica, job_id)
        return Pending(_token(job_id, token, sum(f["size"] for f in files)))

    def _bundle_ready(self, replica: Replica, uuid: str, version: str,
                      files: Sequence[dict[str, Any]]) -> Ready | None:
        fqid = f"{uuid}.{version}"
        pointer = self.records.bundle_checkout(replica, fqid)
        if pointer is None:
            return None
        now, latest = time.time(), self._job(replica, pointer["job_id"])
        candidates = [(latest, pointer["started"])]
        if pointer.get("served"):
            candidates.append((self._job(replica, pointer["served"]["job_id"]), pointer["served"]["started"]))
        for job, started in candidates:
            state = self.freshness.of_age(now - started)
            if job["status"] != "SUCCEEDED" or not state.servable:
                continue
            store, prefix = self.stores[replica], bundle_prefix(uuid, version)
            present = set(store.list(prefix + "/"))
            if not all(bundle_file_key(uuid, version, f["name"]) in present for f in files):
                return None
            if state is State.STALE and job is latest:
                self.start_bundle(replica, uuid, version)  # refresh in the background
            return Ready(store, prefix)
        return None

    def _bundle_job(self, replica: Replica, uuid: str, version: str, token: dict[str, Any] | None) -> str:
        """The job this read waits for: the token's while it runs (a token naming any other job is
        ignored), else a running or new one."""
        job_id = token.get("execution_id") if token is not None else None
        job = self.records.job(replica, job_id) if isinstance(job_id, str) and job_id else None
        if job is not None and job.get("bundle") == {"uuid": uuid, "version": version} \
                and job.get("destination") == self.stores[replica].url:
            self._raise_if_job_failed(replica, job["job_id"])
            if self._job(replica, job["job_id"])["status"] == "RUNNING":
                return job["job_id"]
        pointer = self.records.bundle_checkout(replica, f"{uuid}.{version}")
        if pointer is not None and self._job(replica, pointer["job_id"])["status"] == "RUNNING":
            return pointer["job_id"]
        return self.start_bundle(replica, uuid, version)

    def start_bundle(self, replica: Replica, uuid: str, version: str, destination: str | None = None,
                     email: str | None = None) -> str:
        """Start a bundle checkout job (the bundle must exist); returns its id. Without `destination` it
        goes to the replica's checkout store, and reads of the bundle's URLs are served from it."""
        url = self.stores.destination_url(replica, destination)
        job_id = str(uuidlib.uuid4())
        prefix = bundle_prefix(uuid, version)
        self.records.create_job(replica, job_id, bundle={"uuid": uuid, "version": version}, destination=url,
                                email=email)
        data = {"bundle": {"url": self.replicas[replica].url, "key": prefix},
                "destination": {"url": url, "prefix": prefix, "fresh_for": self.freshness.refresh_after},
                "status": self.records.job_keys(replica, job_id)}
        self.workflows.start("bundle-checkout", data, name=job_id)
        if destination is None:
            self._point_at(replica, f"{uuid}.{version}", job_id)
        return job_id

    def _point_at(self, replica: Replica, fqid: str, job_id: str) -> None:
        pointer = self.records.bundle_checkout(replica, fqid)
        served = None
        if pointer is not None:
            latest = self._job(replica, pointer["job_id"])
            served = {"job_id": pointer["job_id"], "started": pointer["started"]} \
                if latest["status"] == "SUCCEEDED" else pointer.get("served")
        self.records.set_bundle_checkout(replica, fqid, job_id, served)

    # --- jobs ----------------------------------------------------------------------------------------
    def job_status(self, replica: Replica, job_id: str) -> dict[str, Any]:
        """The public status of a bundle checkout job; NotFound for an unknown id."""
        if self.records.job(replica, job_id) is None:
            raise NotFound("Cannot find the checkout job!")
        return CheckoutRecords.public(self._job(replica, job_id))

    def _job(self, replica: Replica, job_id: str) -> dict[str, Any]:
        """The job's record, FAILED if its execution ended without saying so (or it is lost)."""
        job = self.records.job(replica, job_id)
        if job is None:
            return {"job_id": job_id, "status": "FAILED", "cause": "unknown checkout job"}
        if job["status"] == "RUNNING":
            record = self.workflows.status(job_id)
            if record is not None and record.status != "RUNNING":
                job = self.records.job(replica, job_id) or job  # the workflow writes its status before it ends
                if job["status"] == "RUNNING":
                    self.records.fail_job(replica, job_id, record.error, record.cause or "the checkout ended early")
                    job = self.records.job(replica, job_id) or job
        return job

    def _raise_if_job_failed(self, replica: Replica, job_id: str) -> None:
        job = self._job(replica, job_id)
        if job["status"] == "FAILED":
            raise CheckoutError(f"The checkout of this bundle failed: {job.get('cause')}")

    # --- executions ----------------------------------------------------------------------------------
    def _running(self, execution_id: str) -> bool:
        record = self.workflows.status(execution_id)
        return record is not None and record.status == "RUNNING"

    def _raise_if_failed(self, execution_id: str, what: str) -> None:
        record = self.workflows.status(execution_id)
        if record is not None and record.status == "FAILED":
            raise CheckoutError(f"The checkout of this {what} failed: {record.cause or record.error}")

    def _await(self, done: Callable[[], bool]) -> bool:
        """Poll `done` for at most `wait` seconds; whether it became true."""
        deadline = time.monotonic() + self.wait
        while True:
            if done():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL)
