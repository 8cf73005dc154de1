"""The loopback cloud's compute: AWS Lambda, its SQS event sources and API Gateway, without Docker.

* **The server** (`python -m tests.infra.lambda_runtime serve <state dir>`): a moto server (S3, SNS, SQS,
  DynamoDB, Step Functions *with execution*, Secrets Manager, SSM, IAM, STS, Lambda — moto serves every
  service on one port) in which every Lambda invocation — `Invoke` from a test or a poller, or a Task state
  of a running state machine — runs the function's handler **in a fresh Python process**
  (`tests/infra/lambda_bootstrap.py`) with the function's environment, plus the loopback endpoints
  (`AWS_ENDPOINT_URL` back at this server; whatever the test put in `<state dir>/environment.json`, e.g.
  `STORAGE_EMULATOR_HOST`), a private scratch directory as `DSS_DATA_DIR` (a Lambda's `/tmp`) and the
  function's timeout as its remaining time. Function `dss-<stage>-<name>` runs `daemons/<name>/app.py`'s
  handler `<name with _ for ->`; `dss-<stage>-task-<task>` runs `daemons/workflows/app.py`'s `task_<task>`
  (the names of `dss.daemons`). Each invocation's output is appended to `<state dir>/logs/<function>.log`.
  Conditional S3 writes are made atomic as in `storage_servers._serialise_conditional_writes`.
* **`LambdaHarness`** (test side): creates functions, invokes them, and emulates SQS event-source mappings
  with one poller thread per mapping: receive a batch (`ApproximateReceiveCount` and all), invoke the
  function, delete the records that did not fail (the partial-batch response) and leave the failures to SQS,
  whose redrive policy moves a message to its dead-letter queue after `maxReceiveCount` receives. moto's
  own SQS → Lambda delivery is not used: it needs Docker and deletes messages whatever the outcome.
* **The API gateway** (`python -m tests.infra.lambda_runtime gateway`, started by `start_gateway`): one warm
  process holding the API Lambda (`chalice/app.py`) with the function's environment, answering HTTP on a
  free port by turning each request into an API Gateway (REST, proxy) event and the handler's answer back
  into HTTP. Requests are handled one at a time, as one Lambda instance does; the real `hca` client talks
  to it.
"""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
BOOTSTRAP = Path(__file__).resolve().with_name("lambda_bootstrap.py")
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
ROLE_NAME = "dss-loopback-lambda"
KILL_GRACE = 10.0  # seconds past a function's timeout before its process is killed (under moto's 60 s read timeout)


# --- which code a function runs -----------------------------------------------------------------
def handler_of(function_name: str, stage: str) -> tuple[Path, str]:
    """(app.py, handler attribute) of the Lambda `function_name` of deployment `stage`."""
    prefix = f"dss-{stage}-"
    if not function_name.startswith(prefix):
        raise LookupError(f"{function_name} is not a function of stage {stage}")
    name = function_name[len(prefix):]
    if name == "api":
        return REPO / "chalice" / "app.py", "app"
    if name.startswith("task-"):
        return REPO / "daemons" / "workflows" / "app.py", "task_" + name[len("task-"):].replace("-", "_")
    return REPO / "daemons" / name / "app.py", name.replace("-", "_")


