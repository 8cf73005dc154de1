#!/usr/bin/env python3
"""`make bench`: the project's benchmarks, each against a baseline measured in the same run.

Starts `./dss-api` on a free port with a throw-away data directory and prints one table row per
figure: our measurement, the baseline, their ratio and the target from the issue. Timings are
reported, never asserted. Uses public tools only: the server itself, `cp`, `wrk`, `requests`.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dss.auth import KeyStore, mint_token  # noqa: E402
from dss.config import Config  # noqa: E402
from dss.identifiers import new_version  # noqa: E402

MiB = 1024 * 1024
ROWS: list[tuple[str, str, str, str, str]] = []


def row(name: str, ours: str, baseline: str, ratio: float | None, target: str) -> None:
    ROWS.append((name, ours, baseline, "" if ratio is None else f"{ratio:.2f}", target))
    print(f"  measured: {name}: {ours} (baseline {baseline})", file=sys.stderr)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    def __init__(self, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.staging = workdir / "staging"
        self.staging.mkdir()
        self.env = {**os.environ, "DSS_DATA_DIR": str(workdir / "data"), "DSS_STAGING_ROOTS": str(self.staging),
                    "DSS_PORT": str(free_port()), "DSS_CALLBACK_ALLOWLIST": "127.0.0.1/32", **(extra_env or {})}
        config = Config.from_env(self.env)
        self.token = mint_token(config, KeyStore(config.data_dir / "auth"), "bench@example.org", ["hca"])
        self.url = f"http://127.0.0.1:{config.port}"
        self.log = open(workdir / "server.log", "wb")
        self._launch()

    def restart(self, extra_env: dict[str, str]) -> None:
        """Stop the server and start it again on the same data with these settings changed."""
        self.stop()
        self.env.update(extra_env)
        self._launch()

    def _launch(self) -> None:
        self.process = subprocess.Popen([sys.executable, str(REPO / "dss-api")], env=self.env, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                requests.get(self.url + "/version", timeout=1)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        raise RuntimeError("the server did not start")

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def put_file(self, path: Path, file_uuid: str, version: str) -> requests.Response:
        return requests.put(f"{self.url}/v1/files/{file_uuid}", params={"version": version}, headers=self.auth,
                            json={"source_url": path.as_uri(), "creator_uid": 1}, timeout=600)

    def wait_replicated(self, kind: str, item_uuid: str, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            # HEAD: a GET of a file would also check it out (a copy the benchmark does not measure)
            if requests.head(f"{self.url}/v1/{kind}/{item_uuid}", params={"replica": "gcp"},
                             allow_redirects=False).status_code in (200, 206):  # 206: a paged manifest
                return
            time.sleep(0.2)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def bench_ingest(server: Server, workdir: Path, size: int, rounds: int = 3) -> None:
    """PUT /files of a local file vs a durable plain copy (`cp`, then `sync` of the copy: the server
    fsyncs what it acknowledges, so the baseline must too). Rounds alternate; each round changes the
    file's first bytes so the server cannot find the content already stored. Medians are reported."""
    source = server.staging / "big.bin"
    with open(source, "wb") as out:
        for _ in range(size // (64 * MiB)):
            out.write(os.urandom(64 * MiB))
    copies, ours, digests = [], [], []
    for round_number in range(rounds):
        with open(source, "r+b") as out:
            out.write(round_number.to_bytes(8, "big"))
        subprocess.run(["sync"], check=True)  # neither run pays for the other's dirty pages
        copy = workdir / "copy.bin"
        command = f"cp '{source}' '{copy}' && sync '{copy}'"
        copies.append(timed(lambda: subprocess.run(command, shell=True, check=True)))  # noqa: B023 - run at once
        copy.unlink()
        subprocess.run(["sync"], check=True)
        digests.append(digest_cpu_seconds(size))
        file_uuid = str(uuid.uuid4())
        ours.append(timed(lambda: server.put_file(source, file_uuid, new_version()).raise_for_status()))  # noqa: B023
        server.wait_replicated("files", file_uuid)
    copy_seconds, our_seconds = statistics.median(copies), statistics.median(ours)
    cores = len(os.sched_getaffinity(0))
    digest_seconds = statistics.median(digests) / cores
    limit = max(copy_seconds, digest_seconds)
    gib = f"{size / (1024 * MiB):g} GiB"
    row(f"ingest {gib}, PUT /files from local staging vs cp+sync (median of {rounds})",
        f"{our_seconds:.2f} s", f"{copy_seconds:.2f} s", our_seconds / copy_seconds, "ratio <= 1.5")
    row(f"ingest {gib} vs the limit max(cp+sync, CPU of sha256+sha1+md5+crc32c / {cores} cores = "
        f"{digest_seconds:.2f} s)", f"{our_seconds:.2f} s", f"{limit:.2f} s", our_seconds / limit, "ratio <= 1.1")
    source.unlink()


def digest_cpu_seconds(size: int) -> float:
    """CPU time of the four digests over `size` bytes, one after another on one thread: the work an
    ingest cannot avoid, whatever it runs in parallel."""
    import hashlib

    import google_crc32c

    block = os.urandom(64 * MiB)
    started = time.thread_time()
    for digest in (hashlib.sha256(), hashlib.sha1(), hashlib.md5(), google_crc32c.Checksum()):
        for _ in range(max(1, size // len(block))):
            digest.update(block)
    return time.thread_time() - started


def _wrk(url: str, script: str | None, seconds: int, connections: int) -> float:
    command = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", url]
    if script:
        command[1:1] = ["-s", script]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in output:
        raise RuntimeError(f"wrk saw errors:\n{output}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))


def bench_head(server: Server, workdir: Path, seconds: int) -> None:
    if not shutil.which("wrk"):
        row("HEAD /files requests/s", "wrk not installed", "", None, ">= 1000 req/s")
        return
    path = server.staging / "small.txt"
    path.write_bytes(b"small file")
    file_uuid = str(uuid.uuid4())
    server.put_file(path, file_uuid, new_version()).raise_for_status()
    script = workdir / "head.lua"
    script.write_text('wrk.method = "HEAD"\n')
    heads = _wrk(f"{server.url}/v1/files/{file_uuid}?replica=aws", str(script), seconds, 16)
    trivial = _wrk(f"{server.url}/version", None, seconds, 16)
    row("HEAD /files req/s (16 connections) vs GET /version", f"{heads:.0f} req/s", f"{trivial:.0f} req/s",
        heads / trivial, ">= 1000 req/s")


def _manifest_files(server: Server, count: int) -> list[dict]:
    path = server.staging / "member.json"
    path.write_text('{"member": true}')
    file_uuid, version = str(uuid.uuid4()), new_version()
    server.put_file(path, file_uuid, version).raise_for_status()
    return [{"uuid": file_uuid, "version": version, "name": f"dir/file-{n:05d}.json", "indexed": False}
            for n in range(count)]


def bench_large_bundle(server: Server, count: int) -> None:
    files = _manifest_files(server, count)
    bundle_uuid, version = str(uuid.uuid4()), new_version()
    body = json.dumps({"files": files, "creator_uid": 1})

    def put() -> None:
        response = requests.put(f"{server.url}/v1/bundles/{bundle_uuid}", params={"version": version, "replica": "aws"},
                                headers={**server.auth, "Content-Type": "application/json"}, data=body, timeout=600)
        response.raise_for_status()

    put_seconds = timed(put)
    aws = Path(server.env["DSS_DATA_DIR"]) / "replicas" / "aws"
    key = aws / "bundles" / f"~{bundle_uuid[:2]}" / f"{bundle_uuid}.{version}"
    # Baseline: the same storage work done directly — read each file's metadata, write the manifest.
    meta = aws / "files" / f"~{files[0]['uuid'][:2]}" / f"{files[0]['uuid']}.{files[0]['version']}"

    def direct() -> None:
        entries = [json.loads(meta.read_bytes()) for _ in files]
        with open(server.staging / "baseline-manifest.json", "w") as out:
            json.dump(entries, out)
            out.flush()
            os.fsync(out.fileno())

    direct_seconds = timed(direct)
    row(f"PUT /bundles of {count} files", f"{put_seconds:.2f} s", f"{direct_seconds:.2f} s direct",
        put_seconds / max(direct_seconds, 1e-9), "<= 2 s")

    def read_all() -> int:
        url, params, total = f"{server.url}/v1/bundles/{bundle_uuid}", {"replica": "aws", "per_page": 500}, 0
        while url:
            response = requests.get(url, params=params)
            total += len(response.json()["bundle"]["files"])
            url, params = response.links.get("next", {}).get("url"), {}
        assert total == count, total
        return total

    read_seconds = timed(read_all)
    parse_seconds = timed(lambda: json.loads(key.read_bytes()))
    row(f"GET that manifest through {-(-count // 500)} pages", f"{read_seconds:.2f} s",
        f"{parse_seconds:.3f} s parse", read_seconds / max(parse_seconds, 1e-9), "<= 1 s")
    server.wait_replicated("bundles", bundle_uuid)


class _Receiver:
    """A webhook receiver on loopback that records when each bundle's notification arrived."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        arrivals = self.arrivals = {}

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                arrivals[body["match"]["bundle_uuid"]] = time.perf_counter()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def bench_webhook(server: Server, workdir: Path, quick: bool) -> None:
    """Bundle PUT acknowledged → signed webhook received, against a plain POST to the same receiver."""
    receiver = _Receiver()
    try:
        subscription = requests.put(f"{server.url}/v1/subscriptions", params={"replica": "aws"}, headers=server.auth,
                                    json={"callback_url": receiver.url, "hmac_secret_key": "bench-secret"})
        subscription.raise_for_status()
        files = _manifest_files(server, 1)
        latencies = []
        for _ in range(10 if quick else 30):
            bundle_uuid = str(uuid.uuid4())
            requests.put(f"{server.url}/v1/bundles/{bundle_uuid}", params={"version": new_version(), "replica": "aws"},
                         headers=server.auth, json={"files": files, "creator_uid": 1}).raise_for_status()
            acknowledged = time.perf_counter()
            deadline = acknowledged + 60
            while bundle_uuid not in receiver.arrivals and time.perf_counter() < deadline:
                time.sleep(0.002)
            latencies.append(receiver.arrivals.get(bundle_uuid, deadline) - acknowledged)
        plain = [timed(lambda: requests.post(receiver.url, json={"match": {"bundle_uuid": "x"}})) for _ in range(30)]
        ours, baseline = statistics.median(latencies), statistics.median(plain)
        row("bundle PUT → webhook received, p50 (vs one plain POST)", f"{ours * 1000:.0f} ms",
            f"{baseline * 1000:.1f} ms", ours / baseline, "p50 <= 1 s")
        requests.delete(f"{server.url}/v1/subscriptions/{subscription.json()['uuid']}", params={"replica": "aws"},
                        headers=server.auth)
    finally:
        receiver.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    size = 128 * MiB if args.quick else 1024 * MiB
    with tempfile.TemporaryDirectory(prefix="dss-bench-") as tmp:
        workdir = Path(tmp)
        server = Server(workdir)
        try:
            bench_ingest(server, workdir, size)
            bench_head(server, workdir, 3 if args.quick else 10)
            bench_large_bundle(server, 10000)
            for extra in EXTRA_BENCHMARKS:
                extra(server, workdir, args.quick)
        finally:
            server.stop()
    widths = [max(len(r[i]) for r in ROWS + [HEADER]) for i in range(5)]
    for line in [HEADER] + ROWS:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))
    return 0


HEADER = ("benchmark", "measured", "baseline", "ratio", "target")
EXTRA_BENCHMARKS: list[Callable[[Server, Path, bool], None]] = [bench_webhook]

if __name__ == "__main__":
    sys.exit(main())
