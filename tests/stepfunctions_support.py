"""A moto server with Step Functions *execution* enabled and Lambda invocations routed to the DSS task
functions, for `test_workflows_stepfunctions` (the cloud engine of the workflows port).

The shared `moto_server` (tests/infra/storage_servers.py) runs moto with its default configuration, in
which Step Functions only records executions (`execute_state_machine` is off); and moto's Lambda needs
Docker to run a function. This module is a second server (`python -m tests.stepfunctions_support`) that
turns execution on (`moto.core.config.default_user_config`, before the backends start) and replaces
`LambdaFunction._invoke_lambda` with a call of the task the function is named after
(`dss-<stage>-task-<name>`), in this server process, with a `TaskContext` built from the function's
environment: as a Lambda runtime would, it reaches S3 through this server (`AWS_ENDPOINT_URL`). It also
serves S3, IAM, STS, so the tests can use it for everything (they override the `moto_server` fixture
with it). Running tasks in the server process rather than a fresh process per invocation keeps the
tests fast; the tasks share nothing with the DSS server under test but the stores and tables.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_REPO = Path(__file__).resolve().parents[1]
TASK_BUDGET = 60.0  # seconds each routed task invocation is given before it saves progress


def _route_lambda_invocations() -> None:
    """Answer each Lambda invocation with the task the function serves. As a Lambda runtime would, the
    task's context comes from the function's environment: `DSS_DEPLOYMENT_STAGE` (the function is
    `task_function_prefix(stage) + <task name>`) and, if set, `DSS_TABLES_URL` (the tables port, for the
    tasks that record failures and checkout status). One context per environment, built once."""
    import threading

    from moto.awslambda.models import LambdaFunction

    from dss.storage.blobstore import BlobStoreFactory
    from dss.tables import Tables
    from dss.workflows import TaskContext, default_registry
    from dss.workflows.errors import TaskFailure
    from dss.workflows.stepfunctions import task_function_prefix

    registry = default_registry()
    contexts: dict[str, TaskContext] = {}
    lock = threading.Lock()

    def context_for(environment: dict[str, str]) -> TaskContext:
        cache_key = json.dumps(environment, sort_keys=True)
        with lock:
            if cache_key not in contexts:
                url, stage = environment.get("DSS_TABLES_URL"), environment["DSS_DEPLOYMENT_STAGE"]
                tables = Tables(url, prefix=f"dss-{stage}-") if url else None
                contexts[cache_key] = TaskContext(stores=BlobStoreFactory(), tables=tables)
            return contexts[cache_key]

    def invoke(function: Any, event: Any = None) -> tuple[str, bool, str]:
        payload = json.loads(event) if isinstance(event, str | bytes) else (event or {})
        environment = dict(function.environment_vars)
        name = function.function_name[len(task_function_prefix(environment["DSS_DEPLOYMENT_STAGE"])):]
        try:
            result = registry.invoke(name, payload, context_for(environment).with_budget(TASK_BUDGET))
        except TaskFailure as failure:  # reported as Lambda's Python runtime reports an exception
            return failure.cause, True, ""
        return json.dumps(result), False, ""

    LambdaFunction._invoke_lambda = invoke  # type: ignore[method-assign,assignment]


def _serve() -> None:
    import logging

    from moto.core.config import default_user_config
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    from tests.infra.storage_servers import _announce

    default_user_config["stepfunctions"]["execute_state_machine"] = True
    _route_lambda_invocations()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app), threaded=True,
                         request_handler=MotoRequestHandler)
    url = f"http://127.0.0.1:{server.server_port}"
    os.environ["MOTO_PORT"] = str(server.server_port)  # where moto's state machines call Lambda
    os.environ.update({"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"})
    _announce(url)
    server.serve_forever()


@pytest.fixture(scope="session")
def stepfunctions_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of the moto server described in the module docstring."""
    from tests.infra.storage_servers import server_process

    with server_process(tmp_path_factory.mktemp("moto-sfn") / "server.log", __name__) as url:
        yield url

if __name__ == "__main__":
    _serve()
