#!/usr/bin/env python3
"""`make bench`, workflows part: large copies on the 202 path, HEAD latency under copies, bundle checkout.

Each figure against a baseline measured in the same run, in the table style of `benchmarks/run.py`:

* `PUT /files` of a large file (1 GiB; `--quick`: 96 MiB) staged in an S3 bucket: time to the 202 and
  time until `HEAD /files/{uuid}` answers 200, against a plain multipart copy (`UploadPartCopy`, boto3's
  managed `copy`) of the same object into another bucket of the same moto server. The DSS `aws` replica is
  a bucket of that moto server (`DSS_AWS_REPLICA_URL`); the `gcp` replica stays the local default.
* `HEAD /files` p99 while four such copies run, against the p99 of the same HEADs on the idle server; and,
  to tell the storage's share from ours, against their p99 while the same S3 work runs with no DSS copy
  (four plain multipart copies and a full read of each object: moto runs on this machine, S3 would not).
* `HEAD /files` p99 on the embedded default (local replicas, no storage service on the machine) while the
  server replicates four such files from `aws` to `gcp`, against the idle server's: the share of DSS's own
  copying and hashing, which runs at the lower priority of background threads (`DSS_BACKGROUND_NICE`).
* Checkout of a bundle of 1,000 small files (`--quick`: 200) on the embedded default (local replicas and
  checkout stores) until its job is SUCCEEDED, against `cp -r` of the same files plus a `sync` of each copy
  (the local store fsyncs what it writes).

Public tools only: moto's S3 server (started on loopback as the tests start it), the server itself, boto3,
requests, cp. Timings are reported, never asserted.

    .venv/bin/python benchmarks/bench_workflows.py [--quick]
"""
from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.run import HEADER, ROWS, MiB, Server, row, timed  # noqa: E402
from dss.checksums import checksum_stream, s3_part_size  # noqa: E402
from dss.identifiers import new_version  # noqa: E402
from tests.infra.storage_servers import server_process  # noqa: E402

POLL = 0.05  # seconds between polls of a status; small against every figure measured
DEADLINE = 1800.0  # seconds: a bound only a hang reaches


@contextmanager
def moto_s3(workdir: Path) -> Iterator[str]:
    """moto's S3 server on loopback (as `tests/infra/storage_servers.py` runs it), with this process's boto3
    pointed at it and nothing of the developer's own AWS configuration; the environment is restored after."""
    saved = dict(os.environ)
    with server_process(workdir / "moto.log", "tests.infra.storage_servers", "moto") as url:
        for name in [name for name in os.environ if name.startswith("AWS_")]:
            del os.environ[name]
        os.environ.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                           "AWS_CONFIG_FILE": str(workdir / "no-aws-config"),
                           "AWS_SHARED_CREDENTIALS_FILE": str(workdir / "no-aws-credentials")})
        try:
            yield url
        finally:
            os.environ.clear()
            os.environ.update(saved)


