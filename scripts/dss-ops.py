#!/usr/bin/env python3
"""Operator commands for a DSS deployment, embedded or in the cloud. Run with the project's virtualenv:

    .venv/bin/python scripts/dss-ops.py token --email me@example.org --group hca
    .venv/bin/python scripts/dss-ops.py trust-service-account --key-file sa.json
    .venv/bin/python scripts/dss-ops.py service-account --email me@example.org --key-file sa.json
    .venv/bin/python scripts/dss-ops.py secrets list | get NAME | set NAME [--file F] | init
    .venv/bin/python scripts/dss-ops.py lambda env get | set NAME=VALUE… | unset NAME… | update-deployed
    .venv/bin/python scripts/dss-ops.py events pending | dead | drain
    .venv/bin/python scripts/dss-ops.py events redrive [--handler sync] [--max 100]
    .venv/bin/python scripts/dss-ops.py journal compact | verify [--replica aws] [--repair]
    .venv/bin/python scripts/dss-ops.py sync verify | repair [--replica aws]
    .venv/bin/python scripts/dss-ops.py sync reconcile
    .venv/bin/python scripts/dss-ops.py index reindex --replica aws
    .venv/bin/python scripts/dss-ops.py checkout status | add | remove | verify [--replica aws] [--file U | --bundle U]
    .venv/bin/python scripts/dss-ops.py workflows list | show ID

Settings come from the same DSS_* environment variables as the server: DSS_DATA_DIR for the embedded
default; for a cloud stage DSS_DEPLOYMENT_STAGE, DSS_SECRETS_URL=secretsmanager://dss/<stage>/, the
stage's DSS_QUEUE_URL and replica URLs, and AWS's own variables for the account. Every command has --help.
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
from dss.config import Config, ConfigError  # noqa: E402
from dss.identifiers import BlobKey  # noqa: E402
from dss.logs import configure_logging  # noqa: E402
from dss.ops import LambdaEnvironmentError  # noqa: E402
from dss.secrets import SecretsError, initialise, open_secret_store  # noqa: E402

logger = logging.getLogger("dss-ops")
HANDLERS = ("sync", "index", "journal")  # the event handlers of the bus (dss.runtime.Runtime.handlers)


def _config() -> Config:
    return Config.from_env(os.environ)


def _keys(config: Config) -> KeyStore:
    """The local issuer's key and the trusted accounts, where the servers read them (DSS_SECRETS_URL)."""
    return KeyStore(open_secret_store(config))


