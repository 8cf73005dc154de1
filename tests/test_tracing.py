"""X-Ray tracing of the API Lambda (`DSS_XRAY_TRACE`): a request through the Chalice handler is sent as a
segment, with the AWS calls it made as subsegments, to a daemon address that is a UDP socket here.

The handler runs in a child process: tracing patches botocore and requests for the whole process, which
the other tests must not inherit.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from tests.infra.dss_server import REPO

DEADLINE = 60.0  # seconds: generous for a busy machine

# Chalice's own test client builds the API Gateway proxy event and calls the Lambda handler with it. The
# handler is loaded twice, as two cold starts: first with the environment as given (tracing off), then
# with DSS_XRAY_TRACE=1.
_HANDLER = """
import importlib.util, json, os, sys
from chalice.test import Client

def cold_start(name):
    spec = importlib.util.spec_from_file_location(name, sys.argv[1])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with Client(module.app) as client:
        response = client.http.get("/internal/health")
    return {"status": response.status_code, "body": response.json_body, "xray_loaded": "aws_xray_sdk" in sys.modules}

untraced = cold_start("untraced_app")
os.environ["DSS_XRAY_TRACE"] = "1"
print(json.dumps([untraced, cold_start("traced_app")]))
"""


def _invoke(env: dict[str, str]) -> list[dict]:
    result = subprocess.run([sys.executable, "-c", _HANDLER, str(REPO / "chalice" / "app.py")], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=DEADLINE)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _documents(sock: socket.socket, until: float) -> list[dict]:
    """The segment documents received by `until` (each datagram: a JSON header line, then the document)."""
    found = []
    while time.monotonic() < until:
        sock.settimeout(max(0.05, until - time.monotonic()))
        try:
            datagram = sock.recv(65536)
        except TimeoutError:
            break
        header, _, body = datagram.decode().partition("\n")
        assert json.loads(header)["format"] == "json"
        found.append(json.loads(body))
        if any(d.get("name") == "dss-api" for d in found):
            break
    return found


def test_a_request_through_the_chalice_handler_is_traced_when_asked(tmp_path, aws_env, s3_bucket):
    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon.bind(("127.0.0.1", 0))
    with daemon:
        aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **aws, "DSS_DATA_DIR": str(tmp_path / "data"),
               "DSS_AWS_REPLICA_URL": f"s3://{s3_bucket}",
               "AWS_XRAY_DAEMON_ADDRESS": f"127.0.0.1:{daemon.getsockname()[1]}"}
        untraced, traced = _invoke(env)
        assert untraced == {"status": 200, "body": {"Healthy": True}, "xray_loaded": False}  # off by default
        assert traced == {"status": 200, "body": {"Healthy": True}, "xray_loaded": True}
        documents = _documents(daemon, time.monotonic() + DEADLINE)

    [segment] = [d for d in documents if d.get("name") == "dss-api"]  # one: the untraced request sent none
    assert segment["http"]["request"] == {"method": "GET", "url": "/internal/health"}
    assert segment["end_time"] >= segment["start_time"]
    # the health check's listing of the S3 replica, recorded by the patched botocore
    calls = [s for s in segment.get("subsegments", []) + [d for d in documents if d.get("type") == "subsegment"]
             if s.get("namespace") == "aws"]
    assert any(c["name"].lower() == "s3" and c["aws"]["operation"] == "ListObjectsV2" for c in calls), documents
    assert all(call["trace_id"] == segment["trace_id"] for call in calls if "trace_id" in call)
