"""Convergence after a crash between commit and publish (issue 8 §5), piece by piece: the queue's
intents, the anti-entropy pass (replication and indexing), its schedule across processes, and the
start-up clean-up of temp and spool files. The end-to-end SIGKILL tests are in test_crash.py."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dss.checksums import checksum_stream
from dss.config import Config, ConfigError
from dss.events import Event
from dss.events.bus import EventBus, EventWorkers, RetryPolicy, SQLiteEventBus
from dss.events.reconcile import Cancelled, UnsortedListing, _one_sided, reconcile, reindex_missing, resync
from dss.events.reconcile_loop import SPOOL_GRACE, ReconcileLoop, remove_orphans
from dss.identifiers import Replica, new_version
from dss.index.backend import open_search_index
from dss.index.document import doc_id_of, normalise_name, tombstone_document
from dss.runtime import Runtime
from dss.storage.blobstore import BlobStoreFactory
from dss.storage.blobstore.local import LocalBlobStore
from dss.storage.replicas import Replicas
from tests.fixtures.search.backends import BACKENDS, close_backend, open_backend
from tests.infra.dss_server import REPO, base_env
from tests.infra.helpers import new_uuid, poll_until, stage_local
from tests.infra.opensearch import ENGINES
from tests.test_crash import _commit_without_event

# Hang guards: generous, because the suite must pass on a heavily loaded two-core machine.
CONVERGE = 120.0


class RecordingBus(EventBus):
    handlers = ("sync", "index")

    def __init__(self) -> None:
        self.published: list[tuple[Event, tuple[str, ...]]] = []

    def publish(self, event, handlers=None):
        self.published.append((event, tuple(h for h in self.handlers if handlers is None or h in handlers)))


def _replicas(tmp_path: Path) -> Replicas:
    urls = {name: (tmp_path / name).as_uri() for name in ("aws", "gcp")}
    return Replicas(BlobStoreFactory(signing_secret=b"k"), urls)


def _dead_pid() -> int:
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                           check=True)
    return int(child.stdout)


# --- the merge-join -------------------------------------------------------------------------------

@pytest.mark.parametrize("left, right", [
    ([], []), (["a"], []), ([], ["b"]), (["a", "c", "e"], ["b", "c", "d", "f"]), (["a", "b"], ["a", "b"]),
])
def test_one_sided_keys_of_two_sorted_listings(left, right):
    expected = sorted([(k, True) for k in left if k not in right] + [(k, False) for k in right if k not in left])
    assert list(_one_sided(iter(left), iter(right))) == expected


def test_a_listing_out_of_order_is_refused(tmp_path):
    replicas = _replicas(tmp_path)

    class Backwards:
        def __init__(self, store):
            self.store = store

        def list(self, prefix="", start_after=None):
            return iter(sorted(self.store.list(prefix), reverse=True))

    for _ in range(2):
        replicas["aws"].put(f"files/{new_uuid()}.{new_version()}", b"{}")
    replicas._stores[Replica.aws] = Backwards(replicas["aws"])  # type: ignore[assignment]
    with pytest.raises(UnsortedListing):
        resync(replicas, RecordingBus())


# --- replication ----------------------------------------------------------------------------------

def test_resync_drives_each_missing_key_from_the_replica_that_has_it_in_dependency_order(tmp_path):
    replicas = _replicas(tmp_path)
    aws, gcp = replicas["aws"], replicas["gcp"]
    blob = str(checksum_stream(io.BytesIO(b"x"), 1).blob_key)
    file_key, bundle_key = f"files/{new_uuid()}.{new_version()}", f"bundles/{new_uuid()}.{new_version()}"
    shared = f"files/{new_uuid()}.{new_version()}"
    tombstone = f"bundles/{new_uuid()}.dead"
    for store, key in [(aws, blob), (aws, file_key), (aws, bundle_key), (aws, shared), (gcp, shared),
                       (gcp, tombstone), (aws, "files/not-a-dss-key"), (aws, "cache.1/whatever")]:
        store.put(key, b"{}")
    bus = RecordingBus()
    counts = resync(replicas, bus)
    assert set(bus.published) == {(Event("aws", blob), ("sync",)), (Event("aws", file_key), ("sync",)),
                                  (Event("aws", bundle_key), ("sync",)), (Event("gcp", tombstone), ("sync",))}
    kinds = [event.key.split("/")[0] for event, _ in bus.published]
    assert kinds == sorted(kinds, key=["blobs", "files", "bundles"].index)  # dependencies first
    assert counts == {Replica.aws: 3, Replica.gcp: 1}


def test_a_pass_stops_when_cancelled(tmp_path):
    replicas = _replicas(tmp_path)
    replicas["aws"].put(f"files/{new_uuid()}.{new_version()}", b"{}")
    with pytest.raises(Cancelled):
        reconcile(replicas, RecordingBus(), None, cancelled=lambda: True)


# --- indexing -------------------------------------------------------------------------------------

@pytest.fixture(params=["embedded", *ENGINES])
def search(tmp_path, request):
    if request.param in ENGINES:
        index = open_backend(request.param, tmp_path, request)
    else:
        index = open_search_index(f"sqlite://{tmp_path}/search", merge_in_background=False)
    yield index
    close_backend(index)


def test_reindex_finds_bundles_without_documents_and_stale_tombstones(tmp_path, search):
    store = _replicas(tmp_path)["aws"]
    indexed, unindexed, entombed, all_dead, all_dead_done = (new_uuid() for _ in range(5))
    v1, v2 = new_version(), new_version()
    for uuid in (indexed, unindexed, entombed, all_dead, all_dead_done):
        for version in (v1, v2):
            store.put_json(f"bundles/{uuid}.{version}", {"files": []})
    body = {"email": "a@example.org", "reason": "r", "admin_deleted": True}
    store.put_json(f"bundles/{entombed}.{v1}.dead", body)
    store.put_json(f"bundles/{all_dead}.dead", body)
    store.put_json(f"bundles/{all_dead_done}.dead", body)
    for uuid in (indexed, entombed, all_dead, all_dead_done):
        for version in (v1, v2):
            search.index("aws", doc_id_of(uuid, version), {"uuid": uuid, "state": "new"})
    for version in (v1, v2):  # this one's tombstone was indexed: nothing to do
        search.index("aws", doc_id_of(all_dead_done, version), tombstone_document(all_dead_done, version, body))
    search.index("aws", doc_id_of(unindexed, v2), {"uuid": unindexed, "state": "new"})

    bus = RecordingBus()
    assert reindex_missing(store, Replica.aws, bus, search) == 3
    assert sorted(str(e.key) for e, handlers in bus.published if handlers == ("index",)) == sorted([
        f"bundles/{unindexed}.{v1}", f"bundles/{entombed}.{v1}.dead", f"bundles/{all_dead}.dead"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_existing_documents(tmp_path, backend, request):
    index = open_backend(backend, tmp_path, request)
    try:
        index.index("aws", "a.1", {"uuid": "a"})
        index.index("aws", "b.1", {"uuid": "b"})
        index.index("gcp", "c.1", {"uuid": "c"})
        assert index.existing("aws", ["a.1", "c.1", "z.1", "b.1"]) == {"a.1", "b.1"}
        assert index.existing("gcp", []) == set()
    finally:
        close_backend(index)


def test_elasticsearch_asks_for_existing_documents_in_one_request():
    from dss.index.elasticsearch import ElasticsearchSearchIndex
    from tests.test_search_elasticsearch import FakeClient

    class Client(FakeClient):
        def mget(self, index, body, **params):
            self.calls.append(("mget", index, body, params))
            return {"docs": [{"_id": i, "found": i in self.stored} for i in body["ids"]]}

    client = Client()
    index = ElasticsearchSearchIndex(client, stage="dev")
    index.index("aws", "a.1", {"uuid": "a"})
    assert index.existing("aws", ["a.1", "b.1", "subscription-x"]) == {"a.1"}
    assert client.calls[-1] == ("mget", "dss-dev-aws-docs", {"ids": ["a.1", "b.1"]}, {"_source": False})


# --- intents --------------------------------------------------------------------------------------

def _announce_and_die(path: Path, key: str) -> None:
    """A process that announces a write and is killed before it confirms."""
    subprocess.run([sys.executable, "-c", f"""
