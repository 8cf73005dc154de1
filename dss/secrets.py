"""Secrets at the configuration edge: where keys and credentials are kept, read once per process.

`DSS_SECRETS_URL` picks the store (`open_secret_store`):

- empty (the default): files in `<DSS_DATA_DIR>/auth` (mode 0600), `LocalSecretStore`. Keys the server
  needs are created there on first use, as a one-machine server always did.
- `secretsmanager://<prefix>` (e.g. `secretsmanager://dss/dev/`; an empty prefix means `dss/<stage>/`):
  AWS Secrets Manager, `SecretsManagerStore`, secret `<prefix><name>`; endpoint, region and credentials
  from boto3's own configuration (`AWS_ENDPOINT_URL` for moto). Nothing is ever created here by a server:
  a missing key is a start-up error naming it, and the operator sets it (`dss-ops.py secrets set NAME`,
  or `dss-ops.py secrets init` for the generated keys).

The names (`SECRET_NAMES`): `url-signing-key` (hex, signs local stores' URLs), `token-issuer-key` (the
local issuer's private key, PEM), `service-accounts` (JSON: e-mail → {key id: public PEM}),
`admin-emails` (comma-separated or a JSON list, added to `DSS_ADMIN_EMAILS`), `application-secrets.json`
(the OAuth client document served at `/internal/application_secrets`) and `gcp-credentials.json` (the
service-account key the `gs://` stores use). The first two are required; the others are read when present.

`ServerSecrets.load(config)` reads them all once; the runtime hands the values down. Values are never
logged. Errors: `SecretsError` (the store failed; the SDK's error is kept as `__cause__`) and its
subclass `MissingSecret` (a required secret is not set), which is also a `ConfigError`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets as _random
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dss.aws import error_code
from dss.config import Config, ConfigError

__all__ = ["SECRET_NAMES", "SecretStore", "LocalSecretStore", "SecretsManagerStore", "SecretsError", "MissingSecret",
           "ServerSecrets", "open_secret_store", "secret_prefix", "generate", "initialise"]

logger = logging.getLogger(__name__)

URL_SIGNING_KEY = "url-signing-key"
TOKEN_ISSUER_KEY = "token-issuer-key"
SERVICE_ACCOUNTS = "service-accounts"
ADMIN_EMAILS = "admin-emails"
APPLICATION_SECRETS = "application-secrets.json"
GCP_CREDENTIALS = "gcp-credentials.json"
SECRET_NAMES = (URL_SIGNING_KEY, TOKEN_ISSUER_KEY, SERVICE_ACCOUNTS, ADMIN_EMAILS, APPLICATION_SECRETS,
                GCP_CREDENTIALS)
REQUIRED = (URL_SIGNING_KEY, TOKEN_ISSUER_KEY)
MAX_SECRET_SIZE = 65536  # bytes: Secrets Manager's own limit on a secret value


class SecretsError(Exception):
    """The secret store could not be read or written."""


class MissingSecret(SecretsError, ConfigError):
    """A required secret is not set in a store that may not create it."""

    def __init__(self, name: str, where: str) -> None:
        super().__init__(f"secret {name!r} is not set in {where}: set it with "
                         f"`scripts/dss-ops.py secrets set {name}` (or `secrets init` for the generated keys)")
        self.name = name


def _new_issuer_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


# The secrets a store can make up itself: what `initialise` (and a local store, on first use) creates.
GENERATORS: Mapping[str, Callable[[], str]] = {
    URL_SIGNING_KEY: lambda: _random.token_hex(32),
    TOKEN_ISSUER_KEY: _new_issuer_key,
}


def generate(name: str) -> str:
    return GENERATORS[name]()


class SecretStore:
    """A few named string values. `get` answers None for a secret that is not set; `put` replaces a value;
    `put_new` sets one only if it is not set yet and returns the value that is (so racing creators agree);
    `names` lists what is set. `creates_keys`: whether a server may create missing keys here."""

    creates_keys = False
    location = ""

    def get(self, name: str) -> str | None:
        raise NotImplementedError

    def put(self, name: str, value: str) -> None:
        raise NotImplementedError

    def put_new(self, name: str, value: str) -> str:
        raise NotImplementedError

    def names(self) -> list[str]:
        raise NotImplementedError

    def require(self, name: str) -> str:
        """The value of `name`; a missing generated key is created only where `creates_keys`."""
        value = self.get(name)
        if value is None or not value.strip():  # an empty placeholder is not a key
            if not (self.creates_keys and name in GENERATORS):
                raise MissingSecret(name, self.location)
            value = self.put_new(name, generate(name))
        return value


def _check(name: str, value: str | None = None) -> None:
    if not name or "/" in name or name.startswith(".") or len(name) > 128:
        raise SecretsError(f"not a secret name: {name!r}")
    if value is not None and len(value.encode()) > MAX_SECRET_SIZE:
        raise SecretsError(f"the value of {name!r} is larger than {MAX_SECRET_SIZE} bytes")


class LocalSecretStore(SecretStore):
    """One file per secret in a directory, mode 0600. Earlier releases' file names are kept, so an
    existing data directory keeps its keys."""

    creates_keys = True
    _FILES = {URL_SIGNING_KEY: "url-signing.key", TOKEN_ISSUER_KEY: "local-issuer.pem",
              SERVICE_ACCOUNTS: "service-accounts.json"}

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.location = str(directory)

    def _path(self, name: str) -> Path:
        _check(name)
        return self.directory / self._FILES.get(name, name)

    def get(self, name: str) -> str | None:
        try:
            return self._path(name).read_text()
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _temporary(self, name: str, value: str) -> Iterator[Path]:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{self._path(name).name}.{os.getpid()}.{threading.get_ident()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
        try:
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)

    def put(self, name: str, value: str) -> None:
        _check(name, value)
        with self._temporary(name, value) as tmp:
            os.replace(tmp, self._path(name))

    def put_new(self, name: str, value: str) -> str:
        _check(name, value)
        with self._temporary(name, value) as tmp:
            try:
                os.link(tmp, self._path(name))  # fails if another process made it first: theirs wins
            except FileExistsError:
                if not self._path(name).read_text().strip():  # an empty file is no key: replace it
                    os.replace(tmp, self._path(name))
        return self._path(name).read_text()

    def names(self) -> list[str]:
        files = {file: name for name, file in self._FILES.items()}
        if not self.directory.is_dir():
            return []
        return sorted(files.get(p.name, p.name) for p in self.directory.iterdir()
                      if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".tmp"))


def _has_value(listed: Mapping[str, Any]) -> bool:
    """Whether a ListSecrets entry has a current value (a secret made with no value yet has none)."""
    return any("AWSCURRENT" in stages for stages in (listed.get("SecretVersionsToStages") or {}).values())


class SecretsManagerStore(SecretStore):
    """Secrets `<prefix><name>` in AWS Secrets Manager. Values read are kept for the life of the process
    (a Lambda's cold start reads each once); `put` updates that copy too."""

    def __init__(self, prefix: str, client: Any) -> None:
        self.prefix = prefix
        self.client = client
        self.location = f"Secrets Manager under {prefix!r}"
        self._cache: dict[str, str | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(cls, prefix: str) -> SecretsManagerStore:
        from dss import aws

        return cls(prefix, aws.client("secretsmanager"))

    def _error(self, action: str, name: str, exc: Exception) -> SecretsError:
        code = error_code(exc) or type(exc).__name__
        return SecretsError(f"Secrets Manager refused to {action} {self.prefix}{name}: {code}")

    def get(self, name: str) -> str | None:
        _check(name)
        with self._lock:
            if name in self._cache:
                return self._cache[name]
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            reply = self.client.get_secret_value(SecretId=self.prefix + name)
            value: str | None = reply.get("SecretString")
            if value is None and reply.get("SecretBinary") is not None:
                value = bytes(reply["SecretBinary"]).decode()
        except ClientError as exc:
            # Not found: no such secret, or one created with no value yet (no AWSCURRENT version).
            if error_code(exc) != "ResourceNotFoundException":
                raise self._error("read", name, exc) from exc
            value = None
        except BotoCoreError as exc:
            raise self._error("read", name, exc) from exc
        with self._lock:
            self._cache[name] = value
        return value

    def put(self, name: str, value: str) -> None:
        _check(name, value)
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            try:
                self.client.create_secret(Name=self.prefix + name, SecretString=value)
            except ClientError as exc:
                if error_code(exc) != "ResourceExistsException":
                    raise
                self.client.put_secret_value(SecretId=self.prefix + name, SecretString=value)
        except (ClientError, BotoCoreError) as exc:
            raise self._error("write", name, exc) from exc
        with self._lock:
            self._cache[name] = value

    def put_new(self, name: str, value: str) -> str:
        with self._lock:
            self._cache.pop(name, None)
        current = self.get(name)
        if current is not None and current.strip():
            return current
        # Two operators initialising at once is not a case worth a conditional write here.
        self.put(name, value)
        return value

    def names(self) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        found: list[str] = []
        try:
            pages = self.client.get_paginator("list_secrets").paginate(
                Filters=[{"Key": "name", "Values": [self.prefix]}] if self.prefix else [])
            for page in pages:
                found += [s["Name"][len(self.prefix):] for s in page.get("SecretList", [])
                          if s["Name"].startswith(self.prefix) and "DeletedDate" not in s and _has_value(s)
                          and "/" not in s["Name"][len(self.prefix):]]  # not a longer prefix's
        except (ClientError, BotoCoreError) as exc:
            raise self._error("list", "*", exc) from exc
        return sorted(found)


def secret_prefix(url: str, stage: str) -> str:
    """The name prefix of `secretsmanager://<prefix>` (`dss/<stage>/` when empty), with a trailing `/`."""
    parts = urlsplit(url)
    if parts.scheme != "secretsmanager" or parts.query or parts.fragment:
        raise ValueError(f"DSS_SECRETS_URL must be empty or secretsmanager://<prefix>, got {url!r}")
    prefix = (parts.netloc + parts.path).strip("/")
    return f"{prefix}/" if prefix else f"dss/{stage}/"


def open_secret_store(config: Config) -> SecretStore:
    if config.secrets_url:
        return SecretsManagerStore.open(secret_prefix(config.secrets_url, config.stage))
    return LocalSecretStore(config.data_dir / "auth")


def initialise(store: SecretStore) -> list[str]:
    """Create the generated keys that are not set yet (never replacing one); returns the names created."""
    created = []
    for name in GENERATORS:
        value = store.get(name)
        if value is None or not value.strip():
            store.put_new(name, generate(name))
            created.append(name)
    return created


def _json(name: str, value: str | None) -> Any:
    if value is None or not value.strip():
        return None
    try:
        return json.loads(value)
    except ValueError:
        raise SecretsError(f"secret {name!r} is not JSON") from None


def _emails(value: str | None) -> tuple[str, ...]:
    if value is None:
        return ()
    text = value.strip()
    entries = _json(ADMIN_EMAILS, text) if text.startswith("[") else text.replace("\n", ",").split(",")
    return tuple(str(e).strip().lower() for e in entries if str(e).strip())


@dataclass(frozen=True)
class ServerSecrets:
    """What a server process reads from its secret store at start-up (`load`), handed down from there."""
    store: SecretStore
    url_signing_key: bytes
    admin_emails: tuple[str, ...] = ()
    application_secrets: Mapping[str, Any] | None = None
    gcp_credentials: Mapping[str, Any] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, config: Config, store: SecretStore | None = None) -> ServerSecrets:
        store = store if store is not None else open_secret_store(config)
        if not store.creates_keys:  # in the cloud a missing key stops the cold start, naming the secret
            for name in REQUIRED:
                store.require(name)
        try:
            signing = bytes.fromhex(store.require(URL_SIGNING_KEY).strip())
        except ValueError:
            raise SecretsError(f"secret {URL_SIGNING_KEY!r} is not hex") from None
        store.get(SERVICE_ACCOUNTS)  # read now, at the cold start, rather than at the first request
        secrets = cls(store, signing, _emails(store.get(ADMIN_EMAILS)),
                      _json(APPLICATION_SECRETS, store.get(APPLICATION_SECRETS)),
                      _json(GCP_CREDENTIALS, store.get(GCP_CREDENTIALS)))
        logger.info("Secrets read from %s", store.location)
        return secrets

    def configure(self, config: Config) -> Config:
        """The configuration with what the secrets add to it (administrators' e-mails)."""
        extra = tuple(e for e in self.admin_emails if e not in config.admin_emails)
        return config.replace(admin_emails=config.admin_emails + extra) if extra else config

    def store_options(self) -> dict[str, Any]:
        """Options for `BlobStoreFactory`: the URL-signing key, and the GCP credentials when set."""
        options: dict[str, Any] = {"signing_secret": self.url_signing_key}
        if self.gcp_credentials is not None:
            options["gcp_credentials"] = dict(self.gcp_credentials)
        return options
