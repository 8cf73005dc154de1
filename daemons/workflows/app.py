"""The workflow task Lambdas: one function `dss-<stage>-task-<task>` per task of `default_registry()`, the
Lambdas Step Functions' Task states are bound to (`dss.workflows.stepfunctions.task_function_prefix`). Each
module attribute `task_<task with _ for ->` is the Lambda handler Chalice names (`app.task_copy_setup`)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

_here = Path(__file__).resolve().parent
for _candidate in (_here / "chalicelib", *_here.parents):  # packaged: chalicelib/dss; a checkout: the repo
    if (_candidate / "dss").is_dir():
        sys.path.insert(0, str(_candidate))
        break

from chalice import Chalice  # noqa: E402
from dss import daemons  # noqa: E402
from dss.workflows.registry import default_registry  # noqa: E402

app = Chalice(app_name="dss", configure_logs=False)  # its "dss" logger is our package's: leave it be
runtime = daemons.LambdaRuntime(os.environ)


def _register(task: str) -> None:
    handler = daemons.task_handler(task, runtime)
    handler.__name__ = "task_" + task.replace("-", "_")  # Chalice derives the handler string from it
    globals()[handler.__name__] = app.lambda_function(name=f"task-{task}")(handler)


for _task in sorted(default_registry().names()):
    _register(_task)
