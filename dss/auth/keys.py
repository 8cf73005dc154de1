"""Signing keys: the local issuer's RSA key and the trusted service accounts, kept in a secret store.

The store (`dss.secrets`) is the data directory's `auth/` by default — `local-issuer.pem` (mode 0600, made
on first use) signs tokens minted by `dss-ops.py token`, `service-accounts.json` maps a service account's
e-mail to `{key id: public PEM}`, written by `dss-ops.py trust-service-account` — or Secrets Manager
(`token-issuer-key`, `service-accounts`), where nothing is created by a server. Private keys never leave
the store.
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from dss.secrets import SERVICE_ACCOUNTS, TOKEN_ISSUER_KEY, LocalSecretStore, SecretsError, SecretStore

__all__ = ["KeyStore", "new_service_account_key"]


def _public_pem(private_key: Any) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def new_service_account_key(email: str) -> dict[str, str]:
    """A Google-style service-account key file (what `GOOGLE_APPLICATION_CREDENTIALS` names) with a new
    RSA key: the hca and dbio clients sign their own tokens with it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "client_email": email.lower(), "client_id": email.lower(),
            "private_key_id": hashlib.sha256(_public_pem(key).encode()).hexdigest()[:16], "private_key": pem}


class KeyStore:
    """`KeyStore(directory)` keeps the keys in that directory; `KeyStore(store)` in any secret store."""

    def __init__(self, store: SecretStore | Path) -> None:
        self.store = store if isinstance(store, SecretStore) else LocalSecretStore(store)
        self._lock = threading.Lock()
        self._local: tuple[str, Any] | None = None

    def local_signing_key(self) -> tuple[str, Any]:
        """(key id, private key) of the local issuer; created on first use where the store allows it."""
        with self._lock:
            if self._local is None:
                pem = self.store.require(TOKEN_ISSUER_KEY)
                try:
                    key = serialization.load_pem_private_key(pem.encode(), password=None)
                except ValueError:
                    raise SecretsError(f"secret {TOKEN_ISSUER_KEY!r} is not a PEM private key") from None
                self._local = hashlib.sha256(_public_pem(key).encode()).hexdigest()[:16], key
            return self._local

    def local_public_keys(self) -> dict[str, str]:
        kid, key = self.local_signing_key()
        return {kid: _public_pem(key)}

    def _accounts(self) -> dict[str, dict[str, str]]:
        raw = self.store.get(SERVICE_ACCOUNTS)
        try:
            accounts = json.loads(raw) if raw else {}
        except ValueError:
            raise SecretsError(f"secret {SERVICE_ACCOUNTS!r} is not JSON") from None
        return accounts if isinstance(accounts, dict) else {}

    def service_account_keys(self, email: str) -> dict[str, str]:
        return dict(self._accounts().get(email.lower(), {}))

    def trust_service_account(self, key_file: dict) -> str:
        """Record the public half of a service-account key file; returns the account e-mail."""
        email = key_file["client_email"].lower()
        private = serialization.load_pem_private_key(key_file["private_key"].encode(), password=None)
        with self._lock:
            accounts = self._accounts()
            accounts.setdefault(email, {})[key_file["private_key_id"]] = _public_pem(private)
            self.store.put(SERVICE_ACCOUNTS, json.dumps(accounts, indent=2, sort_keys=True))
        return email
