"""The Lambda runtime of the loopback cloud: runs ONE invocation of a Chalice app's handler in this fresh
process, as AWS Lambda's Python runtime would, then exits.

    python tests/infra/lambda_bootstrap.py <app.py> <handler attribute> <timeout seconds> <result file>

The event is read from stdin; the environment is the function's (the harness, `tests/infra/lambda_runtime.py`,
builds it). The result file receives `{"ok": true, "result": …}` or, when the handler raised,
`{"ok": false, "error": {"errorMessage", "errorType", "stackTrace"}}` — the payload Lambda reports, whose
`errorType` Step Functions' Retry and Catch match. Run by path (not `-m tests…`) so that nothing of the
test suite is imported: the process imports what the handler needs and no more.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import sys
import time
import traceback
import uuid


class LambdaContext:
    def __init__(self, function_name: str, timeout: float) -> None:
        self.function_name = function_name
        self.aws_request_id = str(uuid.uuid4())
        self.memory_limit_in_mb = 1024
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def main() -> int:
    app_path, attribute, timeout, result_path = sys.argv[1:5]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    event = json.load(sys.stdin)
    context = LambdaContext(attribute, float(timeout))
    try:
        spec = importlib.util.spec_from_file_location("app", app_path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["app"] = module
        spec.loader.exec_module(module)
        outcome = {"ok": True, "result": getattr(module, attribute)(event, context)}
    except Exception as exc:  # noqa: BLE001 - reported as Lambda reports an unhandled exception
        traceback.print_exc()
        outcome = {"ok": False, "error": {"errorMessage": str(exc), "errorType": type(exc).__name__,
                                          "stackTrace": traceback.format_tb(exc.__traceback__)}}
    with open(result_path, "w") as out:
        json.dump(outcome, out, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
