"""What the daemon Lambdas (`daemons/<name>/app.py`) do, as plain functions of a `Runtime`.

Each Lambda entry point only decodes its trigger, builds one `Runtime` per cold start (`LambdaRuntime`)
and calls one function here with `remaining`, a callable giving the seconds the invocation has left
(`context.get_remaining_time_in_millis() / 1000`). Every loop below stops while there is still time to
finish the item in hand; nothing here starts a thread that outlives the call.

| Lambda (`dss-<stage>-…`) | trigger | function |
|---|---|---|
| `sync`, `index`, `journal` | its handler queue `dss-events-<stage>-<handler>` | `handle_queue` |
| `notify` | every minute | `deliver_notifications` |
| `gs-event-relay` | every minute | `relay_gcs_events` |
| `scheduled` | every 10 minutes | `scheduled` |
| `task-<task>` | Step Functions | `task_handler` (the task registry's own Lambda handler) |
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dss.runtime import Runtime

__all__ = ["LambdaRuntime", "Remaining", "remaining_of", "handler_queue", "handle_queue", "deliver_notifications",
           "relay_gcs_events", "scheduled", "task_handler", "REDRIVE_CAP", "MARGIN"]

logger = logging.getLogger(__name__)

Remaining = Callable[[], float]  # seconds this invocation has left

MARGIN = 5.0  # seconds kept back at the end of an invocation, to answer and log
REDRIVE_CAP = 100  # dead letters the scheduled Lambda moves back per run (a poison message cannot flood)


def remaining_of(lambda_context: Any) -> Remaining:
    """`remaining` for a Lambda context object (anything with `get_remaining_time_in_millis`)."""
    return lambda: lambda_context.get_remaining_time_in_millis() / 1000.0


class LambdaRuntime:
    """The `Runtime` of one Lambda process: configuration from its environment, built on first use (so
    importing an app costs nothing), then kept for every invocation of the warm process. Its members
    are built lazily too, so a cold start makes only the clients its daemon uses."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._runtime: Runtime | None = None

    def __call__(self) -> Runtime:
        if self._runtime is None:
            from dss.config import Config
            from dss.logs import configure_logging
            from dss.runtime import Runtime
            from dss.tracing import configure_tracing

            config = Config.from_env(self._environ)
            configure_logging(config.debug)
            configure_tracing(config)  # DSS_XRAY_TRACE: before any client is made
            # Lambda's runtime installs its own root handler (so basicConfig does nothing) at WARNING.
            logging.getLogger().setLevel(logging.INFO if config.debug == 0 else logging.DEBUG)
            self._runtime = Runtime(config, lazy=True)  # each member built on first use: see dss.runtime
        return self._runtime


def handler_queue(handler_name: str, environ: Mapping[str, str]) -> str:
    """The SQS queue an SQS-triggered daemon reads: `<bus name>-<handler>`, the bus named by
    `DSS_QUEUE_URL` (by default `dss-events-<stage>`). Read at import, when Chalice packages the app."""
    from dss.config import Config
    from dss.events.sqs import SCHEMES, bus_name, parse_queue_url

    config = Config.from_env(environ)
    if config.queue_url.split("://", 1)[0] in SCHEMES:
        return f"{parse_queue_url(config.queue_url, config.stage).name}-{handler_name}"
    return f"{bus_name(config.stage)}-{handler_name}"


def handle_queue(runtime: Runtime, handler_name: str, lambda_event: Mapping[str, Any],
                 remaining: Remaining) -> dict[str, list[dict[str, str]]]:
    """An SQS-triggered invocation: each record through the handler (`SQSEventBus.handle`); the partial
    batch response. Records not reached before the time runs short are reported as failures, so SQS
    delivers them again after the visibility timeout."""
    from dss.events.sqs import SQSEventBus

    bus = runtime.bus
    if not isinstance(bus, SQSEventBus):
        raise TypeError(f"the {handler_name} daemon needs an SNS/SQS event bus (DSS_QUEUE_URL), not {bus!r}")
    handler = runtime.handlers[handler_name]
    s3_bucket = _s3_replica_bucket(runtime)
    failures: list[dict[str, str]] = []
    for record in lambda_event.get("Records", ()):
        if remaining() < MARGIN:
            failures.append({"itemIdentifier": record["messageId"]})
            continue
        failures += bus.handle(handler_name, handler, {"Records": [record]}, exists=runtime.exists,
                               s3_bucket=s3_bucket)["batchItemFailures"]
    if failures:
        logger.info("%s: %d of %d records left for a retry", handler_name, len(failures),
                    len(lambda_event.get("Records", ())))
    return {"batchItemFailures": failures}


