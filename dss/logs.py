"""Logging set-up for entry points only (`dss-api`, worker processes, scripts); never at import time.

`DSS_DEBUG=0` logs INFO from our code and WARNING from the cloud SDKs; `1` logs DEBUG from our code;
`2` lets the SDKs log DEBUG too.
"""
from __future__ import annotations

import logging

__all__ = ["configure_logging"]

_NOISY = ("botocore", "boto3", "urllib3", "google", "s3transfer", "connexion", "httpx", "httpcore", "asyncio")


def configure_logging(debug: int) -> None:
    level = logging.INFO if debug == 0 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    for name in _NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if debug >= 2 else logging.WARNING)
