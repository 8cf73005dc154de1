"""ASGI entry point of each server process when `dss-api` runs several (uvicorn's `--factory`)."""
from __future__ import annotations

import os

from starlette.types import ASGIApp

from dss.api import create_app
from dss.config import Config
from dss.logs import configure_logging
from dss.runtime import Runtime

__all__ = ["app_from_environment"]


def app_from_environment() -> ASGIApp:
    config = Config.from_env(os.environ)
    configure_logging(config.debug)
    return create_app(Runtime(config))
