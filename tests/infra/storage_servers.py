"""Real storage servers for the tests: moto's S3 server and gcp-storage-emulator, one subprocess each.

Tests reach them the way production reaches S3 and GCS: through the standard variables
(`AWS_ENDPOINT_URL`, `AWS_*` credentials, `STORAGE_EMULATOR_HOST`) set with `monkeypatch`, and
through `BlobStoreFactory`. Each server runs in its own process so it neither shares the tests' GIL
nor moto's global state with in-process mocks.

Run as `python -m tests.infra.storage_servers {moto,gcs}`, this module is also the server: the child
binds a free loopback port, prints its URL on one line and serves until it is terminated. It adds
the one guarantee the contract tests need that neither emulator gives on its own — conditional
creates that are atomic — see `_serialise_conditional_writes` and `_install_generation_preconditions`.
"""
from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from dss.storage.blobstore import BlobStore, BlobStoreFactory

_REPO = Path(__file__).resolve().parents[2]
_STARTUP_TIMEOUT = 60.0
GCP_PROJECT = "dss-test"
# Options for every store the `blobstore` fixture builds; each backend ignores the others' options.
STORE_OPTIONS: dict[str, Any] = {"signing_secret": b"test-secret", "name": "test", "gcp_project": GCP_PROJECT}


