"""Real search engines for the search tests: an OpenSearch node and an Elasticsearch 7.10 node, each
one per session, on free loopback ports.

`make opensearch` and `make elasticsearch7` (dependencies of `make test`) fetch them from Maven Central
into `.opensearch/` and `.elasticsearch/`: each engine's integration-test distribution plus the
percolator and analysis-common modules (tests/opensearch/, tests/elasticsearch7/). The `opensearch_url`
and `elasticsearch7_url` fixtures start a node with a small heap, single-node discovery and no security
plugin, wait for green and stop it at the end of the session. Tests share a node and keep apart by index
name (each opens its backend with a stage of its own). A node that does not start fails the tests that
asked for it; it never skips them. With DSS_TEST_ES_URL (OpenSearch) or DSS_TEST_ES7_URL set, that
cluster is used instead.

Both engines refuse to run as root, so as root (CI) a node runs as `nobody`, in a directory of its own
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
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.infra.dss_server import REPO, free_port

__all__ = ["Engine", "OPENSEARCH", "ELASTICSEARCH7", "ENGINES", "opensearch_url", "elasticsearch7_url", "engine_url",
           "unique_stage", "start_node", "SearchNode", "search_server_env", "search_engine_env", "ALL_ENGINES"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Engine:
    """One search engine's installation and the names its start script reads."""
    key: str  # the test parameter and the fixture's prefix
    name: str
    version: str
    home: Path
    program: str  # bin/<program> starts it; lib/<program>-<version>.jar is its server jar
    java_home_variable: str  # the environment variables its start script reads
    path_conf_variable: str
    tmpdir_variable: str
    jvm_extra: str  # JVM options the engine's own jvm.options would have set
    make_target: str

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"


OPENSEARCH = Engine(
    key="opensearch", name="OpenSearch", version="2.19.6",
    home=REPO / ".opensearch" / "opensearch-2.19.6", program="opensearch",
    java_home_variable="OPENSEARCH_JAVA_HOME", path_conf_variable="OPENSEARCH_PATH_CONF",
    tmpdir_variable="OPENSEARCH_TMPDIR", make_target="make opensearch",
    jvm_extra="-Djava.util.concurrent.ForkJoinPool.common.threadFactory="
              "org.opensearch.secure_sm.SecuredForkJoinWorkerThreadFactory\n")
# The last Apache-licensed Elasticsearch, which AWS still offers as a managed engine.
ELASTICSEARCH7 = Engine(
    key="elasticsearch7", name="Elasticsearch", version="7.10.2",
    home=REPO / ".elasticsearch" / "elasticsearch-7.10.2", program="elasticsearch",
    java_home_variable="JAVA_HOME", path_conf_variable="ES_PATH_CONF", tmpdir_variable="ES_TMPDIR",
    make_target="make elasticsearch7", jvm_extra="")
