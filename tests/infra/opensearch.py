"""A real OpenSearch node for the search tests: one per session, on free loopback ports.

`make opensearch` (a dependency of `make test`) fetches it from Maven Central into `.opensearch/`: the
integration-test distribution plus the percolator and analysis-common modules (tests/opensearch/).
The `opensearch_url` fixture starts it with a small heap, single-node discovery and no security plugin,
waits for green and stops it at the end of the session. Tests share the node and keep apart by index
name (each opens its backend with a stage of its own). A node that does not start fails the tests that
asked for it; it never skips them. With DSS_TEST_ES_URL set, that cluster is used instead.

OpenSearch refuses to run as root, so as root (CI) the node runs as `nobody`, in a directory of its own
under the system temporary directory.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.infra.dss_server import REPO, free_port

__all__ = ["OPENSEARCH_HOME", "opensearch_url", "unique_stage", "start_opensearch", "OpenSearchNode",
           "opensearch_server_env", "search_engine_env", "BOTH_ENGINES"]

logger = logging.getLogger(__name__)

OPENSEARCH_VERSION = "2.19.6"
OPENSEARCH_HOME = REPO / ".opensearch" / f"opensearch-{OPENSEARCH_VERSION}"
START_TIMEOUT = 180.0  # generous: a busy 2-core machine; it usually takes under 10 s
JVM_OPTIONS = """\
-Xms256m
-Xmx{heap}
-Djava.io.tmpdir=${OPENSEARCH_TMPDIR}
-Djava.util.concurrent.ForkJoinPool.common.threadFactory=org.opensearch.secure_sm.SecuredForkJoinWorkerThreadFactory
"""
# For the tests: a quicker start (C1 only, no concurrent collector) at the cost of peak speed; the
# benchmark leaves them out.
QUICK_START_OPTIONS = "-XX:+UseSerialGC\n-XX:TieredStopAtLevel=1\n"
# Kills the node's process group once its stdin closes, i.e. when the process that started the node dies
# without stopping it (pytest killed by a timeout or a signal): no JVM outlives the run.
_WATCHDOG = """\
import os, signal, sys
sys.stdin.buffer.read()
try:
    os.killpg(int(sys.argv[1]), signal.SIGKILL)
except ProcessLookupError:
    pass
