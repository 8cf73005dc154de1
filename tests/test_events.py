"""The embedded event queue: fan-out per handler, retries, dead letters, restarts and orphaned leases."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from dss.events import Event
from dss.events.bus import EventWorkers, RetryPolicy, SQLiteEventBus
from tests.infra.dss_server import REPO
from tests.infra.helpers import poll_until

FAST = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, lease=60)
DRAIN = 120.0  # hang guard for draining a handful of events: generous, for a busy machine


def test_each_handler_gets_each_event(tmp_path):
    bus = SQLiteEventBus(tmp_path / "q.sqlite3", handlers=("a", "b"), policy=FAST)
    seen: dict[str, list[str]] = {"a": [], "b": []}
    workers = EventWorkers(bus, {name: (lambda e, n=name: seen[n].append(e.key)) for name in seen})
    for n in range(5):
        bus.publish(Event("aws", f"bundles/{n}"))
    workers.drain(timeout=DRAIN)
    assert seen == {"a": [f"bundles/{n}" for n in range(5)], "b": [f"bundles/{n}" for n in range(5)]}
    assert bus.pending() == 0


def test_failures_retry_then_dead_letter(tmp_path):
    bus = SQLiteEventBus(tmp_path / "q.sqlite3", handlers=("flaky", "broken"), policy=FAST)
    calls = {"flaky": 0, "broken": 0}

    def flaky(event: Event) -> None:
        calls["flaky"] += 1
        if calls["flaky"] < 2:
            raise RuntimeError("transient")

    def broken(event: Event) -> None:
        calls["broken"] += 1
        raise RuntimeError("always")

    workers = EventWorkers(bus, {"flaky": flaky, "broken": broken})
    bus.publish(Event("aws", "files/x"))
    workers.drain(timeout=DRAIN)
    assert calls == {"flaky": 2, "broken": 3}
    dead = bus.dead_letters()
    assert [(d["handler"], d["attempts"]) for d in dead] == [("broken", 3)] and "always" in dead[0]["last_error"]


def test_pending_work_survives_a_restart(tmp_path):
    path = tmp_path / "q.sqlite3"
    SQLiteEventBus(path, handlers=("h",)).publish(Event("gcp", "bundles/kept"))
    reopened = SQLiteEventBus(path, handlers=("h",))
    seen: list[Event] = []
    EventWorkers(reopened, {"h": seen.append}).drain(timeout=DRAIN)
    assert seen == [Event("gcp", "bundles/kept")]


def test_leases_of_dead_processes_are_released_at_start(tmp_path):
    """A worker killed mid-handler must not hold its message for the whole lease."""
    path = tmp_path / "q.sqlite3"
    bus = SQLiteEventBus(path, handlers=("h",), policy=RetryPolicy(lease=3600))
    bus.publish(Event("aws", "bundles/orphan"))
    child = subprocess.run([sys.executable, "-c", f"""
import sys; sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from dss.events.bus import SQLiteEventBus, RetryPolicy
assert SQLiteEventBus(Path({str(path)!r}), handlers=("h",), policy=RetryPolicy(lease=3600)).lease() is not None
"""], check=True)
    assert child.returncode == 0
    assert bus.lease() is None  # still leased by the (now dead) child
    seen: list[Event] = []
    workers = EventWorkers(bus, {"h": seen.append}, threads=1)
    workers.start()
    try:
        deadline = time.monotonic() + 60  # generous: busy machines
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        workers.stop()
    assert seen == [Event("aws", "bundles/orphan")]


def test_a_killed_but_unreaped_lease_holder_counts_as_dead(tmp_path):
    """A zombie still answers kill(pid, 0); its lease must be released all the same."""
    path = tmp_path / "q.sqlite3"
    bus = SQLiteEventBus(path, handlers=("h",), policy=RetryPolicy(lease=3600))
    bus.publish(Event("aws", "bundles/zombie"))
    child = subprocess.Popen([sys.executable, "-c", f"""
import sys, time; sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from dss.events.bus import SQLiteEventBus, RetryPolicy
assert SQLiteEventBus(Path({str(path)!r}), handlers=("h",), policy=RetryPolicy(lease=3600)).lease() is not None
print("leased", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "leased"
        child.kill()  # not waited for: a zombie until the test ends
        released = [0]  # the signal takes effect when the kernel gets to it: until then the child is alive

        def release() -> None:
            released[0] += bus.release_orphans()

        poll_until(lambda: released[0] >= 1, "the killed child's lease released", release)
        assert released[0] == 1
        assert bus.lease() is not None
    finally:
        child.wait()


def test_stop_is_prompt(tmp_path):
    bus = SQLiteEventBus(tmp_path / "q.sqlite3", handlers=("h",))
    workers = EventWorkers(bus, {"h": lambda e: None}, threads=2)
    workers.start()
    started = time.monotonic()
    workers.stop()
    # A hang guard, generous for a loaded machine: idle workers wait on an event, not a long sleep.
    assert time.monotonic() - started < 20


@pytest.mark.parametrize("text", ['{"replica": "aws", "key": "k"}', '{"replica": "aws", "key": "k", "action": "x"}'])
def test_event_json_round_trip(text):
    event = Event.from_json(text)
    assert Event.from_json(event.to_json()) == event
