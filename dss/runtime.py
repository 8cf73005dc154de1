"""The composition root: builds every port and service once from a Config and hands them out.

Each member is a `cached_property` saying what it is built from. The embedded server and the tests build
them all at once (`Runtime(config)`); a Lambda's `Runtime(config, lazy=True)` builds each on first use,
so a cold start pays only for the clients its invocation touches.

`Runtime.start()` starts the embedded background workers (the event queue's threads, the
anti-entropy pass at start-up and every `DSS_RECONCILE_INTERVAL`, see `dss.events.reconcile`, and the
workflow owner thread, see `dss.workflows.service`); the Lambda entry points never call it, because in
the cloud the queue is driven by SQS triggers and workflows by Step Functions.

`Runtime.workflows` starts long operations from any process: `workflows.start(workflow_name, input,
name=idempotency_key) -> execution_id` records the execution durably and returns at once;
`workflows.status(execution_id)` gives its `ExecutionRecord` (or None). Of the server processes sharing
a data directory, the one holding the journal's lock runs them (`dss.workflows.service`). With
`DSS_WORKFLOWS_URL` set, the same interface starts and describes executions on AWS Step Functions
instead (`dss.workflows.stepfunctions`), and no process runs them.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dss.bundles import BundleService
from dss.checkout import CheckoutRecords, CheckoutService, CheckoutStores, Freshness
from dss.checkout import sweep as sweep_checkouts
from dss.checkout.records import TABLE as CHECKOUT_TABLE
from dss.collections import CollectionService
from dss.collections.owner_index import TABLE as COLLECTIONS_TABLE
from dss.collections.owner_index import OwnerIndex
from dss.config import Config
from dss.events import Event
from dss.events.bus import EventBus, EventWorkers, Handler, open_event_bus
from dss.events.handlers.index import IndexHandler
from dss.events.handlers.journal import JournalHandler
from dss.events.handlers.sync import LargeBlobs, SyncHandler
from dss.events.reconcile import reconcile
from dss.events.reconcile_loop import ReconcileLoop, remove_orphans
from dss.files import ASYNC_STATE_TABLE, FileService
from dss.files.sources import SourceResolver
from dss.identifiers import Replica
from dss.index.backend import SearchIndex
from dss.journal import EventJournal
from dss.journal.compactor import JournalCompactor
from dss.processes import lower_thread_priority
from dss.secrets import ServerSecrets
from dss.storage.blobstore import BlobStoreFactory
from dss.storage.replicas import Replicas
from dss.tables import Table, Tables
from dss.workflows.registry import TaskContext
from dss.workflows.service import Workflows

if TYPE_CHECKING:  # imported where first used: heavy, and not every Lambda needs them
    from dss.auth import Authenticator, KeyStore
    from dss.auth.ownership import Ownership
    from dss.notify import DeliveryQueue, DeliveryWorker
    from dss.subscriptions import SubscriptionService
    from dss.subscriptions.notifier import Notifier
    from dss.workflows.stepfunctions import StepFunctionsWorkflows

__all__ = ["Runtime", "HANDLERS"]

logger = logging.getLogger(__name__)


HANDLERS = ("sync", "index", "journal")  # the event bus's handlers, in every deployment


class _OnFirstUse(dict[str, Any]):
    """A dict whose missing keys are built by `factories` on first access (then kept like any item)."""

    def __init__(self, factories: Mapping[str, Callable[[], Any]]) -> None:
        super().__init__()
        self._factories = factories

    def __missing__(self, key: str) -> Any:
        value = self[key] = self._factories[key]()
        return value


class Runtime:
    """Each member below is built from the configuration, the secrets and the other members it names,
    on first use (`cached_property`), so a Lambda builds only what its invocation touches: a `sync`
    daemon never makes the search client, the deliveries store or the subscriptions. Unless `lazy`, the
    constructor builds every member at once, as the embedded server and the tests expect (a
    misconfiguration fails at start-up; no member is first built by two threads at once)."""

    def __init__(self, config: Config, secrets: ServerSecrets | None = None, *, lazy: bool = False) -> None:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # Keys and credentials, read once per process (a Lambda's cold start) from DSS_SECRETS_URL's store
        self.secrets = secrets if secrets is not None else ServerSecrets.load(config)
        self.config = self.secrets.configure(config)
        self.created = time.time()
        self._started = False
        if not lazy:
            for name in _MEMBERS:
                getattr(self, name)
            for name in HANDLERS:
                self.handlers[name]

    # --- storage and tables ------------------------------------------------------------------------
    @cached_property
    def factory(self) -> BlobStoreFactory:
        return BlobStoreFactory(**self.secrets.store_options())

    @cached_property
    def replicas(self) -> Replicas:
        return Replicas(self.factory, self.config.replica_urls)

    @cached_property
    def tables(self) -> Tables:
        return Tables(self.config.tables_url, prefix=f"dss-{self.config.stage}-")

    @cached_property
    def search(self) -> SearchIndex:
        from dss.index.backend import open_search_index

        config = self.config
        return open_search_index(config.search_url, stage=config.stage, refresh_writes=config.search_refresh_writes,
                                 aws_sigv4=config.search_aws_sigv4)

    @cached_property
    def bus(self) -> EventBus:
        # sqlite:// (the embedded queue) or sns://, sqs:// (SQS queues fed to daemon Lambdas: dss.events.sqs)
        return open_event_bus(self.config.queue_url, HANDLERS, self.config.stage)

    @cached_property
    def workflows(self) -> Workflows | StepFunctionsWorkflows:
        config = self.config
        if config.workflows_url:  # AWS Step Functions runs the executions (dss.workflows.stepfunctions)
            from dss.workflows.stepfunctions import StepFunctionsWorkflows

            return StepFunctionsWorkflows.from_url(config.workflows_url, config.stage)
        return Workflows(config.workflow_journal or config.data_dir / "workflows.sqlite3", self.task_context,
                         threads=config.workflow_threads, task_budget=config.workflow_task_budget)

    # --- auth --------------------------------------------------------------------------------------
    @cached_property
    def keys(self) -> KeyStore:
        from dss.auth import KeyStore

        return KeyStore(self.secrets.store)

    @cached_property
    def authenticator(self) -> Authenticator:
        from dss.auth import Authenticator

        return Authenticator(self.config, self.keys)

    @cached_property
    def owners(self) -> Ownership:
        from dss.auth.ownership import Ownership

        return Ownership(self.tables("owners"), self.config.admin_emails)

    # --- subscriptions and notifications -----------------------------------------------------------
    @cached_property
    def subscription_table(self) -> Table:
        return self.tables("subscriptions")

    @cached_property
    def deliveries(self) -> DeliveryQueue:
        from dss.notify import open_delivery_store

        # SQLite under data_dir, or the DynamoDB table dss-<stage>-deliveries with DSS_TABLES_URL=dynamodb://
        return open_delivery_store(self.config)

    @cached_property
    def delivery_worker(self) -> DeliveryWorker:
        from dss.notify import DeliveryWorker

        return DeliveryWorker(self.deliveries)

    @cached_property
    def subscriptions(self) -> SubscriptionService:
        from dss.subscriptions import SubscriptionService

        return SubscriptionService(self.subscription_table, self.search, allowlist=self.config.callback_allowlist,
                                   deliveries=self.deliveries)

    @cached_property
    def notifier(self) -> Notifier:
        from dss.subscriptions.notifier import Notifier

        config = self.config
        return Notifier(self.subscriptions, self.deliveries,
                        api_base=config.api_url or f"http://{config.host}:{config.port}")

    # --- the services --------------------------------------------------------------------------------
    @cached_property
    def files(self) -> FileService:
        config = self.config
        return FileService(self.replicas, SourceResolver(self.factory, config.staging_roots, config.data_dir),
                           self.bus, config.data_dir / "spool", workflows=self.workflows,
                           async_state=self.tables(ASYNC_STATE_TABLE), async_threshold=config.async_copy_threshold)

    @cached_property
    def bundles(self) -> BundleService:
        return BundleService(self.replicas, self.bus, self.files, self.config.bundle_file_wait)

    @cached_property
    def collections(self) -> CollectionService:
        return CollectionService(self.replicas, self.bus, OwnerIndex(self.tables(COLLECTIONS_TABLE)))

    @cached_property
    def checkout(self) -> CheckoutService:
        config = self.config
        return CheckoutService(
            self.replicas, CheckoutStores(self.factory, config.checkout_urls, config.replica_urls),
            CheckoutRecords(self.tables(CHECKOUT_TABLE)), self.workflows,
            Freshness.from_days(config.blob_ttl_days, config.blob_public_ttl_days), wait=config.checkout_wait)

    # --- events ------------------------------------------------------------------------------------
    @cached_property
    def journals(self) -> dict[Replica, EventJournal]:
        return {replica: EventJournal(self.replicas[replica], self.config.events_journal_size)
                for replica in self.replicas}

    @cached_property
    def compactor(self) -> JournalCompactor:
        return JournalCompactor(self.journals, self.config.events_compact_interval)

    @cached_property
    def handlers(self) -> dict[str, Handler]:
        """The event handlers by name, each built when first looked up."""
        config = self.config
        return _OnFirstUse({
            "sync": lambda: SyncHandler(self.replicas, self.bus,
                                        large_blobs=LargeBlobs(self.workflows, config.async_copy_threshold)),
            "index": lambda: IndexHandler(self.replicas, self.search, config.bundle_manifest_index_limit,
                                          self.notifier),
            "journal": lambda: JournalHandler(self.replicas, self.journals, config.bundle_manifest_index_limit),
        })

    @cached_property
    def workers(self) -> EventWorkers:
        return EventWorkers(self.bus, {name: self.handlers[name] for name in HANDLERS}, threads=self.config.workers,
                            exists=self.exists)

    @cached_property
    def reconciler(self) -> ReconcileLoop:
        return ReconcileLoop(self._reconcile, self.config.data_dir / "reconcile.json", self.config.reconcile_interval,
                             started=self.created)

    def start(self) -> None:
        """Start the background workers from a thread of lower CPU priority (`DSS_BACKGROUND_NICE`):
        every thread they start, down to a copy's digest lanes, inherits it, so the API's requests are
        served first when copies, checkouts, replication or indexing keep every core busy."""
        if not self._started and self.config.workers:
            with ThreadPoolExecutor(1, thread_name_prefix="dss-start-background") as starter:
                starter.submit(self._start_background).result()
            self._started = True
            logger.info("DSS runtime started: %s", self.config.describe())

    def _start_background(self) -> None:
        lower_thread_priority(self.config.background_nice)
        self.workers.start()
        self.delivery_worker.start()
        self.reconciler.start()
        self.compactor.start()
        self.workflows.run()

    def stop(self) -> None:
        if self._started:
            self.workflows.stop()
            self.reconciler.stop()
            self.compactor.stop()
            self.workers.stop()
            self.delivery_worker.stop()
            self._started = False

    def close(self) -> None:
        """Stop the workers and release connections (tests, and the launcher's pre-fork set-up)."""
        self.stop()
        for member in ("search", "deliveries", "workflows", "tables"):
            if member in self.__dict__:  # built (a lazy Runtime may never have made it)
                getattr(self, member).close()

    def task_context(self) -> TaskContext:
        """What workflow tasks are given (built when this process becomes the workflows' owner, or in a
        task Lambda's first invocation)."""
        return TaskContext(stores=self.factory, tables=self.tables, files=self.files)

    def exists(self, event: Event) -> bool:
        """Whether the key an event names exists in its replica (an intent's write happened)."""
        return self.replicas[event.replica].exists(event.key)

    def _reconcile(self, cancelled: Callable[[], bool]) -> Mapping[str, Any]:
        """Start-up and periodic housekeeping: orphaned temp files, then the anti-entropy pass, then the
        sweep of expired checkout objects."""
        stores = self.checkout.stores
        removed = remove_orphans([*(self.replicas[r] for r in self.replicas), *(stores[r] for r in stores)],
                                 self.config.data_dir / "spool", before=self.created)
        report = {**reconcile(self.replicas, self.bus, self.search, cancelled).as_dict(), "orphans_removed": removed}
        expired = sum(sweep_checkouts(stores[r], self.checkout.freshness, cancelled) for r in stores)
        return {**report, "checkout_expired": expired}

    def healthy(self) -> bool:
        """Every replica answers a listing and the event queue answers a query."""
        try:
            for replica in self.replicas:
                next(iter(self.replicas[replica].list("bundles/", start_after="bundles/~")), None)
            self.bus.pending()
        except Exception:  # noqa: BLE001 - any failure is "unhealthy"; details go to the log
            logger.warning("Health check failed", exc_info=True)
            return False
        return True

    def application_secrets(self, base_url: str) -> dict:
        """The OAuth client document the hca client reads (`installed.client_id`); public by design."""
        if self.secrets.application_secrets is not None:  # the secret store's application-secrets.json
            return dict(self.secrets.application_secrets)
        if self.config.application_secrets:
            return json.loads(Path(self.config.application_secrets).read_text())
        return {"installed": {"client_id": "dss-local", "project_id": "dss", "redirect_uris": [base_url]}}


# Every member, in the order an eager Runtime builds them (the order of the dependencies)
_MEMBERS = ("factory", "replicas", "keys", "authenticator", "search", "tables", "subscription_table", "owners",
            "deliveries", "delivery_worker", "subscriptions", "notifier", "bus", "workflows", "files", "bundles",
            "collections", "checkout", "journals", "compactor", "handlers", "workers", "reconciler")