def _progress(desc: str, total: int | None = None, unit: str = "key"):
    """A progress bar on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not sys.stderr.isatty())


def _queued(config: Config) -> bool:
    """Whether the deployment's events go to daemons through SNS/SQS (the cloud) rather than this data
    directory's queue, which a server's own workers drain."""
    return config.queue_url.startswith(("sns://", "sqs://"))


def cmd_token(args: argparse.Namespace) -> int:
    config = _config()
    print(mint_token(config, _keys(config), args.email, args.group or ["hca"], args.ttl))
    return 0


def cmd_trust_service_account(args: argparse.Namespace) -> int:
    config = _config()
    email = _keys(config).trust_service_account(json.loads(Path(args.key_file).read_text()))
    print(f"Tokens self-signed by {email} with this key are now accepted.")
    if config.secrets_url:
        print("Running Lambdas read it at their next cold start.", file=sys.stderr)
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
    _keys(config).trust_service_account(account)
    print(f"Wrote {args.key_file}; tokens {account['client_email']} signs with it are now accepted.")
    return 0


def _runtime():
    from dss.runtime import Runtime

    return Runtime(_config())


def cmd_secrets(args: argparse.Namespace) -> int:
    store = open_secret_store(_config())
    if args.action == "list":  # names only: values are printed one at a time, when asked for by name
        print("\n".join(store.names()))
    elif args.action == "get":
        value = store.get(args.name)
        if value is None:
            print(f"secret {args.name!r} is not set in {store.location}", file=sys.stderr)
            return 1
        sys.stdout.write(value if value.endswith("\n") else value + "\n")
    elif args.action == "set":
        value = Path(args.file).read_text() if args.file else sys.stdin.read()
        store.put(args.name, value)
        print(f"Set {args.name} in {store.location}.", file=sys.stderr)
    elif args.action == "init":
        created = initialise(store)
        print(f"Created {', '.join(created)} in {store.location}." if created else "Every generated key is set.",
              file=sys.stderr)
    return 0


def _lambda_environment():
    from dss.ops import LambdaEnvironment

    config = _config()
    return LambdaEnvironment.open(config.stage, config.secrets_url or None)


def _assignments(pairs: list[str]) -> dict[str, str]:
    variables = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise LambdaEnvironmentError(f"{pair!r} is not NAME=VALUE")
        variables[name] = value
    return variables


def cmd_lambda_env(args: argparse.Namespace) -> int:
    environment = _lambda_environment()
    if args.action == "get":
        print(json.dumps(environment.get(), indent=2, sort_keys=True))
    elif args.action == "set":
        print(json.dumps(environment.set(_assignments(args.assignments)), indent=2, sort_keys=True))
    elif args.action == "unset":
        print(json.dumps(environment.unset(args.names), indent=2, sort_keys=True))
    elif args.action == "update-deployed":
        functions = environment.functions()
        with _progress(f"update {environment.parameter}", total=len(functions), unit="function") as bar:
            changed = environment.update_deployed(progress=bar.update)
        for name, updated in changed.items():
            print(name, "updated" if updated else "unchanged")
        print(f"{sum(changed.values())} of {len(changed)} Lambda function(s) of stage {environment.stage} updated.",
              file=sys.stderr)
    return 0


def _bus():
    from dss.events.bus import open_event_bus

    config = _config()
    return open_event_bus(config.queue_url, HANDLERS, config.stage)


def cmd_events(args: argparse.Namespace) -> int:
    if args.action == "drain":  # runs the handlers here: the embedded queue only
        _runtime().workers.drain(timeout=args.timeout)
        return 0
    bus = _bus()
    if args.action == "pending":
        print(bus.pending())
    elif args.action == "dead":
        print(json.dumps(bus.dead_letters(), indent=2))
    elif args.action == "redrive":
        print(f"Re-drove {bus.redrive(args.handler, limit=max(0, args.max))} dead-lettered events.")
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


def _handled_by() -> str:
    return ("the stage's daemons handle them" if _queued(_config())
            else "a running server's workers handle them (or run `events drain`)")


def cmd_sync(args: argparse.Namespace) -> int:
    from dss.identifiers import Replica
    from dss.ops import repair_sync, verify_sync

    runtime = _runtime()
    if args.action == "reconcile":
        report = runtime.reconciler.run(force=True)
        print(json.dumps(report, indent=2))
        print(f"Events for what was missing are queued: {_handled_by()}.", file=sys.stderr)
        return 0
    replica = Replica(args.replica)
    with _progress(f"{args.action} {replica.value} → {replica.other.value}") as bar:
        if args.action == "verify":
            problems = verify_sync(runtime.replicas, replica, progress=bar.update)
        else:
            repair = repair_sync(runtime.replicas, runtime.bus, replica, progress=bar.update)
            problems = repair.failed
    for problem in problems:
        print(problem)
    if args.action == "repair":
        print(f"Copied {len(repair.copied)} key(s) to {replica.other.value}; {len(problems)} could not be copied. "
              f"Their indexing is queued: {_handled_by()}.", file=sys.stderr)
    else:
        print(f"{len(problems)} problem(s) found.", file=sys.stderr)
    return 1 if problems else 0


def cmd_index(args: argparse.Namespace) -> int:
    from dss.identifiers import Replica
    from dss.ops import queue_reindex, reindex

    runtime = _runtime()
    replica = Replica(args.replica)
    total = sum(1 for _ in runtime.replicas[replica].list("bundles/")) if sys.stderr.isatty() else None
    with _progress(f"reindex {replica.value}", total=total) as bar:
        if _queued(runtime.config):  # the cloud: the index daemons do the work, fanned out by the queue
            queued = queue_reindex(runtime.replicas, runtime.bus, replica, progress=bar.update)
        else:
            reindexed = reindex(runtime.replicas, runtime.search, replica,
                                runtime.config.bundle_manifest_index_limit, progress=bar.update)
    if _queued(runtime.config):
        print(f"Queued {queued} index event(s) for the bundle keys of the {replica.value} replica.")
    else:
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


def _verbs(command: argparse.ArgumentParser, func, verbs: dict[str, str]) -> dict[str, argparse.ArgumentParser]:
    """Sub-commands `verbs` ({name: help}) of `command`, each with its own --help; `args.action` names it."""
    sub = command.add_subparsers(dest="action", required=True, metavar="{" + ",".join(verbs) + "}")
    made = {}
    for verb, text in verbs.items():
        made[verb] = sub.add_parser(verb, help=text, description=text)
        made[verb].set_defaults(func=func)
    return made


def _command(commands, name: str, text: str, **kwargs) -> argparse.ArgumentParser:
    return commands.add_parser(name, help=text, description=text, **kwargs)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="dss-ops.py", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = top.add_subparsers(dest="command", required=True)

    token = _command(commands, "token", "mint a token from the local issuer (key: token-issuer-key in the secret "
                     "store of DSS_SECRETS_URL)")
    token.add_argument("--email", required=True)
    token.add_argument("--group", action="append", help="group claim (repeatable; default hca)")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.set_defaults(func=cmd_token)

    trust = _command(commands, "trust-service-account", "accept tokens self-signed by a service account key "
                     "(recorded in the secret store's service-accounts)")
    trust.add_argument("--key-file", required=True, help="a Google service-account JSON key file")
    trust.set_defaults(func=cmd_trust_service_account)

    account = _command(commands, "service-account", "write a new service-account key file and trust it "
                       "(for GOOGLE_APPLICATION_CREDENTIALS of the hca and dbio clients)")
    account.add_argument("--email", required=True, help="the account's e-mail (the clients send it as the caller's)")
    account.add_argument("--key-file", required=True, help="where to write the JSON key file (mode 0600)")
    account.set_defaults(func=cmd_service_account)

    secrets = _command(commands, "secrets", "the secrets of DSS_SECRETS_URL's store (DSS_DATA_DIR/auth by "
                       "default, or Secrets Manager): url-signing-key, token-issuer-key, service-accounts, "
                       "admin-emails, application-secrets.json, gcp-credentials.json")
    verbs = _verbs(secrets, cmd_secrets, {
        "list": "the names of the secrets that are set (never their values)",
        "get": "print one secret's value",
        "set": "set one secret from stdin or --file",
        "init": "create the generated keys (url-signing-key, token-issuer-key) that are not set; never replaces one",
    })
    verbs["get"].add_argument("name")
    verbs["set"].add_argument("name")
    verbs["set"].add_argument("--file", help="read the value from this file (default: stdin)")

    lambdas = _command(commands, "lambda", "the Lambda functions of the stage (DSS_DEPLOYMENT_STAGE)")
    lambda_commands = lambdas.add_subparsers(dest="group", required=True)
    env = _command(lambda_commands, "env", "the stage's Lambda environment, a JSON object of DSS_* variables in "
                   "the SSM parameter /dss/<stage>/environment")
    verbs = _verbs(env, cmd_lambda_env, {
        "get": "print the environment",
        "set": "set variables (NAME=VALUE …) in the parameter; update-deployed pushes it to the functions",
        "unset": "remove variables (NAME …) from the parameter",
        "update-deployed": "give every deployed function dss-<stage>-* the environment plus DSS_SECRETS_URL, "
                           "keeping its non-DSS_* variables",
    })
    verbs["set"].add_argument("assignments", nargs="+", metavar="NAME=VALUE")
    verbs["unset"].add_argument("names", nargs="+", metavar="NAME")

    events = _command(commands, "events", "the event queue (DSS_QUEUE_URL: the embedded queue or the SQS queues "
                      "of sns://…): waiting events, dead letters, re-drive")
    verbs = _verbs(events, cmd_events, {
        "pending": "the number of events waiting or in flight",
        "dead": "the dead-lettered events, as JSON",
        "drain": "handle the embedded queue's events here until it is empty",
        "redrive": "put dead-lettered events back in their queue",
    })
    verbs["drain"].add_argument("--timeout", type=float, default=600, help="seconds to wait at most")
    verbs["redrive"].add_argument("--handler", choices=list(HANDLERS), help="only this handler's dead letters")
    verbs["redrive"].add_argument("--max", type=int, default=100, help="at most this many (default 100)")

    journal = _command(commands, "journal", "the events journal: compact it now, or replay it against the "
                       "replica's bundles")
    verbs = _verbs(journal, cmd_journal, {
        "compact": "write everything pending into journals now, full or not",
        "verify": "replay the journal and check it against the replica's bundles",
    })
    for verb in verbs.values():
        verb.add_argument("--replica", choices=["aws", "gcp"])
    verbs["verify"].add_argument("--repair", action="store_true", help="queue journal events for what is missing")
    verbs["compact"].set_defaults(repair=False)

    index = _command(commands, "index", "the search index")
    verbs = _verbs(index, cmd_index, {
        "reindex": "rebuild a replica's search documents from storage: here (embedded), or, with an SNS/SQS "
                   "DSS_QUEUE_URL, by publishing one index event per bundle key for the index daemons",
    })
    verbs["reindex"].add_argument("--replica", required=True, choices=["aws", "gcp"])

    sync = _command(commands, "sync", "replication between the replicas")
    verbs = _verbs(sync, cmd_sync, {
        "verify": "list the keys of a replica missing (or of another size) in the other",
        "repair": "copy what verify finds missing to the other replica (idempotent)",
        "reconcile": "queue replication and indexing of whatever is missing (the anti-entropy pass)",
    })
    for name in ("verify", "repair"):
        verbs[name].add_argument("--replica", default="aws", choices=["aws", "gcp"], help="the source replica")

    checkout = _command(commands, "checkout", "checkout copies: jobs, adding, removing, verifying")
    verbs = _verbs(checkout, cmd_checkout, {
        "status": "list bundle checkout jobs (or one, --job) and count the file checkouts",
        "add": "check out a file or a bundle and wait for it",
        "remove": "delete a file's or a bundle's checkout",
        "verify": "compare the checked-out files with their blobs",
    })
    for verb in verbs.values():
        verb.add_argument("--replica", default="aws", choices=["aws", "gcp"])
        verb.set_defaults(file=None, bundle=None, version=None, job=None, timeout=3600.0)
    for name in ("add", "remove"):
        verbs[name].add_argument("--file", help="a file uuid")
        verbs[name].add_argument("--bundle", help="a bundle uuid")
        verbs[name].add_argument("--version", help="the file or bundle version (default: the latest)")
    verbs["status"].add_argument("--job", help="a bundle checkout job id")
    verbs["add"].add_argument("--timeout", type=float, default=3600, help="seconds to wait for the copy")

    from dss.workflows.history import add_cli as add_workflows_cli
    add_workflows_cli(commands, lambda: (config := _config()).workflow_journal or config.data_dir / "workflows.sqlite3")
    return top


def main(argv: list[str] | None = None) -> int:
    configure_logging(0)
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, SecretsError, LambdaEnvironmentError) as exc:  # the message says what to do
        print(f"dss-ops: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        if type(exc).__module__.startswith("botocore."):  # no credentials, access denied, …: AWS's message
            print(f"dss-ops: AWS: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