def _s3_replica_bucket(runtime: Runtime) -> str | None:
    """The `aws` replica's bucket, whose S3 object events the handlers take (None: it is not on S3)."""
    from dss.events.s3_events import REPLICA
    from dss.storage.blobstore import split_url

    url = runtime.config.replica_urls.get(REPLICA)
    if not url:
        return None
    scheme, bucket, _ = split_url(url)
    return bucket if scheme == "s3" else None


def deliver_notifications(runtime: Runtime, remaining: Remaining) -> dict[str, Any]:
    """Deliver due webhook notifications, in parallel up to the store's bound, until none is due or the
    time is nearly up (an attempt started may take up to `DSS_NOTIFY_TIMEOUT`)."""
    import time

    from dss.notify import deliver_due

    reserve = runtime.config.notify_timeout + MARGIN
    if remaining() <= reserve:
        logger.warning("No time to deliver: the Lambda's timeout must exceed DSS_NOTIFY_TIMEOUT + %g s", MARGIN)
    run = deliver_due(runtime.deliveries, deadline=time.monotonic() + max(0.0, remaining() - reserve))
    return dict(run.to_json())


def relay_gcs_events(runtime: Runtime, remaining: Remaining) -> dict[str, Any]:
    """Pull the GCS object notifications of the `gcp` replica from Pub/Sub and publish them on the bus."""
    import time

    from dss.events import gcs_relay

    deadline = time.time() + max(0.0, remaining() - MARGIN)
    return dict(gcs_relay.relay_for_runtime(runtime, deadline))


def scheduled(runtime: Runtime, remaining: Remaining, redrive_cap: int = REDRIVE_CAP) -> dict[str, Any]:
    """Housekeeping every ten minutes: journal compaction, dead-letter re-drive (at most `redrive_cap`),
    the anti-entropy pass and the checkout sweep, the last two stopped between keys when time is short.
    Each part runs even if an earlier one failed; a failure is logged and reported."""
    from dss.checkout import sweep as sweep_checkouts
    from dss.events.reconcile import Cancelled, reconcile
    from dss.journal.compactor import compact_all

    def short() -> bool:
        return remaining() < MARGIN

    def checkout_sweep() -> int:
        stores = runtime.checkout.stores
        return sum(sweep_checkouts(stores[r], runtime.checkout.freshness, short) for r in stores)

    parts: dict[str, Callable[[], Any]] = {
        "compacted": lambda: compact_all(runtime.journals, runtime.config.events_compact_interval),
        "redriven": lambda: runtime.bus.redrive(limit=redrive_cap),
        "reconciled": lambda: reconcile(runtime.replicas, runtime.bus, runtime.search, short).as_dict(),
        "checkout_expired": checkout_sweep,
    }
    report: dict[str, Any] = {}
    for name, part in parts.items():
        if short():
            report[name] = "skipped: out of time"
            continue
        try:
            report[name] = part()
        except Cancelled:
            report[name] = "stopped: out of time"
        except Exception as exc:  # noqa: BLE001 - the other parts still run; the next run retries this one
            logger.exception("Scheduled %s failed", name)
            report[name] = f"failed: {type(exc).__name__}"
    logger.info("Scheduled housekeeping: %s", report)
    return report


def task_handler(name: str, runtime: Callable[[], Runtime]) -> Callable[[Any, Any], Any]:
    """The Lambda handler of workflow task `name`: the registry's handler, with the task context of the
    process's `Runtime` (built at the first invocation)."""
    from dss.workflows.registry import default_registry

    return default_registry().lambda_handler(name, lambda: runtime().task_context())
