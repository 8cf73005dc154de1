"""One immutable settings object, built once from an environment mapping at an entry point.

Nothing else in `dss` reads `os.environ`; entry points call `Config.from_env(os.environ)` and pass the
result down. Every `DSS_*` variable is listed in the README's configuration table.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["Config", "ConfigError", "DEFAULT_NOTIFY_DELAYS", "IdentityProvider"]

GROUP_CLAIM = "https://auth.data.humancellatlas.org/group"
EMAIL_CLAIM = "https://auth.data.humancellatlas.org/email"
# The audience the hca client hard-codes for service-account tokens.
HCA_AUDIENCE = "https://dev.data.humancellatlas.org/"
LOCAL_ISSUER = "https://dss.local/"
# 0 s, 1 min, 10 min, 1 h, 6 h, then daily up to day 7.
DEFAULT_NOTIFY_DELAYS = (0, 60, 600, 3600, 21600) + (86400,) * 7


class ConfigError(ValueError):
    """A setting is missing or malformed."""


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() not in ("", "0", "false", "no", "off")


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, minimum: float | None = None) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if minimum is not None and not value >= minimum:  # also refuses NaN
        raise ConfigError(f"{name} must be at least {minimum:g}, got {raw!r}")
    return value


def _networks(entries: tuple[str, ...]) -> tuple[str, ...]:
    for entry in entries:
        if "/" in entry:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ConfigError(f"DSS_CALLBACK_ALLOWLIST entry {entry!r} is not a CIDR range") from None
    return entries


def _workflows_url(raw: str | None) -> str:
    """DSS_WORKFLOWS_URL: empty (the embedded executor) or a Step Functions URL."""
    from dss.workflows.stepfunctions import parse_url

    url = (raw or "").strip()
    if url:
        try:
            parse_url(url)
        except ValueError as e:
            raise ConfigError(f"DSS_WORKFLOWS_URL: {e}") from None
    return url


def _secrets_url(raw: str | None) -> str:
    """DSS_SECRETS_URL: empty (files in the data directory) or secretsmanager://<prefix> (dss.secrets)."""
    from dss.secrets import secret_prefix

    url = (raw or "").strip()
    if url:
        try:
            secret_prefix(url, stage="check")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return url


def _queue_url(raw: str | None, data_dir: Path) -> str:
    """DSS_QUEUE_URL: sqlite://<path> (the default) or an SNS/SQS bus, checked here (dss.events.sqs)."""
    url = (raw or "").strip() or f"sqlite://{data_dir / 'queue.sqlite3'}"
    if url.startswith(("sns://", "sqs://")):
        from dss.events.sqs import parse_queue_url

        try:
            parse_queue_url(url, stage="check")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    elif not url.startswith("sqlite://"):
        raise ConfigError(f"DSS_QUEUE_URL must be a sqlite://, sns:// or sqs:// URL, got {url!r}")
    return url


@dataclasses.dataclass(frozen=True)
class IdentityProvider:
    """How to read one kind of token: the audiences it is issued for, and the claims holding groups and
    e-mail. `issuer` None: tokens of the local issuer and of trusted service accounts (whose `iss` is their
    e-mail); otherwise an OpenID Connect issuer, trusted by being listed."""
    audiences: tuple[str, ...]
    group_claim: str = GROUP_CLAIM
    email_claim: str = EMAIL_CLAIM
    issuer: str | None = None


_PROVIDER_KEYS = {"issuer", "audience", "group_claim", "email_claim"}


def _identity_providers(raw: str | None) -> tuple[IdentityProvider, ...]:
    """DSS_IDENTITY_PROVIDERS: a JSON list of `{"audience": str | [str], "group_claim", "email_claim",
    "issuer"?}` objects (claims default to the hca ones)."""
    if not raw:
        return ()
    try:
        entries = json.loads(raw)
        if not isinstance(entries, list):
            raise ValueError("not a list")
        providers = []
        for entry in entries:
            if not isinstance(entry, dict) or not set(entry) <= _PROVIDER_KEYS or "audience" not in entry:
                raise ValueError(f"each entry has an audience and only the keys {sorted(_PROVIDER_KEYS)}")
            audience = entry["audience"]
            audiences = (audience,) if isinstance(audience, str) else tuple(audience)
            if not audiences or not all(isinstance(a, str) and a for a in audiences):
                raise ValueError("audience is a non-empty string or list of strings")
            providers.append(IdentityProvider(audiences, str(entry.get("group_claim") or GROUP_CLAIM),
                                              str(entry.get("email_claim") or EMAIL_CLAIM),
                                              str(entry["issuer"]) if entry.get("issuer") else None))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"DSS_IDENTITY_PROVIDERS must be a JSON list of identity providers: {e}") from None
    return tuple(providers)