import os, signal, sys; sys.path.insert(0, {str(REPO)!r})
from pathlib import Path
from dss.events import Event
from dss.events.bus import SQLiteEventBus
SQLiteEventBus(Path({str(path)!r}), handlers=("h",)).intent([Event("aws", {key!r})])
os.kill(os.getpid(), signal.SIGKILL)
"""], check=False)


@pytest.mark.parametrize("committed", [True, False])
def test_the_intent_of_a_killed_writer_runs_if_and_only_if_its_key_exists(tmp_path, committed):
    path = tmp_path / "q.sqlite3"
    bus = SQLiteEventBus(path, handlers=("h",))
    _announce_and_die(path, "bundles/k")
    seen: list[Event] = []
    workers = EventWorkers(bus, {"h": seen.append}, threads=1, exists=lambda event: committed)
    assert not workers.run_once()  # the announcement waits for its writer…
    workers.start()  # …until a start finds that the writer is gone
    try:
        poll_until(lambda: bus.pending() == 0, "the orphaned intent decided", timeout=CONVERGE)
    finally:
        workers.stop()
    assert seen == ([Event("aws", "bundles/k")] if committed else [])


def test_a_confirmed_intent_is_an_ordinary_event_and_a_cancelled_one_vanishes(tmp_path):
    bus = SQLiteEventBus(tmp_path / "q.sqlite3", handlers=("a", "b"))
    seen: list[tuple[str, str]] = []
    workers = EventWorkers(bus, {n: (lambda e, n=n: seen.append((n, e.key))) for n in "ab"}, exists=lambda e: False)
    with bus.intent([Event("aws", "k1")]):
        assert bus.pending() == 2 and bus.lease() is None  # durable, and invisible while the write runs
    with bus.intent([Event("aws", "k2")]) as intent:
        intent.cancel()
    workers.drain(timeout=CONVERGE)
    assert sorted(seen) == [("a", "k1"), ("b", "k1")]


def test_a_write_that_failed_is_checked_at_once(tmp_path):
    bus = SQLiteEventBus(tmp_path / "q.sqlite3", handlers=("h",))
    seen: list[str] = []
    exists = {"written": True, "never": False}
    workers = EventWorkers(bus, {"h": lambda e: seen.append(e.key)}, exists=lambda e: exists[e.key])
    for key in exists:
        with pytest.raises(RuntimeError), bus.intent([Event("aws", key)]):
            raise RuntimeError("the commit's outcome is unknown")
    workers.drain(timeout=CONVERGE)
    assert seen == ["written"]


def test_a_writer_slower_than_the_intent_deadline_still_publishes(tmp_path):
    bus = SQLiteEventBus(tmp_path / "q.sqlite3", handlers=("h",), policy=RetryPolicy(intent=0))
    seen: list[str] = []
    committed = False
    workers = EventWorkers(bus, {"h": lambda e: seen.append(e.key)}, exists=lambda e: committed)
    with bus.intent([Event("aws", "slow")]):
        workers.drain(timeout=CONVERGE)  # checked before the commit: dropped
        assert bus.pending() == 0
        committed = True
    workers.drain(timeout=CONVERGE)  # the confirmation published it again
    assert seen == ["slow"]


def test_an_intent_confirmed_while_a_worker_drops_it_still_runs(tmp_path):
    bus = SQLiteEventBus(tmp_path / "q.sqlite3", handlers=("h",), policy=RetryPolicy(intent=0))
    intent = bus.intent([Event("aws", "raced")])
    message = bus.lease()
    assert message is not None and message.intent  # the worker found no key…
    intent.__exit__(None, None, None)  # …the writer committed and confirmed…
    bus.drop_intent(message)  # …and the worker's drop must not lose the event
    again = bus.lease()
    assert again is not None and again.event.key == "raced" and not again.intent


def test_queues_made_before_intents_are_migrated(tmp_path):
    import sqlite3

    path = tmp_path / "q.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript("""CREATE TABLE messages (id INTEGER PRIMARY KEY AUTOINCREMENT, handler TEXT NOT NULL,
            body TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, due REAL NOT NULL,
            lease_until REAL NOT NULL DEFAULT 0, last_error TEXT, owner TEXT);
            INSERT INTO messages (handler, body, due) VALUES ('h', '{"replica":"aws","key":"old"}', 0);""")
    bus = SQLiteEventBus(path, handlers=("h",))
    seen: list[str] = []
    with bus.intent([Event("aws", "new")]):
        pass
    EventWorkers(bus, {"h": lambda e: seen.append(e.key)}).drain(timeout=CONVERGE)
    assert seen == ["old", "new"]


# --- a writer killed at each moment of a write, with only the queue's intents to recover -------------

_CRASHING_WRITER = """
import fnmatch, os, signal, sys; sys.path.insert(0, {repo!r})
from dss.config import Config
from dss.runtime import Runtime
from dss.identifiers import Replica
from dss.storage.blobstore import local

