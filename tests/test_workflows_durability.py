"""Durability: SIGKILL the process running an execution in the middle of a Map, start a new executor on the
same journal, and the execution completes — no finished item's task runs again; only the ones in flight
at the kill do. The child process is `tests.workflows_support.child_main`; every wait has a generous
bound and nothing here measures speed."""
from __future__ import annotations

import collections
import contextlib
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
ITEMS = 12
# Seconds each item's task takes: long enough that the kill lands before every item has finished. The test
# kills once three items are journalled as finished (one round of MaxConcurrency 3); all twelve take four
# rounds, so the kill has 7.5 s to land, where the parent only has a small query to make.
ITEM_SECONDS = 2.5


def _child(journal: Path, log: Path, *args: object) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.workflows_support", str(journal), str(log),
                             *map(str, args)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _lines(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def _finished_items(journal: Path) -> set[int]:
    """Map items whose scope the journal records as SUCCEEDED (item scopes end in `#<index>`); none while
    the child has not created the journal yet."""
    if not journal.exists():
        return set()
    with contextlib.closing(sqlite3.connect(journal, timeout=60)) as conn:
        try:
            rows = conn.execute("SELECT scope FROM scopes WHERE execution_id = 'durable' AND status = 'SUCCEEDED' "
                                "AND scope != ''").fetchall()
        except sqlite3.OperationalError as err:
            if "no such table" not in str(err):
                raise
            return set()  # the child is still creating the schema
    return {int(scope.rsplit("#", 1)[1]) for (scope,) in rows}


def test_sigkill_mid_map_resumes_without_redoing_finished_items(tmp_path: Path) -> None:
    journal, log = tmp_path / "journal.sqlite3", tmp_path / "calls.log"
    first = _child(journal, log, "start", ITEMS, ITEM_SECONDS)
    try:
        # The journal, not the task's log: a task writes "end" before it returns, and its item is
        # journalled as finished only after that.
        deadline = time.monotonic() + 120
        while len(_finished_items(journal)) < 3:
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
    assert len(finished) >= 3 and len(finished) < ITEMS, (finished, before)

    second = _child(journal, log, "resume")
    assert second.wait(timeout=300) == 0

    starts = collections.Counter(int(line.split()[1]) for line in _lines(log) if line.startswith("start"))
    assert set(starts) == set(range(ITEMS))
    for item in finished:
        assert starts[item] == 1, f"item {item} finished before the kill but ran again"
    for item in in_flight:
        assert starts[item] == 2, f"item {item} was in flight at the kill and should have run again"
    for item in set(range(ITEMS)) - started_before:
        assert starts[item] == 1
    assert len(in_flight) <= 3  # MaxConcurrency

    with Executor(journal) as executor:
        record = executor.describe("durable")
        events = [event.type for event in executor.history("durable")]
    assert record.status == "SUCCEEDED", record
    assert [item["item"] for item in record.output] == list(range(ITEMS))
    assert events.count("ExecutionResumed") == 1
