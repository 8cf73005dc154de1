#!/usr/bin/env python3
"""`make fuzz`: schemathesis against the contract as a real `dss-api` serves it.

    .venv/bin/python scripts/fuzz.py [--max-examples N] [--seed S] [--min-requests N] [--deterministic]
                                     [--include-path-regex REGEX]

Starts, on loopback only, moto's S3 server and a GCS emulator (so that `s3://` and `gs://` sources
answer from this machine, never from a cloud or a metadata server), then `./dss-api` on a free port with
a fresh data directory and one administrator, whose token `scripts/dss-ops.py token` mints. Schemathesis
loads /v1/swagger.json from that server and runs its phases with a fixed seed, checking that no
response is a server error, that every status, content type, body and header is one the spec
documents, and that a method the spec does not list gets 405 with `Allow`. Everything started here is
stopped at the end. Exit status 0 means no failure and at least --min-requests requests sent (counted
in schemathesis's HAR report); the server's log is searched for errors of background work too.

This file is also schemathesis's hooks module (`SCHEMATHESIS_HOOKS=fuzz` with scripts/ on the path):
versions are generated in DSS_VERSION format, and every callback URL is pointed at a closed loopback
port, so that the server neither resolves nor contacts the hosts schemathesis makes up.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[1]
ADMIN = "fuzz-admin@example.org"
CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance",
          "response_schema_conformance", "response_headers_conformance", "unsupported_method")
CALLBACK = "127.0.0.1:9"  # the discard port, closed here: deliveries fail at once, on this machine
STAGING_VARIABLE = "DSS_FUZZ_STAGING"  # tells the hooks where the server's staging root is
VERSION_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{6}\.[0-9]{6}Z$"


# --- hooks (run inside the schemathesis process) --------------------------------------------------
def _versions() -> st.SearchStrategy[str]:
    moments = st.datetimes(min_value=datetime.datetime(1970, 1, 1), max_value=datetime.datetime(2100, 1, 1))
    # Mostly real versions, so that requests get past validation; sometimes pattern-shaped impossible ones.
    return st.one_of(moments.map(lambda m: m.strftime("%Y-%m-%dT%H%M%S.%fZ")),
                     moments.map(lambda m: m.strftime("%Y-%m-%dT%H%M%S.%fZ")),
                     st.from_regex(VERSION_PATTERN, fullmatch=True))


schemathesis.openapi.format("DSS_VERSION", _versions())


def _loopback_callback(url: object) -> object:
    if not isinstance(url, str):
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url
    if not parts.netloc:
        return url
    return urllib.parse.urlunsplit(parts._replace(netloc=CALLBACK))


def _staged(url: object) -> object:
    """Every other generated file:// source becomes a real staged file (named and filled after the URL, so
    runs repeat), so that PUT /files also succeeds and the reads linked from it find something."""
    staging = os.environ.get(STAGING_VARIABLE)
    if not staging or not isinstance(url, str) or not url.startswith("file://"):
        return url
    digest = hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()
    if int(digest[0], 16) % 2:
        return url
    path = Path(staging) / digest[:16] / "data.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps({"fuzz": url.encode("utf-8", "backslashreplace").decode()}))
    return path.as_uri()


@schemathesis.hook
def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict) and "callback_url" in body:
        body = dict(body, callback_url=_loopback_callback(body["callback_url"]))
    if isinstance(body, dict) and "source_url" in body:
        body = dict(body, source_url=_staged(body["source_url"]))
    return body


# --- the harness ----------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, process: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


def _stop(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, with everything it started."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def _storage_server(kind: str, log: Path) -> Iterator[str]:
    """moto or the GCS emulator, as the tests run them (tests/infra/storage_servers.py)."""
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "tests.infra.storage_servers", kind], cwd=REPO,
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=out,
                                   start_new_session=True)
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 60)
        url = process.stdout.readline().decode().strip() if ready else ""
        if not url.startswith("http://"):
            raise RuntimeError(f"the {kind} server did not start; see {log}")
        yield url
    finally:
        _stop(process)
        if process.stdout is not None:
            process.stdout.close()


def _server_env(work: Path, port: int, moto: str, gcs: str) -> dict[str, str]:
    kept = {k: v for k, v in os.environ.items()
            if not k.startswith(("DSS_", "AWS_", "GOOGLE_", "STORAGE_EMULATOR")) and "PROXY" not in k.upper()}
    return {**kept, "DSS_DATA_DIR": str(work / "data"), "DSS_STAGING_ROOTS": str(work / "staging"),
            "DSS_PORT": str(port), "DSS_API_PROCESSES": "1", "DSS_ADMIN_EMAILS": ADMIN,
            "DSS_BUNDLE_FILE_WAIT": "0", "DSS_CALLBACK_ALLOWLIST": "127.0.0.1/32", "DSS_NOTIFY_TIMEOUT": "2",
            "AWS_ENDPOINT_URL": moto, "AWS_ACCESS_KEY_ID": "fuzz", "AWS_SECRET_ACCESS_KEY": "fuzz",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true", "AWS_MAX_ATTEMPTS": "1",
            "AWS_CONFIG_FILE": str(work / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(work / "no-aws"),
            "STORAGE_EMULATOR_HOST": gcs, "GOOGLE_CLOUD_PROJECT": "dss-fuzz"}


def _token(env: dict[str, str]) -> str:
    command = [sys.executable, str(REPO / "scripts" / "dss-ops.py"), "token", "--email", ADMIN, "--group", "hca",
               "--ttl", "86400"]
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout.strip()


def _schemathesis(args: argparse.Namespace, url: str, token: str, work: Path) -> tuple[int, int]:
    """Run the CLI; returns (exit status, requests sent)."""
    har = work / "schemathesis.har"
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", url,
               "--checks", ",".join(CHECKS), "--seed", str(args.seed), "--max-examples", str(args.max_examples),
               "--workers", "1", "--request-timeout", "30",
               "--header", f"Authorization: Bearer {token}", "--no-color", "--output-truncate", "false",
               "--report", "har", "--report-har-path", str(har), "--suppress-health-check", "all"]
    # No example database either way: a run depends on its seed alone (deterministic mode implies none).
    command += ["--generation-deterministic"] if args.deterministic else ["--generation-database", "none"]
    if args.phases:
        command += ["--phases", args.phases]
    if args.include_path_regex:
        command += ["--include-path-regex", args.include_path_regex]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz", STAGING_VARIABLE: str(work / "staging"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "scripts"), os.environ.get("PYTHONPATH")]))}
    status = subprocess.run(command, env=env, cwd=work).returncode
    requests = len(json.loads(har.read_text())["log"]["entries"]) if har.exists() else 0
    return status, requests


def _server_problems(log: Path) -> list[str]:
    """Errors of the server's own and background work (indexing, notification), which no response shows."""
    lines = log.read_text(errors="replace").splitlines()
    return [line for line in lines if " ERROR " in line or " CRITICAL " in line or line.startswith("Traceback")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=1000, help="fuzzing examples per operation")
    parser.add_argument("--seed", type=int, default=20240611)
    parser.add_argument("--min-requests", type=int, default=10_000, help="fail if fewer requests were sent")
    parser.add_argument("--deterministic", action="store_true", help="derandomize generation (same run every time)")
    parser.add_argument("--phases", help="schemathesis phases, e.g. coverage,fuzzing (default: all)")
    parser.add_argument("--include-path-regex", help="only the operations whose path matches, e.g. ^/collections")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, HAR report)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="dss-fuzz-"))
    (work / "staging").mkdir()
    port = _free_port()
    server_log = work / "server.log"
    status, requests, problems = 1, 0, []
    try:
        with _storage_server("moto", work / "moto.log") as moto, _storage_server("gcs", work / "gcs.log") as gcs:
            env = _server_env(work, port, moto, gcs)
            with open(server_log, "wb") as out:
                server = subprocess.Popen([sys.executable, str(REPO / "dss-api")], env=env, cwd=work,
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                          start_new_session=True)
            try:
                base = f"http://127.0.0.1:{port}"
                _wait_for(f"{base}/version", server)
                status, requests = _schemathesis(args, f"{base}/v1/swagger.json", _token(env), work)
            finally:
                _stop(server)
        problems = _server_problems(server_log)
    finally:
        print(f"\nfuzz: {requests} requests, schemathesis exit status {status}, "
              f"{len(problems)} error lines in the server log (work directory {work})")
        for line in problems[:50]:
            print(f"  server: {line}")
        if not args.keep and status == 0 and not problems:
            shutil.rmtree(work, ignore_errors=True)
    if requests < args.min_requests:
        print(f"fuzz: only {requests} requests, fewer than --min-requests {args.min_requests}")
        return 1
    return 0 if status == 0 and not problems else 1


if __name__ == "__main__":
    sys.exit(main())