pattern, moment = {pattern!r}, {moment!r}
commit = local._LocalWriter.commit
def crashing_commit(self):
    if fnmatch.fnmatchcase(self.key, pattern) and moment == "before":
        os.kill(os.getpid(), signal.SIGKILL)
    info = commit(self)
    if fnmatch.fnmatchcase(self.key, pattern) and moment == "after":
        os.kill(os.getpid(), signal.SIGKILL)
    return info
local._LocalWriter.commit = crashing_commit

runtime = Runtime(Config.from_env({env!r}))
runtime.files.put({file_uuid!r}, {version!r}, {source!r}, 1)
runtime.bundles.put({bundle_uuid!r}, {version!r}, Replica.aws, [
    {{"uuid": {file_uuid!r}, "version": {version!r}, "name": "s_0.json", "indexed": True}}], 1)
runtime.bundles.delete({bundle_uuid!r}, Replica.aws, {version!r}, "gone", "admin@example.org")
os.kill(os.getpid(), signal.SIGKILL)  # every write done: still no chance to drain anything
"""


def _crash_writer(env: dict, staging: Path, pattern: str, moment: str) -> tuple[str, str, str]:
    """Run PUT file, PUT bundle and DELETE bundle in a process killed just before or after the commit of
    the first key matching `pattern` (or after all of them)."""
    file_uuid, bundle_uuid, version = new_uuid(), new_uuid(), new_version()
    source = stage_local(staging, json.dumps({"organ": "brain"}).encode(), "s_0.json")
    child = subprocess.run([sys.executable, "-c", _CRASHING_WRITER.format(
        repo=str(REPO), pattern=pattern, moment=moment, env={**env, "DSS_WORKERS": "0"}, file_uuid=file_uuid,
        bundle_uuid=bundle_uuid, version=version, source=source)], capture_output=True, text=True)
    assert child.returncode == -9, child.stderr
    return file_uuid, bundle_uuid, version


MANIFEST, TOMBSTONE = "bundles/*Z", "bundles/*.dead"


@pytest.mark.parametrize("pattern, moment", [
    ("files/*", "before"), ("files/*", "after"), (MANIFEST, "before"), (MANIFEST, "after"),
    (TOMBSTONE, "before"), (TOMBSTONE, "after"), ("nothing", "never"),
])
def test_intents_alone_converge_whatever_the_moment_of_the_crash(tmp_path, staging, pattern, moment):
    env = base_env(tmp_path / "data", staging)
    file_uuid, bundle_uuid, version = _crash_writer(env, staging, pattern, moment)
    runtime = Runtime(Config.from_env(env))
    aws, gcp = runtime.replicas["aws"], runtime.replicas["gcp"]
    runtime.workers.start()  # the queue's workers only: no anti-entropy pass
    try:
        poll_until(lambda: runtime.bus.pending() == 0, "an empty queue", timeout=CONVERGE)
        committed = sorted(aws.list("files/")) + sorted(aws.list("bundles/"))
        assert bool(committed) == ((pattern, moment) != ("files/*", "before"))
        assert any(k.endswith(".dead") for k in committed) == (moment != "before" and pattern in (TOMBSTONE, "nothing"))
        for key in committed:
            assert gcp.exists(key), key
        bundle_keys = [k for k in committed if k.startswith("bundles/")]
        for replica in ("aws", "gcp"):
            document = runtime.search.get(replica, doc_id_of(bundle_uuid, version))
            if not bundle_keys:
                assert document is None
            elif any(k.endswith(".dead") for k in bundle_keys):
                assert document is not None and document["reason"] == "gone"
            else:
                assert document is not None and document["files"][normalise_name("s_0.json")] == [{"organ": "brain"}]
        assert runtime.bus.dead_letters() == []
    finally:
        runtime.close()


def test_a_blob_orphaned_by_a_crash_is_replicated_by_the_pass(tmp_path, staging):
    """Intents announce a blob with its metadata; a crash between the two leaves the blob to the pass."""
    env = base_env(tmp_path / "data", staging)
    _crash_writer(env, staging, "blobs/*", "after")
    runtime = Runtime(Config.from_env(env))
    [blob] = list(runtime.replicas["aws"].list("blobs/"))
    runtime.start()
    try:
        poll_until(lambda: runtime.replicas["gcp"].exists(blob), "the orphaned blob replicated", timeout=CONVERGE)
    finally:
        runtime.close()


# --- the pass over a whole runtime --------------------------------------------------------------

def test_reconcile_repairs_what_older_versions_left(tmp_path, staging):
    """Objects committed with no event at all (a crash before intents existed) reach the other replica
    and both indexes; a second pass then finds nothing to do."""
    runtime = Runtime(Config.from_env(base_env(tmp_path / "data", staging, DSS_WORKERS="0")))
    try:
        aws = runtime.replicas["aws"]
        bundle_uuid, version = _commit_without_event(aws, json.dumps({"organ": "heart"}).encode(), "s_0.json")
        report = runtime.reconciler.run(force=True)
        assert report is not None and report["resynced"] == {"aws": 3, "gcp": 0}
        assert report["reindexed"] == {"aws": 1, "gcp": 0}
        runtime.workers.drain(timeout=CONVERGE)
        for key in aws.list(""):
            assert runtime.replicas["gcp"].exists(key), key
        for replica in ("aws", "gcp"):
            document = runtime.search.get(replica, doc_id_of(bundle_uuid, version))
            assert document["files"][normalise_name("s_0.json")] == [{"organ": "heart"}]
        again = runtime.reconciler.run(force=True)
        assert again is not None and again["resynced"] == {"aws": 0, "gcp": 0}
        assert again["reindexed"] == {"aws": 0, "gcp": 0}
    finally:
        runtime.close()


# --- the schedule ---------------------------------------------------------------------------------

def test_a_start_up_pass_is_skipped_only_if_another_started_after_this_process(tmp_path):
    runs: list[str] = []
    state = tmp_path / "reconcile.json"
    first = ReconcileLoop(lambda stop: runs.append("first") or {}, state, 0, started=time.time() - 10)
    second = ReconcileLoop(lambda stop: runs.append("second") or {}, state, 0, started=time.time() - 5)
    assert first.run(startup=True) == {}
    assert second.run(startup=True) is None  # the first one's pass began after the second started
    late = ReconcileLoop(lambda stop: runs.append("late") or {}, state, 0, started=time.time() + 1)
    assert late.run(startup=True) == {}
    assert runs == ["first", "late"]
    assert json.loads(state.read_text())["report"] == {}


def test_periodic_passes_follow_the_interval_shared_by_all_processes(tmp_path):
    runs: list[int] = []
    state = tmp_path / "reconcile.json"
    loops = [ReconcileLoop(lambda stop, n=n: runs.append(n) or {}, state, 3600) for n in range(2)]
    assert loops[0].run(force=True) == {}
    assert loops[0].run() is None and loops[1].run() is None  # the last pass is recent
    disabled = ReconcileLoop(lambda stop: runs.append(9) or {}, tmp_path / "other.json", 0)
    assert disabled.run() is None and disabled.run(startup=True) == {}
    assert runs == [0, 9]


def test_one_pass_at_a_time_across_processes(tmp_path):
    """Another process holds the pass's lock until the test lets it go; no pass may begin meanwhile, and
    the one waiting begins after the other process let go (by that process's own clock reading, taken
    before it releases: the parent's delays cannot matter)."""
    state = tmp_path / "reconcile.json"
    holder = subprocess.Popen([sys.executable, "-c", f"""
import fcntl, sys, time
handle = open({str(state) + '.lock'!r}, "a+b")
fcntl.flock(handle, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.readline()
print(time.time(), flush=True)  # then it exits, which releases the lock
"""], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    began: list[float] = []
    outcome: list = []
    loop = ReconcileLoop(lambda stop: began.append(time.time()) or {}, state, 0)
    waiting = threading.Thread(target=lambda: outcome.append(loop.run(force=True)), daemon=True)
    try:
        assert holder.stdin is not None and holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
        waiting.start()
        time.sleep(1.0)  # the pass has this long to (wrongly) begin; a busy machine only makes it shorter
        assert not began, "a pass began while another process held the lock"
        holder.stdin.write("go\n")
        holder.stdin.flush()
        released = float(holder.stdout.readline())
        waiting.join(CONVERGE)
        assert not waiting.is_alive(), "the pass never began after the lock was released"
        assert outcome == [{}]
        assert began[0] >= released  # it waited for the other process's pass
    finally:
        loop.stop()  # a pass still waiting for the lock gives up
        holder.kill()
        holder.wait()


def test_the_loop_runs_at_start_up_and_stops_promptly(tmp_path):
    ran = threading.Event()
    loop = ReconcileLoop(lambda stop: ran.set() or {}, tmp_path / "reconcile.json", 3600)
    loop.start()
    try:
        assert ran.wait(CONVERGE)
    finally:
        started = time.monotonic()
        loop.stop()
        assert time.monotonic() - started < 20  # hang guard: the loop waits on an event


def test_a_failed_pass_is_retried(tmp_path):
    attempts: list[int] = []

    def flaky(stop):
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("replica unreachable")
        return {}

    loop = ReconcileLoop(flaky, tmp_path / "reconcile.json", 0, retry=0.05)
    loop.start()
    try:
        poll_until(lambda: len(attempts) == 2 and loop.last_started() > 0, "a retried pass", timeout=CONVERGE)
    finally:
        loop.stop()


@pytest.mark.parametrize("raw, expected", [(None, 3600.0), ("0", 0.0), ("90.5", 90.5)])
def test_reconcile_interval_setting(tmp_path, raw, expected):
    env = {"DSS_DATA_DIR": str(tmp_path)} | ({} if raw is None else {"DSS_RECONCILE_INTERVAL": raw})
    assert Config.from_env(env).reconcile_interval == expected


@pytest.mark.parametrize("raw", ["-1", "soon", "nan"])
def test_reconcile_interval_must_be_a_non_negative_number(tmp_path, raw):
    with pytest.raises(ConfigError, match="DSS_RECONCILE_INTERVAL"):
        Config.from_env({"DSS_DATA_DIR": str(tmp_path), "DSS_RECONCILE_INTERVAL": raw})


# --- orphaned temp and spool files ----------------------------------------------------------------

def test_only_orphaned_temp_and_spool_files_are_removed(tmp_path):
    store = LocalBlobStore(str(tmp_path / "aws"))
    spool = tmp_path / "spool"
    spool.mkdir()
    now = time.time()
    old = now - SPOOL_GRACE - 60
    dead, live = _dead_pid(), os.getpid()
    files = {
        store.tmp_dir / f"{dead}-aaaa": (old, False),  # a killed writer's
        store.tmp_dir / f"{dead}-aaaa.meta": (old, False),
        store.tmp_dir / f"{live}-bbbb": (old, True),  # a live writer's, however old
        store.tmp_dir / f"{dead}-cccc": (now + 5, True),  # newer than this process: someone else's
        store.tmp_dir / "dddd": (old, False),  # named by an older version
        spool / "eeee": (old, False),  # an older version's, unnamed
        spool / "ffff": (now - 5, True),  # unnamed and recent: may still be being written
        spool / f"{dead}-gggg": (now - 5, False),  # a killed writer's, however recent
        spool / f"{live}-hhhh": (old, True),  # a live writer's, however old
    }
    for path, (mtime, _) in files.items():
        path.write_bytes(b"partial")
        os.utime(path, (mtime, mtime))
    assert remove_orphans([store], spool, before=now, now=now) == 5
    assert {path.name for path, (_, kept) in files.items() if kept} == {
        p.name for p in (*store.tmp_dir.iterdir(), *spool.iterdir())}


def test_a_writers_temp_file_names_its_process(tmp_path):
    store = LocalBlobStore(str(tmp_path / "aws"))
    with store.writer("files/x") as writer:
        writer.write(b"...")
        [temp] = list(store.tmp_dir.iterdir())
        assert temp.name.startswith(f"{os.getpid()}-")
        assert store.remove_orphaned_temporaries(before=time.time() + 60) == 0  # its writer is alive


def test_the_operator_command_queues_what_is_missing(tmp_path, staging):
    env = base_env(tmp_path / "data", staging)
    runtime = Runtime(Config.from_env(env))
    try:
        _commit_without_event(runtime.replicas["aws"], b"{}", "x_0.json")
    finally:
        runtime.close()
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "dss-ops.py"), "sync", "reconcile"],
                            capture_output=True, text=True, env={**env, "PATH": "/usr/bin:/bin"}, timeout=CONVERGE)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["resynced"] == {"aws": 3, "gcp": 0} and report["reindexed"] == {"aws": 1, "gcp": 0}
    again = Runtime(Config.from_env(env))
    try:
        assert again.bus.pending() == 4  # for the server's workers (or `events drain`)
    finally:
        again.close()