@dataclasses.dataclass(frozen=True)
class Config:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 5000
    api_url: str | None = None
    version: str = "unversioned"
    stage: str = "local"
    debug: int = 0
    read_only: bool = False
    replica_urls: Mapping[str, str] = dataclasses.field(default_factory=dict)
    staging_roots: tuple[Path, ...] = ()
    queue_url: str = ""
    tables_url: str = ""
    search_url: str = ""
    # a remote search cluster (http(s) search_url): make each write searchable before answering
    # (refresh=true), and sign requests with SigV4 (None: when the URL is an AWS-managed domain)
    search_refresh_writes: bool = False
    search_aws_sigv4: bool | None = None
    workers: int = 2
    # how much lower than the API's the CPU priority of background threads is (nice; 0: the same)
    background_nice: int = 10
    processes: int = 0
    signed_url_ttl: int = 3600
    bundle_file_wait: float = 15.0
    bundle_manifest_index_limit: int = 20000
    reconcile_interval: float = 3600.0
    # events journal (dss.journal): events per compacted journal, and seconds between compaction passes
    # (also how long an event may wait before a partial journal is written)
    events_journal_size: int = 1000
    events_compact_interval: float = 10.0
    # workflows (long copies): the executor's journal, its task threads (0: one per core), the time a task
    # invocation is given before it saves progress, and the size above which PUT /files answers 202
    workflow_journal: Path | None = None
    workflow_threads: int = 0
    workflow_task_budget: float = 600.0
    # "" (the embedded executor above) or AWS Step Functions: "stepfunctions://" or
    # "arn:aws:states:<region>:<account>" (dss.workflows.stepfunctions)
    workflows_url: str = ""
    async_copy_threshold: int = 64 * 1024 * 1024
    # checkout stores (dss.checkout): where each replica's reads are served from, how long a copy lives
    # and when it is copied again (days), how long a read waits for a small checkout, and the Retry-After
    # of the 301 while one runs
    checkout_urls: Mapping[str, str] = dataclasses.field(default_factory=dict)
    blob_ttl_days: float = 14.0
    blob_public_ttl_days: float = 7.0
    checkout_wait: float = 2.0
    checkout_retry_after: int = 10
    # auth
    audiences: tuple[str, ...] = (HCA_AUDIENCE,)
    group_claim: str = GROUP_CLAIM
    email_claim: str = EMAIL_CLAIM
    openid_providers: tuple[str, ...] = ()
    authorized_domains: tuple[str, ...] = ()
    admin_emails: tuple[str, ...] = ()
    local_issuer: str = LOCAL_ISSUER
    application_secrets: str | None = None
    # more token kinds beside the one above (e.g. the dbio client's), see `identity_providers()`
    extra_identity_providers: tuple[IdentityProvider, ...] = ()
    # HTTP: TLS served by ./dss-api itself, and the origins whose browser pages may call the API (CORS)
    tls_cert: Path | None = None
    tls_key: Path | None = None
    cors_origins: tuple[str, ...] = ()
    # notifications
    notify_delays: tuple[int, ...] = DEFAULT_NOTIFY_DELAYS
    notify_timeout: float = 60.0
    callback_allowlist: tuple[str, ...] = ()
    # where keys and credentials are kept: "" (files in DSS_DATA_DIR/auth) or "secretsmanager://<prefix>"
    # (dss.secrets); and whether the Lambdas trace with AWS X-Ray (dss.tracing)
    secrets_url: str = ""
    xray_trace: bool = False
    # the Pub/Sub subscription the GCS event relay pulls (dss.events.gcs_relay): "" is
    # dss-gs-events-<stage>-relay in the project of the GCP credentials; a bare name, or projects/<p>/subscriptions/<s>
    gcs_events_subscription: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, cwd: Path | None = None) -> Config:
        base = cwd or Path(os.getcwd())
        data_dir = Path(env.get("DSS_DATA_DIR") or base / "data").expanduser()
        if not data_dir.is_absolute():
            data_dir = base / data_dir
        replica_urls = {
            "aws": env.get("DSS_AWS_REPLICA_URL") or (data_dir / "replicas" / "aws").as_uri(),
            "gcp": env.get("DSS_GCP_REPLICA_URL") or (data_dir / "replicas" / "gcp").as_uri(),
        }
        checkout_urls = {
            "aws": env.get("DSS_AWS_CHECKOUT_URL") or (data_dir / "checkout" / "aws").as_uri(),
            "gcp": env.get("DSS_GCP_CHECKOUT_URL") or (data_dir / "checkout" / "gcp").as_uri(),
        }
        delays = env.get("DSS_NOTIFY_DELAYS")
        return cls(
            data_dir=data_dir,
            host=env.get("DSS_HOST") or "127.0.0.1",
            port=_int(env, "DSS_PORT", 5000, minimum=0),
            api_url=(env.get("DSS_API_URL") or "").rstrip("/") or None,
            version=env.get("DSS_VERSION") or "unversioned",
            stage=env.get("DSS_DEPLOYMENT_STAGE") or "local",
            debug=_int(env, "DSS_DEBUG", 0),
            read_only=_flag(env.get("DSS_READ_ONLY_MODE")),
            replica_urls=replica_urls,
            staging_roots=tuple(Path(p).resolve() for p in _csv(env.get("DSS_STAGING_ROOTS"))),
            queue_url=_queue_url(env.get("DSS_QUEUE_URL"), data_dir),
            tables_url=env.get("DSS_TABLES_URL") or f"sqlite://{data_dir / 'tables.sqlite3'}",
            search_url=env.get("DSS_SEARCH_URL") or f"sqlite://{data_dir / 'search'}",
            search_refresh_writes=_flag(env.get("DSS_SEARCH_REFRESH_WRITES")),
            search_aws_sigv4=(None if (env.get("DSS_SEARCH_AWS_SIGV4") or "").strip().lower() in ("", "auto")
                              else _flag(env.get("DSS_SEARCH_AWS_SIGV4"))),
            workers=_int(env, "DSS_WORKERS", 2, minimum=0),
            background_nice=min(19, _int(env, "DSS_BACKGROUND_NICE", 10, minimum=0)),
            processes=_int(env, "DSS_API_PROCESSES", 0, minimum=0),
            signed_url_ttl=_int(env, "DSS_SIGNED_URL_TTL", 3600, minimum=1),
            bundle_file_wait=_float(env, "DSS_BUNDLE_FILE_WAIT", 15.0),
            bundle_manifest_index_limit=_int(env, "DSS_BUNDLE_MANIFEST_INDEX_LIMIT", 20000),
            reconcile_interval=_float(env, "DSS_RECONCILE_INTERVAL", 3600.0, minimum=0.0),
            events_journal_size=_int(env, "DSS_EVENTS_JOURNAL_SIZE", 1000, minimum=1),
            events_compact_interval=_float(env, "DSS_EVENTS_COMPACT_INTERVAL", 10.0, minimum=0.05),
            checkout_urls=checkout_urls,
            blob_ttl_days=_float(env, "DSS_BLOB_TTL_DAYS", 14.0, minimum=0.1),
            blob_public_ttl_days=_float(env, "DSS_BLOB_PUBLIC_TTL_DAYS", 7.0, minimum=0.0),
            checkout_wait=_float(env, "DSS_CHECKOUT_WAIT", 2.0, minimum=0.0),
            checkout_retry_after=_int(env, "DSS_CHECKOUT_RETRY_AFTER", 10, minimum=0),
            workflow_journal=Path(env.get("DSS_WORKFLOW_JOURNAL") or data_dir / "workflows.sqlite3"),
            workflow_threads=_int(env, "DSS_WORKFLOW_THREADS", 0),
            workflow_task_budget=_float(env, "DSS_WORKFLOW_TASK_BUDGET", 600.0, minimum=1.0),
            workflows_url=_workflows_url(env.get("DSS_WORKFLOWS_URL")),
            async_copy_threshold=_int(env, "DSS_ASYNC_COPY_THRESHOLD", 64 * 1024 * 1024),
            audiences=_csv(env.get("DSS_OIDC_AUDIENCE")) or (HCA_AUDIENCE,),
            group_claim=env.get("DSS_OIDC_GROUP_CLAIM") or GROUP_CLAIM,
            email_claim=env.get("DSS_OIDC_EMAIL_CLAIM") or EMAIL_CLAIM,
            openid_providers=_csv(env.get("DSS_OPENID_PROVIDERS")),
            authorized_domains=_csv(env.get("DSS_AUTHORIZED_DOMAINS")),
            admin_emails=tuple(e.lower() for e in _csv(env.get("DSS_ADMIN_EMAILS"))),
            local_issuer=env.get("DSS_LOCAL_ISSUER") or LOCAL_ISSUER,
            application_secrets=env.get("DSS_APPLICATION_SECRETS") or None,
            extra_identity_providers=_identity_providers(env.get("DSS_IDENTITY_PROVIDERS")),
            tls_cert=Path(env["DSS_TLS_CERT"]) if env.get("DSS_TLS_CERT") else None,
            tls_key=Path(env["DSS_TLS_KEY"]) if env.get("DSS_TLS_KEY") else None,
            cors_origins=_csv(env.get("DSS_CORS_ORIGINS")),
            notify_delays=tuple(int(d) for d in _csv(delays)) if delays else DEFAULT_NOTIFY_DELAYS,
            notify_timeout=_float(env, "DSS_NOTIFY_TIMEOUT", 60.0),
            callback_allowlist=_networks(_csv(env.get("DSS_CALLBACK_ALLOWLIST"))),
            secrets_url=_secrets_url(env.get("DSS_SECRETS_URL")),
            xray_trace=_flag(env.get("DSS_XRAY_TRACE")),
            gcs_events_subscription=(env.get("DSS_GCS_EVENTS_SUBSCRIPTION") or "").strip(),
        )

    def identity_providers(self) -> tuple[IdentityProvider, ...]:
        """The default provider (DSS_OIDC_AUDIENCE, DSS_OIDC_GROUP_CLAIM, DSS_OIDC_EMAIL_CLAIM) first, then
        DSS_IDENTITY_PROVIDERS."""
        return (IdentityProvider(self.audiences, self.group_claim, self.email_claim), *self.extra_identity_providers)

    def replace(self, **changes: object) -> Config:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def describe(self) -> str:
        """A one-line, secret-free summary for the start-up log."""
        return json.dumps({"data_dir": str(self.data_dir), "replicas": dict(self.replica_urls),
                           "search": self.search_url, "read_only": self.read_only})
