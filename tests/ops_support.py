"""Running scripts/dss-ops.py in the test process (its `main`), with the environment a shell would give it:
much faster than a child process per command, and the same code path below argument parsing."""
from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from types import ModuleType

import pytest

from tests.infra.dss_server import REPO

OpsRunner = Callable[..., tuple[int, str, str]]


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dss_ops_script", REPO / "scripts" / "dss-ops.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ops_runner(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> OpsRunner:
    """`run(*args, stdin="", **env)` runs `dss-ops.py args…` with `env` added to the environment and
    `stdin` as its input; returns (exit code, stdout, stderr)."""
    module = load_script()

    def run(*args: str, stdin: str = "", **env: str) -> tuple[int, str, str]:
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            patch.setattr("sys.stdin", io.StringIO(stdin))
            capsys.readouterr()
            code = module.main(list(args))
            out, err = capsys.readouterr()
        return code, out, err

    return run