# --- parent side: start, wait for, stop ---------------------------------------------------------
def _read_url(process: subprocess.Popen, log_path: Path) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:  # not select.select: a busy test process may hold fds ≥ 1024
        selector.register(process.stdout, selectors.EVENT_READ)
        ready = selector.select(_STARTUP_TIMEOUT)
    line = process.stdout.readline().decode().strip() if ready else ""
    if not line.startswith("http://"):
        process.kill()
        log = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
        raise RuntimeError(f"storage server did not start (exit code {process.poll()}):\n{log}")
    return line


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it has not exited within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def server_process(log_path: Path, module: str, *args: str, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """Runs `python -m module args…` (in `env` if given), which prints its URL on its first line when it
    serves; yields it."""
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=_REPO, env=env,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    try:
        yield _read_url(process, log_path)
    finally:
        stop_process(process)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto S3 server, e.g. `http://127.0.0.1:40123`."""
    with server_process(tmp_path_factory.mktemp("moto") / "server.log", __name__, "moto") as url:
        yield url


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The host URL of a gcp-storage-emulator, for `STORAGE_EMULATOR_HOST`."""
    with server_process(tmp_path_factory.mktemp("gcs") / "server.log", __name__, "gcs") as url:
        yield url


# --- environments and buckets -------------------------------------------------------------------
@pytest.fixture
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Point boto3 at moto only, whatever the developer's own AWS configuration says."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return moto_server


@pytest.fixture
def gcs_env(gcs_emulator: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", GCP_PROJECT)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    return gcs_emulator


def _bucket_name() -> str:
    return f"dss-test-{uuid.uuid4().hex[:16]}"


@pytest.fixture
def new_s3_bucket(aws_env: str) -> Callable[[], str]:
    """Creates a fresh, uniquely named bucket on moto each call; returns its name."""
    import boto3

    client = boto3.client("s3")

    def create() -> str:
        name = _bucket_name()
        client.create_bucket(Bucket=name)
        return name

    return create


@pytest.fixture
def new_gcs_bucket(gcs_env: str) -> Callable[[], str]:
    """Creates a fresh, uniquely named bucket on the emulator each call; returns its name."""
    from google.cloud import storage

    client = storage.Client(project=GCP_PROJECT)

    def create() -> str:
        name = _bucket_name()
        client.create_bucket(name)
        return name

    return create


@pytest.fixture
def s3_bucket(new_s3_bucket: Callable[[], str]) -> str:
    return new_s3_bucket()


@pytest.fixture
def gcs_bucket(new_gcs_bucket: Callable[[], str]) -> str:
    return new_gcs_bucket()


@pytest.fixture(params=["file", "s3", "gs"])
def blobstore(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """A fresh, empty store of each kind, built through `BlobStoreFactory`; servers start on demand."""
    if request.param == "file":
        url = (tmp_path / "blobs").as_uri()
    elif request.param == "s3":
        url = f"s3://{request.getfixturevalue('s3_bucket')}"
    else:
        url = f"gs://{request.getfixturevalue('gcs_bucket')}"
    return BlobStoreFactory(**STORE_OPTIONS).for_url(url)


# --- child side: the servers --------------------------------------------------------------------
def _announce(url: str) -> None:
    """Tell the parent where we listen, then drop stdout: nobody reads the pipe any more."""
    print(url, flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


_DYNAMODB_WRITES = frozenset(f"DynamoDB_20120810.{operation}" for operation in (
    "PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "TransactWriteItems"))


def _serialise_conditional_writes(app: Callable) -> Callable:
    """Make moto's conditional writes atomic, as they are on S3.

    moto checks `If-None-Match: *` and then stores the object in two separate steps while serving
    requests on many threads, so two racing creates can both pass the check. Holding one lock around
    every PUT/POST that carries a precondition closes that window; other requests run as before.
    DynamoDB's writes (whose conditions are in the body) get the same lock: moto evaluates a
    `ConditionExpression` and then applies the update in separate steps too.
    """
    lock = threading.Lock()

    def guarded(environ: dict, start_response: Callable) -> Iterable[bytes]:
        conditional = "HTTP_IF_NONE_MATCH" in environ or "HTTP_IF_MATCH" in environ
        conditional |= environ.get("HTTP_X_AMZ_TARGET", "") in _DYNAMODB_WRITES
        if conditional and environ.get("REQUEST_METHOD") in ("PUT", "POST"):
            with lock:
                return list(app(environ, start_response))
        return app(environ, start_response)

    return guarded


def _serve_moto() -> None:
    import logging

    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = _serialise_conditional_writes(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    os.environ["MOTO_PORT"] = str(server.server_port)  # what `python -m moto.server` sets too
    _announce(f"http://127.0.0.1:{server.server_port}")
    server.serve_forever()


def _install_generation_preconditions() -> None:
    """Teach gcp-storage-emulator `ifGenerationMatch` on uploads, which it ignores.

    GCS evaluates the precondition when an upload completes; `ifGenerationMatch=0` means "only if
    no live object has this name". The emulator serves one request at a time, so a check made just
    before the object is stored is as atomic as GCS's.
    """
    from http import HTTPStatus

    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    pending: dict[str, str] = {}  # resumable upload id → required generation
    media, multipart = objects._media_upload, objects._multipart_upload
    create_resumable, finalize = objects._create_resumable_upload, objects._finalize_resumable_object

    def holds(storage: Any, bucket: str, name: str, wanted: str | None) -> bool:
        if wanted is None:
            return True
        try:
            current = str(storage.get_file_obj(bucket, name)["generation"])
        except NotFound:
            current = "0"
        return current == wanted

    def reject(response: Any) -> None:
        response.status = HTTPStatus.PRECONDITION_FAILED  # the emulator wants an HTTPStatus
        message = "At least one of the pre-conditions you specified did not hold."
        response.json({"error": {"code": 412, "message": message,
                                 "errors": [{"domain": "global", "reason": "conditionNotMet", "message": message}]}})

    def wanted(request: Any) -> str | None:
        return (request.query.get("ifGenerationMatch") or [None])[0]

    def media_upload(request: Any, response: Any, storage: Any) -> None:
        if not holds(storage, request.params["bucket_name"], request.query["name"][0], wanted(request)):
            return reject(response)
        return media(request, response, storage)

    def multipart_upload(request: Any, response: Any, storage: Any) -> None:
        name = (request.query.get("name") or [request.data["meta"].get("name")])[0]
        if not holds(storage, request.params["bucket_name"], name, wanted(request)):
            return reject(response)
        return multipart(request, response, storage)

    def create_resumable_upload(request: Any, response: Any, storage: Any) -> None:
        create_resumable(request, response, storage)
        condition = wanted(request)
        if condition is not None and "upload_id" not in request.query:
            from urllib.parse import parse_qs, urlparse

            upload_id = parse_qs(urlparse(response["Location"]).query)["upload_id"][0]
            pending[upload_id] = condition

    def finalize_resumable_object(response: Any, storage: Any, obj: dict, data: bytes, upload_id: str) -> None:
        if not holds(storage, obj["bucket"], obj["name"], pending.pop(upload_id, None)):
            storage.delete_resumable_file_obj(upload_id)
            return reject(response)
        return finalize(response, storage, obj, data, upload_id)

    objects._media_upload, objects._multipart_upload = media_upload, multipart_upload
    objects._create_resumable_upload = create_resumable_upload
    objects._finalize_resumable_object = finalize_resumable_object


def _serve_gcs() -> None:
    import functools
    from http import server as http_server

    from gcp_storage_emulator.server import RequestHandler
    from gcp_storage_emulator.storage import Storage

    _install_generation_preconditions()
    # The emulator's own server class: one request at a time, which its storage layer relies on.
    httpd = http_server.HTTPServer(("127.0.0.1", 0), functools.partial(RequestHandler, Storage(use_memory_fs=True)))
    _announce(f"http://127.0.0.1:{httpd.server_port}")
    httpd.serve_forever()


if __name__ == "__main__":
    {"moto": _serve_moto, "gcs": _serve_gcs}[sys.argv[1]]()
