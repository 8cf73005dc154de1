"""`make bench` is not part of `make test`, so its scripts are at least started here: each one imports
everything it uses and parses its arguments, as `make bench` runs it (a renamed test helper once broke
`benchmarks/bench_workflows.py` unnoticed)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.infra.dss_server import REPO


@pytest.mark.parametrize("command", [["benchmarks/run.py"], ["benchmarks/bench_workflows.py"],
                                     ["benchmarks/bench_search.py"], ["-m", "benchmarks.bench_notify"]])
def test_benchmark_starts(command: list[str]) -> None:
    result = subprocess.run([sys.executable, *command, "--help"], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")
