"""Background work yields the CPU to the API: the threads `Runtime.start()` starts (and every thread they
start) run `DSS_BACKGROUND_NICE` lower than the threads serving requests (Linux schedules each thread on
its own nice value)."""
from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import requests

from dss.config import Config
from dss.processes import lower_thread_priority
from dss.runtime import Runtime
from tests.infra.dss_server import base_env, start_server

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="per-thread nice values are Linux's")


def nice_of(thread: threading.Thread | None = None) -> int:
    return os.getpriority(os.PRIO_PROCESS, (thread or threading.current_thread()).native_id)


def in_thread(action):
    """`action()`'s result, run on a new thread (a niced thread cannot get its priority back)."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(action()))
    thread.start()
    thread.join(30)
    return result[0]


def test_lowering_applies_to_the_calling_thread_and_what_it_starts():
    base = nice_of()

    def lowered() -> tuple[bool, int, int]:
        applied = lower_thread_priority(3)
        child: list[int] = []
        started = threading.Thread(target=lambda: child.append(nice_of()))
        started.start()
        started.join()
        return applied, nice_of(), child[0]

    assert in_thread(lowered) == (True, min(19, base + 3), min(19, base + 3))
    assert nice_of() == base  # the caller's own thread is untouched
    assert in_thread(lambda: (lower_thread_priority(0), nice_of())) == (False, base)
    assert in_thread(lambda: (lower_thread_priority(50), nice_of())) == (True, 19)  # capped, not refused


def test_the_runtime_starts_its_workers_lowered_and_serves_requests_unchanged(tmp_path: Path):
    base = nice_of()
    staging = tmp_path / "staging"
    staging.mkdir()
    before = set(threading.enumerate())
    server = start_server(base_env(tmp_path / "data", staging, DSS_BACKGROUND_NICE="4"))
    try:
        assert requests.get(server.url + "/version", timeout=10).status_code == 200
        started = set(threading.enumerate()) - before
        ours = {thread for thread in started if thread.name.startswith("dss-")}
        names = {thread.name.rstrip("0123456789") for thread in ours}
        assert {"dss-events-", "dss-workflows-owner", "dss-reconcile", "dss-journal-compactor"} <= names
        assert {thread.name: nice_of(thread) for thread in ours} == {thread.name: min(19, base + 4) for thread in ours}
        # the server's threads, the one serving requests among them, keep the API's priority
        assert server._thread in started - ours
        assert {thread.name: nice_of(thread) for thread in started - ours} == {
            thread.name: base for thread in started - ours}
        assert nice_of() == base
    finally:
        server.stop()


def test_a_runtime_without_workers_lowers_nothing(tmp_path: Path):
    base = nice_of()
    runtime = Runtime(Config.from_env({"DSS_DATA_DIR": str(tmp_path / "data"), "DSS_WORKERS": "0"}))
    before = set(threading.enumerate())
    try:
        runtime.start()
        assert nice_of() == base
        assert set(threading.enumerate()) - before == set()  # nothing started, so nothing lowered
    finally:
        runtime.close()
