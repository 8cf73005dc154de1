"""Durability: SIGKILL the process running an execution in the middle of a Map, start a new executor on the
same journal, and the execution completes — no finished item's task runs again; only the ones in flight
at the kill do. The child process is `tests.workflows_support.child_main`; every wait has a generous
bound and nothing here measures speed."""
from __future__ import annotations

import collections
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dss.workflows import Executor

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[1]


def _child(journal: Path, log: Path, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.workflows_support", str(journal), str(log), mode],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _finished_items(journal: Path) -> set[int]:
    """Map items whose scope the journal records as SUCCEEDED (item scopes end in `#<index>`)."""
    with sqlite3.connect(journal) as conn:
        rows = conn.execute("SELECT scope FROM scopes WHERE execution_id = 'durable' AND status = 'SUCCEEDED' "
                            "AND scope != ''").fetchall()
    return {int(scope.rsplit("#", 1)[1]) for (scope,) in rows}


def test_sigkill_mid_map_resumes_without_redoing_finished_items(tmp_path: Path) -> None:
    journal, log = tmp_path / "journal.sqlite3", tmp_path / "calls.log"
    first = _child(journal, log, "start")
    try:
        deadline = time.monotonic() + 120
        while sum(line.startswith("end") for line in _lines(log)) < 4:
            assert first.poll() is None, "the executor process ended on its own"
            assert time.monotonic() < deadline, "the Map made no progress"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
    before = _lines(log)
    started_before = {int(line.split()[1]) for line in before if line.startswith("start")}
    finished = _finished_items(journal)
    in_flight = started_before - finished
    assert len(finished) >= 3 and len(finished) < 12, (finished, before)

    second = _child(journal, log, "resume")
    assert second.wait(timeout=300) == 0

    starts = collections.Counter(int(line.split()[1]) for line in _lines(log) if line.startswith("start"))
    assert set(starts) == set(range(12))
    for item in finished:
        assert starts[item] == 1, f"item {item} finished before the kill but ran again"
    for item in in_flight:
        assert starts[item] == 2, f"item {item} was in flight at the kill and should have run again"
    for item in set(range(12)) - started_before:
        assert starts[item] == 1
    assert len(in_flight) <= 3  # MaxConcurrency

    with Executor(journal) as executor:
        record = executor.describe("durable")
        events = [event.type for event in executor.history("durable")]
    assert record.status == "SUCCEEDED", record
    assert [item["item"] for item in record.output] == list(range(12))
    assert events.count("ExecutionResumed") == 1
