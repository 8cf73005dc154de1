"""The `notify` daemon (`dss-<stage>-notify`), run every minute: delivers the due webhook
notifications until its time is nearly up (`dss.daemons.deliver_notifications`)."""
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


@app.schedule("rate(1 minute)", name="notify")
def notify(event: Any) -> dict:
    return daemons.deliver_notifications(runtime(), daemons.remaining_of(event.context))
