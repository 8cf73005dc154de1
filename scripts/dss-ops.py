#!/usr/bin/env python3
"""Operator commands for a DSS deployment. Run with the project's virtualenv:

    .venv/bin/python scripts/dss-ops.py token --email me@example.org --group hca
    .venv/bin/python scripts/dss-ops.py trust-service-account --key-file sa.json
    .venv/bin/python scripts/dss-ops.py service-account --email me@example.org --key-file sa.json
    .venv/bin/python scripts/dss-ops.py events pending|dead
    .venv/bin/python scripts/dss-ops.py events redrive [--handler sync] [--max 100]
    .venv/bin/python scripts/dss-ops.py journal compact|verify [--replica aws] [--repair]
    .venv/bin/python scripts/dss-ops.py sync verify [--replica aws]
    .venv/bin/python scripts/dss-ops.py sync reconcile
    .venv/bin/python scripts/dss-ops.py index reindex --replica aws
    .venv/bin/python scripts/dss-ops.py checkout status|add|remove|verify [--replica aws] [--file U | --bundle U]

Settings come from the same DSS_* environment variables as the server (DSS_DATA_DIR above all).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dss.auth import KeyStore, mint_token, new_service_account_key  # noqa: E402
from dss.config import Config  # noqa: E402
from dss.identifiers import BlobKey  # noqa: E402
from dss.logs import configure_logging  # noqa: E402

logger = logging.getLogger("dss-ops")


def _config() -> Config:
    return Config.from_env(os.environ)


def cmd_token(args: argparse.Namespace) -> int:
    config = _config()
    print(mint_token(config, KeyStore(config.data_dir / "auth"), args.email, args.group or ["hca"], args.ttl))
    return 0


def cmd_trust_service_account(args: argparse.Namespace) -> int:
    config = _config()
    email = KeyStore(config.data_dir / "auth").trust_service_account(json.loads(Path(args.key_file).read_text()))
    print(f"Tokens self-signed by {email} with this key are now accepted.")
    return 0


def cmd_service_account(args: argparse.Namespace) -> int:
    config = _config()
    account = new_service_account_key(args.email)
    try:
        fd = os.open(args.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # a private key: owner only
    except FileExistsError:
        print(f"{args.key_file} exists; not overwriting it.", file=sys.stderr)
        return 1
    with os.fdopen(fd, "w") as handle:
        json.dump(account, handle, indent=2)
    KeyStore(config.data_dir / "auth").trust_service_account(account)
    print(f"Wrote {args.key_file}; tokens {account['client_email']} signs with it are now accepted.")
    return 0


def _runtime():
    from dss.runtime import Runtime

    return Runtime(_config())


def cmd_events(args: argparse.Namespace) -> int:
    runtime = _runtime()
    if args.action == "pending":
        print(runtime.bus.pending())
    elif args.action == "dead":
        print(json.dumps(runtime.bus.dead_letters(), indent=2))
    elif args.action == "drain":
        runtime.workers.drain(timeout=args.timeout)
    elif args.action == "redrive":
        print(f"Re-drove {runtime.bus.redrive(args.handler, limit=max(0, args.max))} dead-lettered events.")
    return 0


def cmd_journal(args: argparse.Namespace) -> int:
    from dss.events import Event
    from dss.identifiers import Replica
    from dss.journal.compactor import compact_all
    from dss.journal.verify import verify_journal

    runtime = _runtime()
    journals = {r: j for r, j in runtime.journals.items() if args.replica in (None, r.value)}
    if args.action == "compact":  # everything pending, full journals or not
        print(json.dumps(compact_all(journals, 0)))
        return 0
    failed = 0
    for replica, journal in journals.items():
        report = verify_journal(journal)
        for problem in report.problems:
            print(f"{replica.value}: {problem}")
        print(f"{replica.value}: {report.journals} journals, {report.events} events, {len(report.problems)} problem(s)",
              file=sys.stderr)
        failed += len(report.problems)
        if args.repair:
            for key in report.missing:
                runtime.bus.publish(Event(Replica(replica).value, key), handlers=("journal",))
            print(f"{replica.value}: queued {len(report.missing)} journal event(s); a running server records them "
                  "(or run `events drain`).", file=sys.stderr)
    return 1 if failed else 0


def cmd_sync(args: argparse.Namespace) -> int:
    from dss.identifiers import Replica
    from dss.ops import verify_sync

    runtime = _runtime()
    if args.action == "reconcile":
        report = runtime.reconciler.run(force=True)
        print(json.dumps(report, indent=2))
        print("Events for what was missing are queued: a running server's workers handle them "
              "(or run `events drain`).", file=sys.stderr)
        return 0
    problems = verify_sync(runtime.replicas, Replica(args.replica))
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s) found.", file=sys.stderr)
    return 1 if problems else 0


def cmd_index(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dss.identifiers import Replica
    from dss.ops import reindex

    runtime = _runtime()
    replica = Replica(args.replica)
    total = sum(1 for _ in runtime.replicas[replica].list("bundles/"))
    with tqdm(total=total, unit="key", desc=f"reindex {replica.value}") as bar:
        reindexed = reindex(runtime.replicas, runtime.search, replica, runtime.config.bundle_manifest_index_limit,
                            progress=bar.update)
    print(f"Reindexed {reindexed} bundle keys of the {replica.value} replica.")
    return 0


def cmd_checkout(args: argparse.Namespace) -> int:
    from dss.checkout import ops
    from dss.identifiers import Replica

    runtime, replica = _runtime(), Replica(args.replica)
    service = runtime.checkout
    if args.action == "verify":
        problems = list(ops.verify(service, replica))
        print("\n".join(problems) or "Every file checkout matches its blob.")
        return 1 if problems else 0
    if args.action == "status":
        if args.job:
            print(json.dumps(service.job_status(replica, args.job), indent=2))
        else:
            for job in service.records.jobs(replica):
                print(job["job_id"], job["status"], job.get("location") or job.get("cause") or "")
            print(f"{sum(1 for _ in service.stores[replica].list('blobs/'))} file checkout(s) in "
                  f"{service.stores[replica].url}", file=sys.stderr)
        return 0
    if bool(args.file) == bool(args.bundle):
        print("name one of --file or --bundle", file=sys.stderr)
        return 2
    if args.file:
        metadata = runtime.files.metadata(args.file, replica, args.version)
        blob = BlobKey(metadata["sha256"], metadata["sha1"], metadata["s3-etag"], metadata["crc32c"])
        if args.action == "remove":
            print(f"Removed {ops.remove_file(service, replica, blob)} object(s).")
            return 0
        execution = service.start_file(replica, blob)
    else:
        manifest = runtime.bundles.get(args.bundle, replica, args.version)
        if args.action == "remove":
            print(f"Removed {ops.remove_bundle(service, replica, args.bundle.lower(), manifest['version'])} object(s).")
            return 0
        execution = service.start_bundle(replica, args.bundle.lower(), manifest["version"])
    return _await_workflow(runtime, execution, args.timeout)


def _await_workflow(runtime, execution: str, timeout: float) -> int:
    """Run the execution here unless a server runs the workflows (then it does), and wait for its end."""
    import time

    runtime.workflows.run()
    deadline = time.monotonic() + timeout
    try:
        while (record := runtime.workflows.status(execution)) is not None and record.status == "RUNNING":
            if time.monotonic() > deadline:
                print(f"{execution} is still running", file=sys.stderr)
                return 1
            time.sleep(0.2)
    finally:
        runtime.workflows.stop()
    print(execution, record.status if record else "UNKNOWN", (record.cause or "") if record else "")
    return 0 if record is not None and record.status == "SUCCEEDED" else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dss-ops.py", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)

    token = commands.add_parser("token", help="mint a token from the local issuer")
    token.add_argument("--email", required=True)
    token.add_argument("--group", action="append", help="group claim (repeatable; default hca)")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)

    trust = commands.add_parser("trust-service-account", help="accept tokens self-signed by a service account key")
    trust.add_argument("--key-file", required=True, help="a Google service-account JSON key file")
    trust.set_defaults(func=cmd_trust_service_account)

    account = commands.add_parser("service-account", help="write a new service-account key file and trust it "
                                  "(for GOOGLE_APPLICATION_CREDENTIALS of the hca and dbio clients)")
    account.add_argument("--email", required=True, help="the account's e-mail (the clients send it as the caller's)")
    account.add_argument("--key-file", required=True, help="where to write the JSON key file (mode 0600)")
    account.set_defaults(func=cmd_service_account)

    events = commands.add_parser("events", help="inspect or drain the embedded event queue, or queue its dead "
                                 "letters again (redrive; also the SQS dead-letter queues of DSS_QUEUE_URL=sns://…)")
    events.add_argument("action", choices=["pending", "dead", "drain", "redrive"])
    events.add_argument("--timeout", type=float, default=600)
    events.add_argument("--handler", choices=["sync", "index", "journal"], help="redrive only this handler's")
    events.add_argument("--max", type=int, default=100, help="redrive at most this many (default 100)")
    events.set_defaults(func=cmd_events)

    journal = commands.add_parser("journal", help="compact the events journal now (everything pending), or replay it "
                                  "and check it against the replica's bundles (verify; --repair re-drives the missing)")
    journal.add_argument("action", choices=["compact", "verify"])
    journal.add_argument("--replica", choices=["aws", "gcp"])
    journal.add_argument("--repair", action="store_true")
    journal.set_defaults(func=cmd_journal)

    index = commands.add_parser("index", help="rebuild a replica's search index from storage")
    index.add_argument("action", choices=["reindex"])
    index.add_argument("--replica", required=True, choices=["aws", "gcp"])
    index.set_defaults(func=cmd_index)

    sync = commands.add_parser("sync", help="check that every object of a replica exists in the other (verify), "
                                            "or queue replication and indexing of whatever is missing (reconcile)")
    sync.add_argument("action", choices=["verify", "reconcile"])
    sync.add_argument("--replica", default="aws", choices=["aws", "gcp"])
    sync.set_defaults(func=cmd_sync)

    checkout = commands.add_parser("checkout", help="list checkout jobs and copies (status), check out a file or "
                                                    "bundle (add), delete a checkout (remove), or compare the "
                                                    "checked-out files with their blobs (verify)")
    checkout.add_argument("action", choices=["status", "add", "remove", "verify"])
    checkout.add_argument("--replica", default="aws", choices=["aws", "gcp"])
    checkout.add_argument("--file", help="a file uuid (add, remove)")
    checkout.add_argument("--bundle", help="a bundle uuid (add, remove)")
    checkout.add_argument("--version", help="the file or bundle version (default: the latest)")
    checkout.add_argument("--job", help="a bundle checkout job id (status)")
    checkout.add_argument("--timeout", type=float, default=3600, help="seconds add waits for the copy")
    checkout.set_defaults(func=cmd_checkout)

    from dss.workflows.history import add_cli as add_workflows_cli
    add_workflows_cli(commands, lambda: (config := _config()).workflow_journal or config.data_dir / "workflows.sqlite3")
    return top


def main(argv: list[str] | None = None) -> int:
    configure_logging(0)
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