"""


def unique_stage(prefix: str = "t") -> str:
    """A deployment stage no other test uses, so that index names never collide on the shared node."""
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def _java_home() -> str:
    for name in ("OPENSEARCH_JAVA_HOME", "JAVA_HOME"):
        if os.environ.get(name):
            return os.environ[name]
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("OpenSearch needs Java 17 (java is not on PATH; `make opensearch` installs it)")
    return str(Path(java).resolve().parents[1])


def _nobody_can_run(home: Path) -> bool:
    check = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "test", "-x",
             str(home / "bin" / "opensearch"), "-a", "-r", str(home / "lib" / f"opensearch-{OPENSEARCH_VERSION}.jar")]
    return subprocess.run(check, check=False).returncode == 0


class OpenSearchNode:
    def __init__(self, home: Path = OPENSEARCH_HOME, heap: str = "512m", quick_start: bool = True) -> None:
        if not (home / "bin" / "opensearch").exists() or not (home / "modules" / "percolator").is_dir():
            raise RuntimeError(f"no OpenSearch installation in {home}: run `make opensearch`")
        self.home = home
        self.heap = heap
        self.quick_start = quick_start
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_seconds = 0.0
        # Not under pytest's own temporary directory: that one is private to root, and as root the node
        # runs as nobody.
        self.directory = Path(tempfile.mkdtemp(prefix="dss-opensearch-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "console.log"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        conf, data, logs, tmp = (self.directory / name for name in ("conf", "data", "logs", "tmp"))
        shutil.copytree(self.home / "config", conf)
        (conf / "jvm.options").write_text(JVM_OPTIONS.replace("{heap}", self.heap)
                                          + (QUICK_START_OPTIONS if self.quick_start else ""))
        for path in (data, logs, tmp):
            path.mkdir()
        command = [
            str(self.home / "bin" / "opensearch"),
            "-Ecluster.name=dss-test", "-Enode.name=dss-test", "-Ediscovery.type=single-node",
            "-Enetwork.host=127.0.0.1", f"-Ehttp.port={self.port}", f"-Etransport.port={free_port()}",
            f"-Epath.data={data}", f"-Epath.logs={logs}",
            "-Ecluster.routing.allocation.disk.threshold_enabled=false",  # a full disk must not block writes
            "-Eaction.destructive_requires_name=false",
        ]
        if os.geteuid() == 0:
            if not _nobody_can_run(self.home):  # a checkout under a private directory: use a copy
                home = self.directory / "home"
                shutil.copytree(self.home, home, symlinks=True)
                command[0] = str(home / "bin" / "opensearch")
            shutil.chown(self.directory, "nobody", "nogroup")
            for root, dirs, files in os.walk(self.directory):
                for name in dirs + files:
                    shutil.chown(Path(root) / name, "nobody", "nogroup")
            command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
        env = {**os.environ, "OPENSEARCH_JAVA_HOME": _java_home(), "OPENSEARCH_PATH_CONF": str(conf),
               "OPENSEARCH_TMPDIR": str(tmp)}
        env.pop("JAVA_TOOL_OPTIONS", None)
        started = time.monotonic()
        with open(self.log_path, "wb") as console:
            self.process = subprocess.Popen(command, cwd=self.directory, env=env, stdout=console,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self._watchdog = subprocess.Popen([sys.executable, "-c", _WATCHDOG, str(self.process.pid)],
                                          stdin=subprocess.PIPE, start_new_session=True)
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                message = f"OpenSearch exited with status {self.process.returncode}:\n{self.log_tail()}"
                self.stop()
                raise RuntimeError(message)
            try:
                health = requests.get(f"{self.url}/_cluster/health",
                                      params={"wait_for_status": "green", "timeout": "1s"}, timeout=5)
                if health.status_code == 200 and health.json().get("status") == "green":
                    self.startup_seconds = time.monotonic() - started
                    logger.info("OpenSearch %s is green at %s after %.1f s", OPENSEARCH_VERSION, self.url,
                                self.startup_seconds)
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        message = f"OpenSearch was not green within {timeout:.0f} s:\n{self.log_tail()}"
        self.stop()
        raise RuntimeError(message)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self._watchdog is not None:  # an orderly stop: the watchdog is not needed
            self._watchdog.kill()
            self._watchdog.wait()
            if self._watchdog.stdin is not None:
                self._watchdog.stdin.close()
            self._watchdog = None
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.directory, ignore_errors=True)


def start_opensearch(heap: str = "512m", quick_start: bool = True) -> OpenSearchNode:
    node = OpenSearchNode(heap=heap, quick_start=quick_start)
    node.start()
    return node


@pytest.fixture(scope="session")
def opensearch_url() -> Iterator[str]:
    """The URL of a green OpenSearch node (DSS_TEST_ES_URL's if set); failing to start fails the test."""
    external = os.environ.get("DSS_TEST_ES_URL")
    if external:
        yield external
        return
    node = start_opensearch()
    print(f"\nOpenSearch {OPENSEARCH_VERSION} green at {node.url} after {node.startup_seconds:.1f} s")
    try:
        yield node.url
    finally:
        node.stop()


def opensearch_server_env(url: str) -> dict[str, str]:
    """Settings for a DSS server whose search is the node at `url`, with index names of its own."""
    return {"DSS_SEARCH_URL": url, "DSS_DEPLOYMENT_STAGE": unique_stage("api"), "DSS_SEARCH_REFRESH_WRITES": "1"}


# Runs a test on both search engines: for tests whose DSS server takes `dss_env` merged with
# `search_engine_env` (tests/test_search_api.py, tests/test_subscriptions_e2e.py, tests/test_hca_client.py).
BOTH_ENGINES = pytest.mark.parametrize("search_engine_env", ["embedded", "opensearch"], indirect=True)


@pytest.fixture
def search_engine_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The server settings of one search engine (`embedded` unless BOTH_ENGINES parametrises it)."""
    if getattr(request, "param", "embedded") == "embedded":
        return {}
    return opensearch_server_env(request.getfixturevalue("opensearch_url"))
