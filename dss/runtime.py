"""The composition root: builds every port and service once from a Config and hands them out.

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
from pathlib import Path
from typing import Any

from dss.auth import Authenticator, KeyStore
from dss.auth.ownership import Ownership
from dss.bundles import BundleService
from dss.checkout import CheckoutRecords, CheckoutService, CheckoutStores, Freshness
from dss.checkout import sweep as sweep_checkouts
from dss.checkout.records import TABLE as CHECKOUT_TABLE
from dss.collections import CollectionService
from dss.collections.owner_index import TABLE as COLLECTIONS_TABLE
from dss.collections.owner_index import OwnerIndex
from dss.config import Config
from dss.events import Event
from dss.events.bus import EventWorkers, Handler, open_event_bus
from dss.events.handlers.index import IndexHandler
from dss.events.handlers.journal import JournalHandler
from dss.events.handlers.sync import LargeBlobs, SyncHandler
from dss.events.reconcile import reconcile
from dss.events.reconcile_loop import ReconcileLoop, remove_orphans
from dss.files import ASYNC_STATE_TABLE, FileService
from dss.files.sources import SourceResolver
from dss.index.backend import open_search_index
from dss.journal import EventJournal
from dss.journal.compactor import JournalCompactor
from dss.notify import DeliveryWorker, open_delivery_store
from dss.secrets import ServerSecrets
from dss.storage.blobstore import BlobStoreFactory
from dss.storage.replicas import Replicas
from dss.subscriptions import SubscriptionService
from dss.subscriptions.notifier import Notifier
from dss.tables import Tables
from dss.workflows.registry import TaskContext
from dss.workflows.service import Workflows
from dss.workflows.stepfunctions import StepFunctionsWorkflows

__all__ = ["Runtime"]

logger = logging.getLogger(__name__)


class Runtime:
    def __init__(self, config: Config, secrets: ServerSecrets | None = None) -> None:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        # Keys and credentials, read once per process (a Lambda's cold start) from DSS_SECRETS_URL's store
        self.secrets = secrets if secrets is not None else ServerSecrets.load(config)
        self.config = config = self.secrets.configure(config)
        self.created = time.time()
        self.factory = BlobStoreFactory(**self.secrets.store_options())
        self.replicas = Replicas(self.factory, config.replica_urls)
        self.keys = KeyStore(self.secrets.store)
        self.authenticator = Authenticator(config, self.keys)
        self.search = open_search_index(config.search_url, stage=config.stage,
                                        refresh_writes=config.search_refresh_writes,
                                        aws_sigv4=config.search_aws_sigv4)
        self.tables = Tables(config.tables_url, prefix=f"dss-{config.stage}-")
        self.subscription_table = self.tables("subscriptions")
        self.owners = Ownership(self.tables("owners"), config.admin_emails)
        # SQLite under data_dir, or the DynamoDB table dss-<stage>-deliveries with DSS_TABLES_URL=dynamodb://
        self.deliveries = open_delivery_store(config)
        self.delivery_worker = DeliveryWorker(self.deliveries)
        self.subscriptions = SubscriptionService(self.subscription_table, self.search,
                                                 allowlist=config.callback_allowlist, deliveries=self.deliveries)
        self.notifier = Notifier(self.subscriptions, self.deliveries,
                                 api_base=config.api_url or f"http://{config.host}:{config.port}")
        # sqlite:// (the embedded queue) or sns://, sqs:// (SQS queues fed to daemon Lambdas: dss.events.sqs)
        self.bus = open_event_bus(config.queue_url, ("sync", "index", "journal"), config.stage)
        self.workflows: Workflows | StepFunctionsWorkflows
        if config.workflows_url:  # AWS Step Functions runs the executions (dss.workflows.stepfunctions)
            self.workflows = StepFunctionsWorkflows.from_url(config.workflows_url, config.stage)
        else:
            self.workflows = Workflows(config.workflow_journal or config.data_dir / "workflows.sqlite3",
                                       self.task_context, threads=config.workflow_threads,
                                       task_budget=config.workflow_task_budget)
        self.files = FileService(self.replicas, SourceResolver(self.factory, config.staging_roots, config.data_dir),
                                 self.bus, config.data_dir / "spool", workflows=self.workflows,
                                 async_state=self.tables(ASYNC_STATE_TABLE),
                                 async_threshold=config.async_copy_threshold)
        self.bundles = BundleService(self.replicas, self.bus, self.files, config.bundle_file_wait)
        self.collections = CollectionService(self.replicas, self.bus, OwnerIndex(self.tables(COLLECTIONS_TABLE)))
        self.checkout = CheckoutService(
            self.replicas, CheckoutStores(self.factory, config.checkout_urls, config.replica_urls),
            CheckoutRecords(self.tables(CHECKOUT_TABLE)), self.workflows,
            Freshness.from_days(config.blob_ttl_days, config.blob_public_ttl_days), wait=config.checkout_wait)
        self.journals = {replica: EventJournal(self.replicas[replica], config.events_journal_size)
                         for replica in self.replicas}
        self.compactor = JournalCompactor(self.journals, config.events_compact_interval)
        self.handlers: dict[str, Handler] = {
            "sync": SyncHandler(self.replicas, self.bus,
                                large_blobs=LargeBlobs(self.workflows, config.async_copy_threshold)),
            "index": IndexHandler(self.replicas, self.search, config.bundle_manifest_index_limit, self.notifier),
            "journal": JournalHandler(self.replicas, self.journals, config.bundle_manifest_index_limit),
        }
        self.workers = EventWorkers(self.bus, self.handlers, threads=config.workers, exists=self.exists)
        self.reconciler = ReconcileLoop(self._reconcile, config.data_dir / "reconcile.json",
                                        config.reconcile_interval, started=self.created)
        self._started = False

    def start(self) -> None:
        if not self._started and self.config.workers:
            self.workers.start()
            self.delivery_worker.start()
            self.reconciler.start()
            self.compactor.start()
            self.workflows.run()
            self._started = True
            logger.info("DSS runtime started: %s", self.config.describe())

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
        self.search.close()
        self.deliveries.close()
        self.workflows.close()

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
