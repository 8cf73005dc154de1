"""The events journal (issue 10 §2): every bundle CREATE, TOMBSTONE and DELETE of a replica, compacted
into journals that replay exactly; GET /v1/events and /v1/events/{uuid}; the real hca client.

The replay test writes bundles from several client threads while compaction runs, SIGKILLs the server
once, restarts it and writes more; replaying every journal from the first must then yield each bundle
version in the replica exactly once, in (timestamp, event_id, event_type) order. `EVENTS_REPLAY_BUNDLES`
sets how many bundles it writes (default 1,000: 35-70 s here, depending on the load; the issue's figure is 10,000).
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from dss.auth import KeyStore, mint_token
from dss.config import Config
from dss.identifiers import ObjectKey, Replica, new_version
from dss.journal import PENDING, EventJournal
from dss.journal.compactor import compact_all
from dss.journal.verify import verify_journal
from dss.storage.blobstore.local import LocalBlobStore
from tests.infra.dss_server import ADMIN, REPO, base_env, free_port, kill_group, start_server
from tests.infra.helpers import add_file, new_uuid, poll_until, put_bundle

REPLAY_BUNDLES = int(os.environ.get("EVENTS_REPLAY_BUNDLES") or 1000)
DEADLINE = 240.0  # hang guard for polling, generous for a loaded machine
FAST = {"DSS_EVENTS_JOURNAL_SIZE": "3", "DSS_EVENTS_COMPACT_INTERVAL": "0.1"}


def _replay(url: str, replica: str, **params: str) -> tuple[list[dict], list[tuple[dict, dict]]]:
    """(streams, [(event entry, its document)]) of every journal, following the Link headers."""
    streams, events = [], []
    response = requests.get(f"{url}/v1/events", params={"replica": replica, "per_page": "10", **params}, timeout=60)
    while True:
        assert response.status_code in (200, 206), response.text
        assert response.headers["X-OpenAPI-Paginated-Content-Key"] == "event_streams"
        for stream in response.json()["event_streams"]:
            streams.append(stream)
            data = requests.get(stream["stream_url"], timeout=60).content
            for event in stream["events"]:
                events.append((event, json.loads(data[event["offset"]:event["offset"] + event["size"]])))
        if response.status_code == 200:
            assert "Link" not in response.headers
            return streams, events
        response = requests.get(response.links["next"]["url"], timeout=60)


def _assert_exact(streams: list[dict], events: list[tuple[dict, dict]]) -> dict[str, set[str]]:
    """Journals are contiguous and ordered, every event once; returns event ids per type."""
    keys = [(e["timestamp"], e["event_id"], e["event_type"]) for e, _ in events]
    assert keys == sorted(keys) and len(set(keys)) == len(keys), "replay out of order or repeated"
    assert len({(k[1], k[2]) for k in keys}) == len(keys), "an event appears twice"
    for previous, stream in zip(streams, streams[1:]):
        assert previous["to_date"] < stream["from_date"]
    for stream in streams:
        assert stream["size"] == len(stream["events"])
        assert stream["from_date"] == stream["events"][0]["timestamp"]
        assert stream["to_date"] == stream["events"][-1]["timestamp"]
    by_type: dict[str, set[str]] = {"CREATE": set(), "TOMBSTONE": set(), "DELETE": set()}
    for event, document in events:
        assert document["event_type"] == event["event_type"]
        assert f"{document['bundle_info']['uuid']}.{document['bundle_info']['version']}" == event["event_id"]
        by_type[event["event_type"]].add(event["event_id"])
    return by_type


def _compacted(url: str, replica: str, expected: set[str], kind: str = "CREATE") -> Callable[[], bool]:
    """Whether the journals list every event of `expected` (read from the listings, not the streams)."""
    def check() -> bool:
        found, response = set(), requests.get(f"{url}/v1/events", params={"replica": replica, "per_page": "10"})
        while True:
            found |= {e["event_id"] for s in response.json()["event_streams"] for e in s["events"]
                      if e["event_type"] == kind}
            if response.status_code != 206:
                return found >= expected
            response = requests.get(response.links["next"]["url"], timeout=60)
    return check


@pytest.fixture
def fast_dss(dss_env):
    server = start_server({**dss_env, **FAST})
    yield server
    server.stop()


def test_journals_shapes_paging_and_stream_contents(fast_dss):
    dss = fast_dss
    indexed = add_file(dss, json.dumps({"organ": "pancreas"}).encode(), "cell_suspension_0.json")
    unindexed = {**add_file(dss, json.dumps({"lab": "x"}).encode(), "links.json"), "indexed": False}
    written = set()
    for _ in range(7):
        uuid, version = new_uuid(), new_version()
        assert put_bundle(dss, [indexed, unindexed], uuid, version).status_code == 201
        written.add(f"{uuid}.{version}")
    poll_until(_compacted(dss.url, "aws", written), "7 bundles in aws journals", timeout=DEADLINE)
    streams, events = _replay(dss.url, "aws")
    # journals of at most DSS_EVENTS_JOURNAL_SIZE; a partial one once its events waited the compaction interval
    assert len(streams) >= 3 and all(1 <= s["size"] <= 3 for s in streams) and len(events) == 7
    assert {k for k in streams[0]} == {"journal_id", "from_date", "to_date", "size", "events", "stream_url"}
    assert set(streams[0]["events"][0]) == {"event_id", "event_type", "timestamp", "offset", "size"}
    event, document = events[0]
    assert document["event_type"] == "CREATE" and document["manifest"]["files"][0]["name"] == "cell_suspension_0.json"
    # as in the original: every JSON file of the manifest, indexed or not
    assert document["files"] == {"cell_suspension_json": [{"organ": "pancreas"}], "links_json": [{"lab": "x"}]}

    # one stream per page: 206 + Link with the next journal's from_date as token, then 200
    first = requests.get(f"{dss.url}/v1/events", params={"replica": "aws"})
    assert first.status_code == 206 and len(first.json()["event_streams"]) == 1
    assert "token=" in first.links["next"]["url"] and first.headers["X-OpenAPI-Pagination"] == "true"
    second = requests.get(first.links["next"]["url"])
    assert second.status_code == 206 and second.json()["event_streams"][0]["journal_id"] == streams[1]["journal_id"]
    last = requests.get(f"{dss.url}/v1/events", params={"replica": "aws", "token": streams[-1]["from_date"]})
    assert last.status_code == 200 and last.headers["X-OpenAPI-Pagination"] == "false"
    assert [s["journal_id"] for s in last.json()["event_streams"]] == [streams[-1]["journal_id"]]

    # ranges: journals overlapping [from_date, to_date]
    middle = requests.get(f"{dss.url}/v1/events", params={
        "replica": "aws", "from_date": streams[1]["to_date"], "to_date": streams[1]["to_date"], "per_page": 10})
    assert [s["journal_id"] for s in middle.json()["event_streams"]] == [streams[1]["journal_id"]]
    before = requests.get(f"{dss.url}/v1/events", params={"replica": "aws", "to_date": "2001-01-01T000000.000000Z"})
    assert before.status_code == 200 and before.json() == {"event_streams": []}

    # a stream URL is signed: tampering with it is refused
    url = streams[0]["stream_url"]
    assert requests.get(url.replace("signature=", "signature=x")).status_code in (403, 404)


def test_list_events_refuses_bad_parameters(dss):
    for params, code in [
        ({"from_date": "2020-01-02T000000.000000Z", "to_date": "2020-01-01T000000.000000Z"}, "bad_request"),
        ({"from_date": "yesterday"}, "illegal_version"),
        ({"to_date": "2020-01-01T000000.000000"}, "illegal_version"),
        ({"token": "not-a-date"}, "illegal_token"),
        ({"per_page": "11"}, None),
        ({"per_page": "0"}, None),
        ({"replica": "azure"}, None),
    ]:
        response = requests.get(f"{dss.url}/v1/events", params={"replica": "aws", **params})
        assert response.status_code == 400, (params, response.text)
        assert response.headers["Content-Type"].startswith("application/problem+json")
        assert code is None or response.json()["code"] == code, (params, response.text)


def test_get_event_tombstone_and_delete(fast_dss):
    dss = fast_dss
    entry = add_file(dss, json.dumps({"a": 1}).encode(), "project_0.json")
    uuid, other_uuid = new_uuid(), new_uuid()
    versions = [new_version() for _ in range(3)]
    for version in versions:
        assert put_bundle(dss, [entry], uuid, version).status_code == 201
    assert put_bundle(dss, [entry], other_uuid, versions[0]).status_code == 201

    def event(u: str, v: str, replica: str = "aws") -> requests.Response:
        return requests.get(f"{dss.url}/v1/events/{u}", params={"version": v, "replica": replica})

    created = poll_until(lambda: (r := event(uuid, versions[0])).status_code == 200 and r, "the CREATE event",
                         timeout=DEADLINE)
    assert created.json()["event_type"] == "CREATE"
    assert created.json()["bundle_info"] == {"uuid": uuid, "version": versions[0]}
    assert created.json()["files"] == {"project_json": [{"a": 1}]}
    assert event(new_uuid(), versions[0]).status_code == 404
    assert event(uuid, "2001-01-01T000000.000000Z").json()["code"] == "not_found"
    assert event("not-a-uuid", versions[0]).status_code == 400
    assert event(uuid, "nonsense").json()["code"] == "illegal_version"
    # replicated to gcp: the journal there records it too
    poll_until(lambda: event(uuid, versions[0], "gcp").status_code == 200, "the CREATE event in gcp",
               timeout=DEADLINE)

    admin = {"Authorization": f"Bearer {dss.token(ADMIN)}"}
    deleted = requests.delete(f"{dss.url}/v1/bundles/{uuid}", params={"replica": "aws", "version": versions[0]},
                              headers=admin, json={"reason": "bad metadata"})
    assert deleted.status_code == 200, deleted.text
    tomb = poll_until(lambda: (r := event(uuid, versions[0])).json().get("event_type") == "TOMBSTONE" and r,
                      "the TOMBSTONE event", timeout=DEADLINE)
    assert tomb.json()["reason"] == "bad metadata" and tomb.json()["bundle_info"]["version"] == versions[0]
    assert requests.delete(f"{dss.url}/v1/bundles/{uuid}", params={"replica": "aws"}, headers=admin,
                           json={"reason": "withdrawn"}).status_code == 200
    for version in versions[1:]:
        doc = poll_until(lambda v=version: (r := event(uuid, v)).json().get("event_type") == "DELETE" and r, "DELETE",
                         timeout=DEADLINE)
        assert doc.json()["bundle_info"] == {"uuid": uuid, "version": version}
        assert doc.json()["manifest"] == {"version": version} and doc.json()["reason"] == "withdrawn"
    assert event(uuid, versions[0]).json()["event_type"] == "TOMBSTONE"  # no DELETE on top of its own tombstone
    assert event(other_uuid, versions[0]).json()["event_type"] == "CREATE"

    everything = {f"{uuid}.{v}" for v in versions}
    poll_until(_compacted(dss.url, "aws", {f"{uuid}.{v}" for v in versions[1:]}, "DELETE"), "DELETE events in journals",
               timeout=DEADLINE)
    by_type = _assert_exact(*_replay(dss.url, "aws"))
    assert by_type["CREATE"] == everything | {f"{other_uuid}.{versions[0]}"}
    assert by_type["TOMBSTONE"] == {f"{uuid}.{versions[0]}"}
    assert by_type["DELETE"] == {f"{uuid}.{v}" for v in versions[1:]}


def test_late_and_duplicate_events_are_neither_lost_nor_reordered(blobstore):
    """A recorder stalled between taking its time and writing (its `recorded` time is older than a journal
    compacted meanwhile), a recorder retried after its event was compacted, and two compactors racing; on
    every blob store backend (local disk, S3 on moto, the GCS emulator)."""
    store = blobstore
    journals = [EventJournal(store, journal_size=4), EventJournal(store, journal_size=4)]
    recorded: list[str] = []
    for n in range(10):
        uuid, version = new_uuid(), new_version()
        journals[n % 2].record("CREATE", uuid, version, {"n": n})
        recorded.append(f"{uuid}.{version}")
    stalled_uuid, stalled_version = new_uuid(), "2001-01-01T000000.000000Z"
    stalled_time = new_version()  # taken now, written after the next compaction

    threads = [threading.Thread(target=j.compact) for j in journals]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    first = journals[0].latest()
    assert first is not None and first.seq == 2 and [len(journals[0].journal(s).events) for s in (1, 2)] == [4, 4]

    store.put_json(f"{PENDING}{stalled_uuid}.{stalled_version}.CREATE", {
        "event_id": f"{stalled_uuid}.{stalled_version}", "event_type": "CREATE", "recorded": stalled_time,
        "document": {"event_type": "CREATE", "bundle_info": {"uuid": stalled_uuid, "version": stalled_version}}})
    assert not journals[1].record("CREATE", *recorded[0].split(".", 1), {"n": 0})  # retried, already compacted
    store.put_json(f"{PENDING}{recorded[1]}.CREATE", {  # the same, racing the check
        "event_id": recorded[1], "event_type": "CREATE", "recorded": new_version(), "document": {}})
    assert compact_all({Replica.aws: journals[1]}, 0) == {"aws": 1}

    events = [e for seq in (1, 2, 3) for e in journals[0].journal(seq).events]
    assert sorted(e.event_id for e in events) == sorted([*recorded, f"{stalled_uuid}.{stalled_version}"])
    keys = [(e.timestamp, e.event_id) for e in events]
    assert keys == sorted(keys)
    late = next(e for e in events if e.event_id == f"{stalled_uuid}.{stalled_version}")
    assert late.timestamp > journals[0].journal(2).to_date  # re-dated after what was already compacted
    assert not list(store.list(PENDING))
    assert journals[0].document(stalled_uuid, stalled_version)["bundle_info"]["version"] == stalled_version
    report = verify_journal(journals[0])
    assert (report.journals, report.events, report.problems) == (3, 11, [])
    stream = store.get(journals[0].journal(3).stream_key).decode()
    assert [json.loads(line)["bundle_info"]["uuid"] for line in stream.splitlines()] == \
        [e.event_id.split(".")[0] for e in journals[0].journal(3).events]


# --- the replay test ----------------------------------------------------------------------------------
def _writer(url: str, token: str, files: list[dict], todo: list[int], acked: list[str], lock: threading.Lock,
            stop: threading.Event) -> None:
    rng = random.Random(threading.get_ident())
    session = requests.Session()
    headers = {"Authorization": f"Bearer {token}"}
    while not stop.is_set():
        with lock:
            if not todo:
                return
            todo.pop()
        uuid = new_uuid()
        # client-chosen versions: most now, some in the past (older than journals already compacted)
        version = new_version() if rng.random() < 0.8 else f"20{rng.randint(10, 25)}-0{rng.randint(1, 9)}-1" \
            f"{rng.randint(0, 9)}T{rng.randint(10, 23)}0000.{rng.randint(0, 999999):06d}Z"
        try:
            response = session.put(f"{url}/v1/bundles/{uuid}", params={"version": version, "replica": "aws"},
                                   headers=headers, json={"creator_uid": 1, "files": rng.sample(files, 2)}, timeout=60)
        except requests.ConnectionError:
            return  # the server was killed
        assert response.status_code == 201, response.text
        with lock:
            acked.append(f"{uuid}.{version}")


def _write(url: str, token: str, files: list[dict], count: int, acked: list[str], threads: int = 8,
           kill_after: int | None = None, kill: Callable[[], None] | None = None) -> None:
    todo, lock, stop = list(range(count)), threading.Lock(), threading.Event()
    workers = [threading.Thread(target=_writer, args=(url, token, files, todo, acked, lock, stop))
               for _ in range(threads)]
    start = len(acked)
    for worker in workers:
        worker.start()
    if kill is not None and kill_after is not None:
        while len(acked) - start < kill_after and any(w.is_alive() for w in workers):
            time.sleep(0.005)
        kill()
        stop.set()
    for worker in workers:
        worker.join(120)


@pytest.mark.slow
@pytest.mark.timeout(300 + REPLAY_BUNDLES // 5)  # a hang guard: 10,000 bundles took 436 s here, at a load of 9-20
def test_replay_is_exact_across_concurrent_writers_compaction_and_sigkill(tmp_path, staging, dss_process_factory):
    env = base_env(tmp_path / "data", staging, DSS_EVENTS_JOURNAL_SIZE="10", DSS_EVENTS_COMPACT_INTERVAL="0.5",
                   DSS_WORKERS="8")
    config = Config.from_env(env)
    token = mint_token(config, KeyStore(config.data_dir / "auth"), "writer@example.org", ["hca"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = dss_process_factory(env, port)
    files = []
    for n in range(4):  # a few pre-registered files that every bundle names
        source = staging / f"f{n}.json"
        source.write_text(json.dumps({"n": n}))
        file_uuid, version = new_uuid(), new_version()
        response = requests.put(f"{url}/v1/files/{file_uuid}", params={"version": version},
                                headers={"Authorization": f"Bearer {token}"},
                                json={"source_url": source.as_uri(), "creator_uid": 1})
        assert response.status_code == 201, response.text
        files.append({"uuid": file_uuid, "version": version, "name": f"f{n}.json", "indexed": True})

    acked: list[str] = []
    started = time.monotonic()
    first_wave = REPLAY_BUNDLES // 2
    _write(url, token, files, first_wave, acked, kill_after=first_wave // 2, kill=lambda: kill_group(server))
    before_kill = len(acked)
    dss_process_factory(env, port)  # restart on the same data
    _write(url, token, files, REPLAY_BUNDLES - before_kill, acked)
    written = time.monotonic() - started
    print(f"\nwrote {len(acked)} in {written:.1f} s")

    aws = LocalBlobStore(str(config.data_dir / "replicas" / "aws"))
    stored = {key.split("/", 1)[1] for key in aws.list("bundles/") if not ObjectKey.parse(key).dead}  # type: ignore
    assert set(acked) <= stored and len(acked) >= REPLAY_BUNDLES - first_wave // 2
    poll_until(_compacted(url, "aws", stored), f"{len(stored)} bundles in aws journals",
               timeout=max(DEADLINE, len(stored) / 10))
    print(f"journaled at {time.monotonic() - started:.1f} s")
    streams, events = _replay(url, "aws")
    by_type = _assert_exact(streams, events)
    # every bundle committed, acknowledged or caught by the kill, exactly once (no other events were made)
    assert by_type["CREATE"] == stored and len(events) == len(stored)
    assert all(s["size"] <= 10 for s in streams) and len(streams) >= len(stored) / 10  # compacted many times
    verify = subprocess.run([sys.executable, str(REPO / "scripts" / "dss-ops.py"), "journal", "verify",
                             "--replica", "aws"],
                            capture_output=True, text=True, timeout=DEADLINE, env={**env, "PATH": "/usr/bin:/bin"})
    assert verify.returncode == 0, verify.stdout + verify.stderr
    print(f"\nreplay: {len(acked)} acked ({before_kill} before the kill), {len(stored)} stored, "
          f"{len(streams)} journals; writes took {written:.1f} s, total {time.monotonic() - started:.1f} s")


# --- the real hca client ----------------------------------------------------------------------------
def _hca(tmp_path: Path, url: str) -> Callable[..., str]:
    binary = os.environ.get("DSS_HCA_BIN") or str(REPO / ".venv-hca" / "bin" / "hca")
    if not Path(binary).exists():
        pytest.fail(f"The hca client is not installed at {binary}: run `make hca-client` (make test does).")
    home = tmp_path / "hca-config"
    (home / "hca").mkdir(parents=True)
    swagger = f"{url}/v1/swagger.json"
    (home / "hca" / "config.json").write_text(json.dumps({
        "DSSClient": {"swagger_url": swagger}, "AuthClient": {"swagger_url": swagger},
        "application_secrets": {"installed": {"client_id": "local"}}}))
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("DSS_")}, "XDG_CONFIG_HOME": str(home)}

    def run(*args: str) -> str:
        result = subprocess.run([binary, *args], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert result.returncode == 0, f"hca {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout
    return run


@pytest.mark.slow
def test_hca_get_events_and_get_event(tmp_path, fast_dss):
    dss = fast_dss
    entry = add_file(dss, json.dumps({"organ": "heart"}).encode(), "specimen_0.json")
    written = set()
    for _ in range(5):
        uuid, version = new_uuid(), new_version()
        assert put_bundle(dss, [entry], uuid, version).status_code == 201
        written.add(f"{uuid}.{version}")
    poll_until(_compacted(dss.url, "aws", written), "5 bundles in journals", timeout=DEADLINE)
    hca = _hca(tmp_path, dss.url)
    listed = json.loads(hca("dss", "get-events", "--replica", "aws"))  # the CLI follows every Link
    assert listed["event_streams"] == [{**s, "stream_url": listed["event_streams"][n]["stream_url"]}
                                       for n, s in enumerate(_replay(dss.url, "aws")[0])]
    assert {e["event_id"] for s in listed["event_streams"] for e in s["events"]} == written
    uuid, version = sorted(written)[0].split(".", 1)
    document = json.loads(hca("dss", "get-event", "--uuid", uuid, "--version", version, "--replica", "aws"))
    assert document["event_type"] == "CREATE" and document["files"] == {"specimen_json": [{"organ": "heart"}]}