def _base_environment(scratch: Path) -> dict[str, str]:
    """What a Lambda sandbox gives every function, whatever its configuration."""
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE") if k in os.environ}
    return {**keep, "HOME": str(scratch), "TMPDIR": str(scratch), "PYTHONDONTWRITEBYTECODE": "1",
            "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION}


def aws_environment(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION}


def run_invocation(function_name: str, environment: Mapping[str, str], event: Any, timeout: float,
                   state_dir: Path, endpoint: str) -> tuple[str, bool]:
    """Run one invocation in a fresh process; (payload JSON, whether the function raised)."""
    stage = environment.get("DSS_DEPLOYMENT_STAGE", "local")
    app, attribute = handler_of(function_name, stage)
    extra_path = state_dir / "environment.json"
    extra = json.loads(extra_path.read_text()) if extra_path.exists() else {}
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{function_name}-", dir=state_dir / "sandboxes"))
    try:
        env = {**_base_environment(scratch), **environment, **extra, **aws_environment(endpoint),
               "AWS_LAMBDA_FUNCTION_NAME": function_name, "DSS_DATA_DIR": str(scratch / "dss")}
        result = scratch / "result.json"
        with open(logs / f"{function_name}.log", "ab") as log:
            log.write(f"--- {time.strftime('%H:%M:%S')} invocation\n".encode())
            log.flush()
            started = time.monotonic()
            try:
                subprocess.run([sys.executable, str(BOOTSTRAP), str(app), attribute, str(timeout), str(result)],
                               input=json.dumps(event).encode(), stdout=log, stderr=log, env=env, cwd=scratch,
                               timeout=timeout + KILL_GRACE, check=False)
                log.write(f"--- ended after {time.monotonic() - started:.1f} s\n".encode())
            except subprocess.TimeoutExpired:
                return json.dumps({"errorMessage": f"Task timed out after {timeout} seconds",
                                   "errorType": "Sandbox.Timedout"}), True
        if not result.exists():
            return json.dumps({"errorMessage": "the runtime exited without a result",
                               "errorType": "Runtime.ExitError"}), True
        outcome = json.loads(result.read_text())
        if outcome["ok"]:
            return json.dumps(outcome["result"]), False
        return json.dumps(outcome["error"]), True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# --- the server process ---------------------------------------------------------------------------
def _route_invocations(state_dir: Path, endpoint: str) -> None:
    from moto.awslambda.models import LambdaFunction

    def invoke(function: Any, event: Any = None) -> tuple[str, bool, str]:
        payload = json.loads(event) if isinstance(event, str | bytes) else (event or {})
        result, errored = run_invocation(function.function_name, dict(function.environment_vars or {}), payload,
                                         float(function.timeout or 3), state_dir, endpoint)
        return result, errored, ""

    LambdaFunction._invoke_lambda = invoke  # type: ignore[method-assign,assignment]


def _serve(state_dir: Path) -> None:
    import logging

    from moto.core.config import default_user_config
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    from tests.infra.storage_servers import _announce, _serialise_conditional_writes

    (state_dir / "sandboxes").mkdir(parents=True, exist_ok=True)
    default_user_config["stepfunctions"]["execute_state_machine"] = True
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = _serialise_conditional_writes(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    url = f"http://127.0.0.1:{server.server_port}"
    os.environ["MOTO_PORT"] = str(server.server_port)  # where moto's state machines invoke Lambda
    os.environ.update(aws_environment(url))
    _route_invocations(state_dir, url)
    _announce(url)
    server.serve_forever()


# --- the API gateway process ----------------------------------------------------------------------
def _proxy_event(route: Any, method: str, path: str, query: str, headers: Mapping[str, str], body: bytes,
                 stage: str) -> dict[str, Any]:
    """An API Gateway REST proxy event (payload format 1.0); the body always base64, as with binary types */*."""
    from urllib.parse import parse_qs

    multi = parse_qs(query, keep_blank_values=True)
    return {
        "resource": route.route, "path": path, "httpMethod": method,
        "headers": dict(headers), "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in multi.items()} or None,
        "multiValueQueryStringParameters": multi or None,
        "pathParameters": route.captured or None, "stageVariables": None,
        "requestContext": {"resourcePath": route.route, "httpMethod": method, "path": f"/{stage}{path}",
                           "stage": stage, "requestId": str(uuid.uuid4()), "identity": {"sourceIp": "127.0.0.1"}},
        "body": base64.b64encode(body).decode("ascii") if body else None, "isBase64Encoded": bool(body),
    }


def proxy_event(method: str, path: str, headers: Mapping[str, str] | None = None, body: bytes = b"",
                stage: str = "local") -> dict[str, Any]:
    """The API Gateway proxy event of a request to the API Lambda (`chalice/app.py`)."""
    import importlib.util
    from urllib.parse import urlsplit

    from chalice.local import RouteMatcher

    if "api_routes" not in _ROUTES:
        spec = importlib.util.spec_from_file_location("dss_api_lambda_routes", REPO / "chalice" / "app.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _ROUTES["api_routes"] = RouteMatcher(list(module.app.routes))
    parts = urlsplit(path)
    return _proxy_event(_ROUTES["api_routes"].match_route(parts.path), method, parts.path, parts.query,
                        {"Host": "api.example.org", **(headers or {})}, body, stage)


_ROUTES: dict[str, Any] = {}


def _gateway() -> None:
    import http.server
    import importlib.util
    import logging
    from urllib.parse import urlsplit

    from chalice.local import RouteMatcher

    from tests.infra.storage_servers import _announce

    sys.path.insert(0, str(REPO / "tests" / "infra"))
    from lambda_bootstrap import LambdaContext  # type: ignore[import-not-found]

    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    spec = importlib.util.spec_from_file_location("app", REPO / "chalice" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lambda_app = module.app
    matcher = RouteMatcher(list(lambda_app.routes))
    stage = os.environ.get("DSS_DEPLOYMENT_STAGE", "local")
    one_at_a_time = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urlsplit(self.path)
            try:
                route = matcher.match_route(parts.path)
            except ValueError:
                return self._answer(403, {"content-type": "application/json"},
                                    b'{"message": "Missing Authentication Token"}')
            # API Gateway adds X-Forwarded-Proto (https there; this gateway speaks plain HTTP)
            headers = {**{k: v for k, v in self.headers.items()}, "X-Forwarded-Proto": "http"}
            event = _proxy_event(route, self.command, parts.path, parts.query, headers, body, stage)
            with one_at_a_time:
                response = lambda_app(event, LambdaContext(f"dss-{stage}-api", 29.0))
            data = response.get("body") or ""
            raw = base64.b64decode(data) if response.get("isBase64Encoded") else data.encode("utf-8")
            answer = {k: [v] for k, v in (response.get("headers") or {}).items()}
            for k, values in (response.get("multiValueHeaders") or {}).items():
                answer[k] = list(values)
            self._answer(response["statusCode"], answer, raw)

        def _answer(self, status: int, headers: Mapping[str, Any], raw: bytes) -> None:
            self.send_response(status)
            for name, values in headers.items():
                if name.lower() in ("content-length", "connection", "transfer-encoding"):
                    continue
                for value in values if isinstance(values, list) else [values]:
                    self.send_header(name, str(value))
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

        do_GET = do_PUT = do_POST = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            sys.stderr.write("gateway: " + format % args + "\n")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    _announce(f"http://127.0.0.1:{server.server_port}")
    server.serve_forever()


@contextlib.contextmanager
def start_gateway(environment: Mapping[str, str], endpoint: str, log_path: Path) -> Iterator[str]:
    """The API gateway process (module docstring) with the API function's `environment`; yields its URL."""
    from tests.infra.storage_servers import server_process

    scratch = Path(tempfile.mkdtemp(prefix="dss-api-"))
    env = {**_base_environment(scratch), **environment, **aws_environment(endpoint),
           "AWS_LAMBDA_FUNCTION_NAME": f"dss-{environment.get('DSS_DEPLOYMENT_STAGE', 'local')}-api",
           "DSS_DATA_DIR": str(scratch / "dss")}
    try:
        with server_process(log_path, __name__, "gateway", env=env) as url:
            yield url
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def scheduled_event(function_name: str) -> dict[str, Any]:
    """The event EventBridge gives a function on its schedule."""
    return {"version": "0", "id": str(uuid.uuid4()), "detail-type": "Scheduled Event", "source": "aws.events",
            "account": ACCOUNT, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "region": REGION,
            "resources": [f"arn:aws:events:{REGION}:{ACCOUNT}:rule/{function_name}"], "detail": {}}


# --- the test side --------------------------------------------------------------------------------
def _tiny_zip() -> bytes:
    """A deployment package moto accepts; the code that runs is the checkout's (handler_of)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", "# run from the checkout by tests/infra/lambda_runtime.py\n")
    return buffer.getvalue()


class _Poller(threading.Thread):
    """One SQS event-source mapping: queue → function, batches of up to `batch` records."""

    def __init__(self, harness: LambdaHarness, queue_url: str, function_name: str, batch: int) -> None:
        super().__init__(name=f"poll-{function_name}", daemon=True)
        self.harness, self.queue_url, self.function_name, self.batch = harness, queue_url, function_name, batch
        self.stopping = threading.Event()
        self.invocations = 0
        self.busy = False
        self.errors: list[str] = []
        self.arn = harness.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
            "Attributes"]["QueueArn"]

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.poll_once()
            except Exception as exc:  # noqa: BLE001 - a poller outlives a hiccup of the server, as Lambda's does
                self.errors.append(repr(exc))
                time.sleep(0.5)

    def poll_once(self) -> None:
        sqs = self.harness.sqs
        messages = sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=self.batch, WaitTimeSeconds=1,
                                       AttributeNames=["All"], MessageAttributeNames=["All"]).get("Messages", [])
        if not messages:
            return
        self.busy = True
        try:
            records = [{"messageId": m["MessageId"], "receiptHandle": m["ReceiptHandle"], "body": m["Body"],
                        "attributes": m.get("Attributes", {}), "messageAttributes": m.get("MessageAttributes", {}),
                        "md5OfBody": m.get("MD5OfBody"), "eventSource": "aws:sqs", "eventSourceARN": self.arn,
                        "awsRegion": REGION} for m in messages]
            payload, errored = self.harness.invoke(self.function_name, {"Records": records})
            self.invocations += 1
            failed = ({r["messageId"] for r in records} if errored else
                      {f["itemIdentifier"] for f in (payload or {}).get("batchItemFailures", [])})
            done = [{"Id": str(n), "ReceiptHandle": r["receiptHandle"]} for n, r in enumerate(records)
                    if r["messageId"] not in failed]
            if done:
                sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=done)
        finally:
            self.busy = False


class LambdaHarness:
    """Functions and event-source mappings on the loopback server (module docstring)."""

    def __init__(self, endpoint: str, state_dir: Path) -> None:
        import boto3
        from botocore.config import Config as BotoConfig

        self.endpoint, self.state_dir = endpoint, state_dir
        session = boto3.session.Session(**{"aws_access_key_id": "testing", "aws_secret_access_key": "testing",
                                           "region_name": REGION})
        self.session = session
        self.sqs = session.client("sqs", endpoint_url=endpoint)
        self.iam = session.client("iam", endpoint_url=endpoint)
        # An invocation may take as long as its function's timeout: never let botocore retry one.
        self.lam = session.client("lambda", endpoint_url=endpoint, config=BotoConfig(
            read_timeout=900, connect_timeout=10, retries={"max_attempts": 1, "mode": "standard"}))
        self.pollers: list[_Poller] = []

    def client(self, service: str) -> Any:
        return self.session.client(service, endpoint_url=self.endpoint)  # type: ignore[call-overload]

    def secretsmanager(self) -> Any:
        return self.client("secretsmanager")

    def set_environment(self, **variables: str) -> None:
        """Loopback endpoints every invocation gets on top of its function's environment."""
        path = self.state_dir / "environment.json"
        current = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**current, **variables}))

    def role(self) -> str:
        try:
            return self.iam.create_role(RoleName=ROLE_NAME, AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        except self.iam.exceptions.EntityAlreadyExistsException:
            return self.iam.get_role(RoleName=ROLE_NAME)["Role"]["Arn"]

    def create_function(self, name: str, environment: Mapping[str, str], *, timeout: int = 60,
                        memory: int = 1024) -> str:
        """Create (or reconfigure) a function; its ARN."""
        try:
            return self.lam.create_function(
                FunctionName=name, Runtime="python3.11", Role=self.role(), Handler="app.handler",
                Code={"ZipFile": _tiny_zip()}, Timeout=timeout, MemorySize=memory,
                Environment={"Variables": dict(environment)})["FunctionArn"]
        except self.lam.exceptions.ResourceConflictException:
            return self.lam.update_function_configuration(
                FunctionName=name, Timeout=timeout, MemorySize=memory,
                Environment={"Variables": dict(environment)})["FunctionArn"]

    def invoke(self, name: str, event: Any) -> tuple[Any, bool]:
        """(the function's answer, whether it raised)."""
        reply = self.lam.invoke(FunctionName=name, Payload=json.dumps(event).encode())
        text = reply["Payload"].read()
        return (json.loads(text) if text else None), bool(reply.get("FunctionError"))

    def map_queue(self, queue_name: str, function_name: str, batch: int = 10) -> _Poller:
        poller = _Poller(self, self.sqs.get_queue_url(QueueName=queue_name)["QueueUrl"], function_name, batch)
        poller.start()
        self.pollers.append(poller)
        return poller

    def stop(self) -> None:
        for poller in self.pollers:
            poller.stopping.set()
        for poller in self.pollers:
            poller.join(timeout=120)
        self.pollers = []

    def log(self, function_name: str) -> str:
        path = self.state_dir / "logs" / f"{function_name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.fixture(scope="session")
def lambda_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(endpoint URL, state directory) of the server described in the module docstring."""
    from tests.infra.storage_servers import server_process

    state_dir = tmp_path_factory.mktemp("lambda-cloud")
    with server_process(state_dir / "server.log", __name__, "serve", str(state_dir)) as url:
        yield url, state_dir


@pytest.fixture
def lambda_cloud_env(lambda_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch,
                     tmp_path: Path) -> tuple[str, Path]:
    """`lambda_server`, with boto3 in the test process pointed at it only (as `aws_env` does for moto)."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in aws_environment(lambda_server[0]).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return lambda_server


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        _serve(Path(sys.argv[2]))
    elif sys.argv[1] == "gateway":
        _gateway()
    else:
        raise SystemExit(f"usage: python -m {__name__} serve <state dir> | gateway")