def _s3_client():
    """A boto3 S3 client that waits as long as moto takes: it completes a multipart upload by concatenating
    the parts in Python (tens of seconds per GiB when busy), past botocore's 60 s read timeout, and a
    retried CompleteMultipartUpload that overlaps the first one fails in moto with a 500."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", config=Config(read_timeout=DEADLINE, retries={"mode": "standard"}))


def _transfer_config(size: int):
    from boto3.s3.transfer import TransferConfig

    part = s3_part_size(size)  # what the hca client uses, so that the staged ETag is the DSS s3_etag
    return TransferConfig(multipart_threshold=part, multipart_chunksize=part)


class Staging:
    """A staging bucket holding large objects as the hca client leaves them: uploaded in the DSS part size
    and tagged with their four checksums. One local file is reused; each object gets different first
    bytes, so that no two objects share a blob (the server would find it stored, or join its copy)."""

    def __init__(self, workdir: Path, size: int) -> None:
        self.s3 = _s3_client()
        self.bucket = f"dss-bench-staging-{uuid.uuid4().hex[:8]}"
        self.s3.create_bucket(Bucket=self.bucket)
        self.size = size
        self.path = workdir / "staged.bin"
        with open(self.path, "wb") as out:
            for _ in range(size // (64 * MiB)):
                out.write(os.urandom(64 * MiB))
            out.write(os.urandom(size % (64 * MiB)))
        self.count = 0

    def stage(self) -> tuple[str, str]:
        """A new object: its key and its `s3://` URL."""
        self.count += 1
        with open(self.path, "r+b") as out:
            out.write(self.count.to_bytes(8, "big"))
        with open(self.path, "rb") as source:
            sums = checksum_stream(source, self.size)
        key = f"{uuid.uuid4()}/big.bin"
        self.s3.upload_file(str(self.path), self.bucket, key, Config=_transfer_config(self.size),
                            ExtraArgs={"ContentType": "application/octet-stream"})
        self.s3.put_object_tagging(Bucket=self.bucket, Key=key, Tagging={"TagSet": [
            {"Key": f"hca-dss-{name}", "Value": value} for name, value in sums.as_dict().items()]})
        return key, f"s3://{self.bucket}/{key}"


def _put(server: Server, source_url: str, file_uuid: str, version: str) -> requests.Response:
    return requests.put(f"{server.url}/v1/files/{file_uuid}", params={"version": version}, headers=server.auth,
                        json={"source_url": source_url, "creator_uid": 1}, timeout=600)


def _head_status(server: Server, file_uuid: str, version: str, session: requests.Session | None = None) -> int:
    return (session or requests).head(f"{server.url}/v1/files/{file_uuid}",
                                      params={"replica": "aws", "version": version}, timeout=60).status_code


def _until(check: Callable[[], bool], what: str) -> float:
    """Polls `check` until true; returns the perf_counter when it was seen true."""
    deadline = time.perf_counter() + DEADLINE
    while time.perf_counter() < deadline:
        if check():
            return time.perf_counter()
        time.sleep(POLL)
    raise RuntimeError(f"{what} did not happen within {DEADLINE} s")


def _size_text(size: int) -> str:
    return f"{size / (1024 * MiB):g} GiB" if size >= 1024 * MiB else f"{size // MiB} MiB"


def bench_async_put(server: Server, staging: Staging) -> None:
    """One large PUT on the 202 path, then the plain copy of the same object between the same stores."""
    key, source_url = staging.stage()
    file_uuid, version = str(uuid.uuid4()), new_version()
    started = time.perf_counter()
    response = _put(server, source_url, file_uuid, version)
    accepted = time.perf_counter()
    if response.status_code != 202:
        raise RuntimeError(f"expected 202, got {response.status_code}: {response.text}")
    visible = _until(lambda: _head_status(server, file_uuid, version) == 200, "HEAD 200 after the copy")
    server.wait_replicated("files", file_uuid, timeout=DEADLINE)  # no replication traffic during the baseline

    baseline_bucket = f"dss-bench-baseline-{uuid.uuid4().hex[:8]}"
    staging.s3.create_bucket(Bucket=baseline_bucket)
    copy_seconds = timed(lambda: staging.s3.copy({"Bucket": staging.bucket, "Key": key}, baseline_bucket, key,
                                                 Config=_transfer_config(staging.size)))
    gib = _size_text(staging.size)
    row(f"PUT /files {gib} from S3 staging: time to the 202 (vs a plain S3 multipart copy)",
        f"{accepted - started:.2f} s", f"{copy_seconds:.2f} s", (accepted - started) / copy_seconds, "<= 1 s")
    row(f"PUT /files {gib} from S3 staging: until HEAD answers 200 (vs the same copy)",
        f"{visible - started:.2f} s", f"{copy_seconds:.2f} s", (visible - started) / copy_seconds, "-")
    staging.s3.delete_object(Bucket=baseline_bucket, Key=key)


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]


def _probe_while(probe: Callable[[], float], work: Callable[[], object]) -> tuple[list[float], float]:
    """Runs `work` on a thread while calling `probe` back to back; the probes' durations and the work's."""
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - re-raised on the main thread below
            failure.append(exc)
        finally:
            done.set()

    started = time.perf_counter()
    threading.Thread(target=run, daemon=True).start()
    samples: list[float] = []
    while not done.is_set():
        samples.append(probe())
    if failure:
        raise failure[0]
    return samples, time.perf_counter() - started


def _head_prober(server: Server, file_uuid: str, version: str) -> Callable[[], float]:
    """One HEAD of the file on a kept-alive connection, timed; warmed up before it is returned."""
    session = requests.Session()

    def head_once() -> float:
        started = time.perf_counter()
        status = _head_status(server, file_uuid, version, session)
        if status != 200:
            raise RuntimeError(f"HEAD answered {status}")
        return time.perf_counter() - started

    for _ in range(20):  # warm the connection and the server's caches alike for every run
        head_once()
    return head_once


def _describe(name: str, samples: list[float], seconds: float | None = None) -> None:
    took = "" if seconds is None else f" ({seconds:.1f} s)"
    print(f"  HEAD during {name}{took}: n={len(samples)} p50 {statistics.median(samples) * 1000:.1f} ms, "
          f"p99 {_p99(samples) * 1000:.1f} ms, max {max(samples) * 1000:.0f} ms", file=sys.stderr)


def bench_head_under_copies(server: Server, staging: Staging, idle_count: int, copies: int = 4) -> None:
    """Sequential HEADs of a small file: on the idle server; while the S3 work of `copies` copies runs with
    no DSS involved (plain multipart copies of the staged objects into another bucket, then a full read of
    each, the verifier's read); and while `copies` large PUTs copy the same objects on the 202 path. The
    middle run tells how much of the slowdown the storage stand-in on this machine (moto) causes alone."""
    small_key = f"{uuid.uuid4()}/small.txt"
    data = b"small file\n"
    staging.s3.put_object(Bucket=staging.bucket, Key=small_key, Body=data)
    sums = checksum_stream(io.BytesIO(data), len(data))
    staging.s3.put_object_tagging(Bucket=staging.bucket, Key=small_key, Tagging={"TagSet": [
        {"Key": f"hca-dss-{name}", "Value": value} for name, value in sums.as_dict().items()]})
    small_uuid, small_version = str(uuid.uuid4()), new_version()
    _put(server, f"s3://{staging.bucket}/{small_key}", small_uuid, small_version).raise_for_status()
    sources = [staging.stage() for _ in range(copies)]
    server.wait_replicated("files", small_uuid, timeout=DEADLINE)

    head_once = _head_prober(server, small_uuid, small_version)
    idle = [head_once() for _ in range(idle_count)]

    other = f"dss-bench-plain-{uuid.uuid4().hex[:8]}"
    staging.s3.create_bucket(Bucket=other)

    def plain_work(key: str) -> None:
        s3 = _s3_client()
        s3.copy({"Bucket": staging.bucket, "Key": key}, other, key, Config=_transfer_config(staging.size))
        body = s3.get_object(Bucket=staging.bucket, Key=key)["Body"]
        while body.read(8 * MiB):
            pass
        s3.delete_object(Bucket=other, Key=key)

    def plain_copies() -> None:
        with ThreadPoolExecutor(copies) as pool:
            list(pool.map(plain_work, [key for key, _ in sources]))

    storage_only, plain_seconds = _probe_while(head_once, plain_copies)

    targets = [(str(uuid.uuid4()), new_version()) for _ in sources]

    def dss_copies() -> None:
        with ThreadPoolExecutor(copies) as pool:
            answers = list(pool.map(lambda item: _put(server, item[0][1], *item[1]), zip(sources, targets)))
        if any(answer.status_code != 202 for answer in answers):
            raise RuntimeError(f"expected 202s, got {[answer.status_code for answer in answers]}")
        pending = list(targets)
        deadline = time.perf_counter() + DEADLINE
        while pending and time.perf_counter() < deadline:
            time.sleep(0.25)
            pending = [t for t in pending if _head_status(server, *t) != 200]
        if pending:
            raise RuntimeError(f"{len(pending)} copies did not finish within {DEADLINE} s")

    busy, copied = _probe_while(head_once, dss_copies)
    for file_uuid, _ in targets:
        server.wait_replicated("files", file_uuid, timeout=DEADLINE)
    idle_p99, plain_p99, busy_p99 = _p99(idle), _p99(storage_only), _p99(busy)
    for name, samples, seconds in (("idle", idle, None), ("storage work alone", storage_only, plain_seconds),
                                   (f"{copies} DSS copies", busy, copied)):
        _describe(name, samples, seconds)
    gib = _size_text(staging.size)
    row(f"HEAD /files p99 while {copies} copies of {gib} run (vs idle p99)",
        f"{busy_p99 * 1000:.1f} ms", f"{idle_p99 * 1000:.1f} ms", busy_p99 / idle_p99, "ratio <= 2")
    row(f"HEAD /files p99 while {copies} copies run (vs the same S3 work with no DSS copy: moto's own load)",
        f"{busy_p99 * 1000:.1f} ms", f"{plain_p99 * 1000:.1f} ms", busy_p99 / plain_p99, "-")


def bench_head_under_replication(workdir: Path, size: int, idle_count: int, copies: int = 4) -> None:
    """HEADs of a small file on the embedded default (local replicas) while the server replicates `copies`
    files of `size` from `aws` to `gcp` (the `sync-large-blob` workflow: every byte moved and hashed by DSS,
    no storage service on the machine), against the same HEADs on the idle server. The files are
    registered with the workers off; the server then restarts with them on, and replication begins."""
    server = Server(workdir, {"DSS_WORKERS": "0"})
    try:
        small = server.staging / "small.txt"
        small.write_bytes(b"small file\n")
        small_uuid, small_version = str(uuid.uuid4()), new_version()
        server.put_file(small, small_uuid, small_version).raise_for_status()
        block = os.urandom(64 * MiB)
        targets = []
        for n in range(copies):
            path = server.staging / f"large-{n}.bin"
            with open(path, "wb") as out:  # `size` bytes, the first 8 telling the files apart
                out.write(n.to_bytes(8, "big"))
                while out.tell() < size:
                    out.write(block[:size - out.tell()])
            targets.append(str(uuid.uuid4()))
            server.put_file(path, targets[-1], new_version()).raise_for_status()
            path.unlink()
        subprocess.run(["sync"], check=True)
        head_once = _head_prober(server, small_uuid, small_version)
        idle = [head_once() for _ in range(idle_count)]
        server.restart({"DSS_WORKERS": "2"})  # the default: replication starts
        head_once = _head_prober(server, small_uuid, small_version)
        busy, seconds = _probe_while(head_once, lambda: [server.wait_replicated("files", target, timeout=DEADLINE)
                                                         for target in targets])
    finally:
        server.stop()
    _describe("idle (embedded default)", idle)
    _describe(f"{copies} local replications", busy, seconds)
    row(f"HEAD /files p99 while {copies} files of {_size_text(size)} replicate on the embedded default (vs idle p99)",
        f"{_p99(busy) * 1000:.1f} ms", f"{_p99(idle) * 1000:.1f} ms", _p99(busy) / _p99(idle), "ratio <= 2")


def bench_checkout(workdir: Path, count: int) -> None:
    """A bundle of `count` small files checked out on the embedded default vs `cp -r` + sync of the files."""
    server = Server(workdir)
    try:
        source = server.staging / "bundle"
        names = [f"dir{n % 7}/file-{n:04d}.txt" for n in range(count)]
        for n, name in enumerate(names):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes(f"file {n}\n".encode() * (n % 13 + 1))

        def register(name: str) -> dict:
            file_uuid, version = str(uuid.uuid4()), new_version()
            _put(server, (source / name).as_uri(), file_uuid, version).raise_for_status()
            return {"uuid": file_uuid, "version": version, "name": name, "indexed": False}

        with ThreadPoolExecutor(8) as pool:
            files = list(pool.map(register, names))
        bundle_uuid = str(uuid.uuid4())
        requests.put(f"{server.url}/v1/bundles/{bundle_uuid}", params={"version": new_version(), "replica": "aws"},
                     headers=server.auth, json={"files": files, "creator_uid": 1}, timeout=600).raise_for_status()
        server.wait_replicated("bundles", bundle_uuid, timeout=DEADLINE)  # replication done: an idle server

        started = time.perf_counter()
        response = requests.post(f"{server.url}/v1/bundles/{bundle_uuid}/checkout", params={"replica": "aws"},
                                 json={}, timeout=60)
        response.raise_for_status()
        job_url = f"{server.url}/v1/bundles/checkout/{response.json()['checkout_job_id']}"
        final: dict = {}

        def finished() -> bool:
            final.update(requests.get(job_url, params={"replica": "aws"}, timeout=60).json())
            return final["status"] != "RUNNING"

        ended = _until(finished, "the bundle checkout")
        if final["status"] != "SUCCEEDED":
            raise RuntimeError(f"the checkout ended {final}")
        ours = ended - started

        subprocess.run(["sync"], check=True)
        copy = workdir / "cp-copy"
        command = f"cp -r '{source}' '{copy}' && find '{copy}' -type f -exec sync {{}} +"
        baseline = timed(lambda: subprocess.run(command, shell=True, check=True))
        plain = timed(lambda: subprocess.run(["cp", "-r", str(source), str(workdir / "cp-plain")], check=True))
        print(f"  checkout baseline without sync: cp -r {plain:.2f} s", file=sys.stderr)
        row(f"checkout of a {count}-file bundle until SUCCEEDED (vs cp -r + sync of each file)",
            f"{ours:.2f} s", f"{baseline:.2f} s", ours / baseline, "<= 5 s")
    finally:
        server.stop()


def print_table() -> None:
    widths = [max(len(r[i]) for r in ROWS + [HEADER]) for i in range(5)]
    for line in [HEADER] + ROWS:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    size = 96 * MiB if args.quick else 1024 * MiB  # above the default DSS_ASYNC_COPY_THRESHOLD (64 MiB)
    with tempfile.TemporaryDirectory(prefix="dss-bench-workflows-") as tmp:
        workdir = Path(tmp)
        (workdir / "checkout").mkdir()
        bench_checkout(workdir / "checkout", 200 if args.quick else 1000)
        (workdir / "replication").mkdir()
        bench_head_under_replication(workdir / "replication", size, 300 if args.quick else 1000)
        shutil.rmtree(workdir / "replication")  # 8 GB of replicas at full size
        (workdir / "s3").mkdir()
        with moto_s3(workdir):
            staging = Staging(workdir, size)
            replica = f"dss-bench-replica-{uuid.uuid4().hex[:8]}"
            staging.s3.create_bucket(Bucket=replica)
            server = Server(workdir / "s3", {"DSS_AWS_REPLICA_URL": f"s3://{replica}"})
            try:
                bench_async_put(server, staging)
                bench_head_under_copies(server, staging, 300 if args.quick else 1000)
            finally:
                server.stop()
    print_table()
    return 0


if __name__ == "__main__":
    sys.exit(main())
