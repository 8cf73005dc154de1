"""The `index` daemon (`dss-<stage>-index`): the `index` handler on its SQS queue, with partial-batch responses.
The trigger needs `ReportBatchItemFailures` on the event source mapping (see `dss.daemons.handle_queue`)."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

_here = Path(__file__).resolve().parent
for _candidate in (_here / "chalicelib", *_here.parents):  # packaged: chalicelib/dss; a checkout: the repo
    if (_candidate / "dss").is_dir():
        sys.path.insert(0, str(_candidate))
        break

from chalice import Chalice  # noqa: E402
from dss import daemons  # noqa: E402

app = Chalice(app_name="dss", configure_logs=False)  # its "dss" logger is our package's: leave it be
runtime = daemons.LambdaRuntime(os.environ)


@app.on_sqs_message(queue=daemons.handler_queue("index", os.environ), batch_size=10, name="index")
def index(event: Any) -> dict:
    return daemons.handle_queue(runtime(), "index", event.to_dict(), daemons.remaining_of(event.context))
