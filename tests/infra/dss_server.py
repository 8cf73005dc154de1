"""Fixtures that run a real DSS server: in-process on a free port (uvicorn in a thread), or as a
`./dss-api` subprocess for tests that kill it. Each test gets its own data directory."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn

from dss.api import create_app
from dss.auth import mint_token
from dss.config import Config
from dss.runtime import Runtime

REPO = Path(__file__).resolve().parents[2]
ADMIN = "admin@example.org"
USER = "user@example.org"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float = 30.0, process: subprocess.Popen | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            requests.get(url, timeout=1)
            return
        except (requests.ConnectionError, requests.Timeout):  # a busy machine may answer after the 1 s
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def base_env(data_dir: Path, staging: Path, **extra: str) -> dict[str, str]:
    """The settings every test server shares. Background threads keep the API's CPU priority: a test
    waits for background work with a deadline, and on a machine busy with other work lowered threads
    would get a tenth of the CPU (tests/test_background_priority.py checks the lowering itself)."""
    return {"DSS_DATA_DIR": str(data_dir), "DSS_STAGING_ROOTS": str(staging), "DSS_ADMIN_EMAILS": ADMIN,
            "DSS_BUNDLE_FILE_WAIT": "1", "DSS_BACKGROUND_NICE": "0", **extra}


@dataclass
class DSSServer:
    url: str
    runtime: Runtime
    staging: Path
    _server: Any = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def config(self) -> Config:
        return self.runtime.config

    def token(self, email: str = USER, groups: tuple[str, ...] = ("hca",), ttl: int = 3600) -> str:
        return mint_token(self.config, self.runtime.keys, email, groups, ttl)

    def auth(self, email: str = USER, groups: tuple[str, ...] = ("hca",)) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(email, groups)}"}

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            assert self._thread is not None
            self._thread.join(10)
            self._server = None
            self.runtime.close()  # its connections and files: a long test run must not pile them up


def start_server(env: Mapping[str, str], port: int | None = None) -> DSSServer:
    config = Config.from_env({**env, "DSS_PORT": str(port or free_port())})
    runtime = Runtime(config)
    server = uvicorn.Server(uvicorn.Config(create_app(runtime), host="127.0.0.1", port=config.port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{config.port}"
    wait_for(url + "/version")
    return DSSServer(url, runtime, Path(env["DSS_STAGING_ROOTS"]), server, thread)


@pytest.fixture
def staging(tmp_path: Path) -> Path:
    path = tmp_path / "staging"
    path.mkdir()
    return path


@pytest.fixture
def dss_env(tmp_path: Path, staging: Path) -> dict[str, str]:
    """The environment of a server under test; tests may add settings before starting it."""
    return base_env(tmp_path / "data", staging)


@pytest.fixture
def dss(dss_env: dict[str, str]) -> Iterator[DSSServer]:
    server = start_server(dss_env)
    yield server
    server.stop()


@pytest.fixture
def dss_process_factory(tmp_path: Path):
    """Start `./dss-api` as a subprocess in its own process group (it may run several server processes;
    `kill_group` kills them all at once, like a machine failing); all are killed at teardown."""
    processes: list[subprocess.Popen] = []

    def start(env: Mapping[str, str], port: int) -> subprocess.Popen:
        with open(tmp_path / f"server-{len(processes)}.log", "wb") as log:
            process = subprocess.Popen([sys.executable, str(REPO / "dss-api")],
                                       env={**os.environ, **env, "DSS_PORT": str(port)}, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(process)
        wait_for(f"http://127.0.0.1:{port}/version", process=process)
        return process

    yield start
    for process in processes:
        kill_group(process)


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