ENGINES = {engine.key: engine for engine in (OPENSEARCH, ELASTICSEARCH7)}
START_TIMEOUT = 180.0  # generous: a busy 2-core machine; it usually takes under 10 s
JVM_OPTIONS = """\
-Xms256m
-Xmx{heap}
-Djava.io.tmpdir=${{{tmpdir}}}
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
        raise RuntimeError("the search engines need Java 17 (java is not on PATH; `make opensearch` installs it)")
    return str(Path(java).resolve().parents[1])


def _nobody_can_run(engine: Engine) -> bool:
    check = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "test", "-x",
             str(engine.home / "bin" / engine.program), "-a", "-r",
             str(engine.home / "lib" / f"{engine.program}-{engine.version}.jar")]
    return subprocess.run(check, check=False).returncode == 0


class SearchNode:
    def __init__(self, engine: Engine = OPENSEARCH, heap: str = "512m", quick_start: bool = True) -> None:
        home = engine.home
        if not (home / "bin" / engine.program).exists() or not (home / "modules" / "percolator").is_dir():
            raise RuntimeError(f"no {engine.name} installation in {home}: run `{engine.make_target}`")
        self.engine = engine
        self.heap = heap
        self.quick_start = quick_start
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.startup_seconds = 0.0
        # Not under pytest's own temporary directory: that one is private to root, and as root the node
        # runs as nobody.
        self.directory = Path(tempfile.mkdtemp(prefix=f"dss-{engine.key}-"))
        self.process: subprocess.Popen[bytes] | None = None
        self._watchdog: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.directory / "console.log"

    def start(self, timeout: float = START_TIMEOUT) -> None:
        conf, data, logs, tmp = (self.directory / name for name in ("conf", "data", "logs", "tmp"))
        engine = self.engine
        shutil.copytree(engine.home / "config", conf)
        (conf / "jvm.options").write_text(JVM_OPTIONS.format(heap=self.heap, tmpdir=engine.tmpdir_variable)
                                          + engine.jvm_extra + (QUICK_START_OPTIONS if self.quick_start else ""))
        for path in (data, logs, tmp):
            path.mkdir()
        command = [
            str(engine.home / "bin" / engine.program),
            "-Ecluster.name=dss-test", "-Enode.name=dss-test", "-Ediscovery.type=single-node",
            "-Enetwork.host=127.0.0.1", f"-Ehttp.port={self.port}", f"-Etransport.port={free_port()}",
            f"-Epath.data={data}", f"-Epath.logs={logs}",
            "-Ecluster.routing.allocation.disk.threshold_enabled=false",  # a full disk must not block writes
            "-Eaction.destructive_requires_name=false",
        ]
        if os.geteuid() == 0:
            if not _nobody_can_run(engine):  # a checkout under a private directory: use a copy
                home = self.directory / "home"
                shutil.copytree(engine.home, home, symlinks=True)
                command[0] = str(home / "bin" / engine.program)
            shutil.chown(self.directory, "nobody", "nogroup")
            for root, dirs, files in os.walk(self.directory):
                for name in dirs + files:
                    shutil.chown(Path(root) / name, "nobody", "nogroup")
            command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *command]
        env = {**os.environ, engine.java_home_variable: _java_home(), engine.path_conf_variable: str(conf),
               engine.tmpdir_variable: str(tmp)}
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
                message = f"{engine.name} exited with status {self.process.returncode}:\n{self.log_tail()}"
                self.stop()
                raise RuntimeError(message)
            try:
                health = requests.get(f"{self.url}/_cluster/health",
                                      params={"wait_for_status": "green", "timeout": "1s"}, timeout=5)
                if health.status_code == 200 and health.json().get("status") == "green":
                    self.startup_seconds = time.monotonic() - started
                    logger.info("%s is green at %s after %.1f s", engine.label, self.url, self.startup_seconds)
                    return
            except requests.RequestException:
                pass
            time.sleep(0.25)
        message = f"{engine.name} was not green within {timeout:.0f} s:\n{self.log_tail()}"
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


def start_node(engine: Engine = OPENSEARCH, heap: str = "512m", quick_start: bool = True) -> SearchNode:
    node = SearchNode(engine, heap=heap, quick_start=quick_start)
    node.start()
    return node


def _session_node(engine: Engine, external_variable: str) -> Iterator[str]:
    """The URL of a green node of `engine` (the cluster at `external_variable` if set); failing to start
    fails the test."""
    external = os.environ.get(external_variable)
    if external:
        yield external
        return
    node = start_node(engine)
    print(f"\n{engine.label} green at {node.url} after {node.startup_seconds:.1f} s")
    try:
        yield node.url
    finally:
        node.stop()


@pytest.fixture(scope="session")
def opensearch_url() -> Iterator[str]:
    yield from _session_node(OPENSEARCH, "DSS_TEST_ES_URL")


@pytest.fixture(scope="session")
def elasticsearch7_url() -> Iterator[str]:
    yield from _session_node(ELASTICSEARCH7, "DSS_TEST_ES7_URL")


@pytest.fixture(params=list(ENGINES))
def engine_url(request: pytest.FixtureRequest) -> str:
    """The URL of each real engine's node in turn."""
    return str(request.getfixturevalue(f"{request.param}_url"))


def search_server_env(url: str) -> dict[str, str]:
    """Settings for a DSS server whose search is the node at `url`, with index names of its own."""
    return {"DSS_SEARCH_URL": url, "DSS_DEPLOYMENT_STAGE": unique_stage("api"), "DSS_SEARCH_REFRESH_WRITES": "1"}


# Runs a test on every search engine: for tests whose DSS server takes `dss_env` merged with
# `search_engine_env` (tests/test_search_api.py, tests/test_subscriptions_e2e.py, tests/test_hca_client.py).
ALL_ENGINES = pytest.mark.parametrize("search_engine_env", ["embedded", *ENGINES], indirect=True)


@pytest.fixture
def search_engine_env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The server settings of one search engine (`embedded` unless ALL_ENGINES parametrises it)."""
    engine = getattr(request, "param", "embedded")
    if engine == "embedded":
        return {}
    return search_server_env(request.getfixturevalue(f"{engine}_url"))
