"""Throughput of the notification engine: enqueue N signed deliveries, drain them with a DeliveryWorker
into a loopback receiver, report rates.

    .venv/bin/python -m benchmarks.bench_notify [--count 500] [--threads 4] [--format cavage|rfc9421]
"""
from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from dss.notify import Delivery, DeliveryStore, DeliveryWorker
from tests.infra.receivers import Receiver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--format", default="cavage", choices=["cavage", "rfc9421"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Receiver() as receiver, \
            DeliveryStore(Path(tmp) / "notify.sqlite3", delays=(0, 1), allowlist="127.0.0.1/32") as store:
        started = time.perf_counter()
        for _ in range(args.count):
            store.enqueue(Delivery(subscription_id=str(uuid.uuid4()), owner="bench@example.org",
                                   callback_url=receiver.url(), payload={"transaction_id": str(uuid.uuid4())},
                                   hmac_secret_key="bench-secret", signature_format=args.format))
        enqueued = time.perf_counter()
        with DeliveryWorker(store, threads=args.threads):
            receiver.wait_for(args.count, timeout=600)
        drained = time.perf_counter()
    print(f"enqueue: {args.count / (enqueued - started):8.0f}/s   "
          f"deliver ({args.threads} threads, {args.format}): {args.count / (drained - enqueued):8.0f}/s")


if __name__ == "__main__":
    main()
