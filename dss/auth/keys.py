"""Signing keys kept in the data directory: the local issuer's RSA key and trusted service accounts.

`<data_dir>/auth/local-issuer.pem` (mode 0600) signs tokens minted by `dss-ops.py token`;
`<data_dir>/auth/service-accounts.json` maps a service account's e-mail to `{key id: public PEM}`,
written by `dss-ops.py trust-service-account`. Private keys never leave these files.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

__all__ = ["KeyStore", "new_service_account_key"]


def _public_pem(private_key: Any) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def new_service_account_key(email: str) -> dict[str, str]:
    """A Google-style service-account key file (what `GOOGLE_APPLICATION_CREDENTIALS` names) with a new
    RSA key: the hca and dbio clients sign their own tokens with it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "client_email": email.lower(), "client_id": email.lower(),
            "private_key_id": hashlib.sha256(_public_pem(key).encode()).hexdigest()[:16], "private_key": pem}


class KeyStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._local: tuple[str, Any] | None = None

    @property
    def _issuer_key_path(self) -> Path:
        return self.directory / "local-issuer.pem"

    @property
    def _service_accounts_path(self) -> Path:
        return self.directory / "service-accounts.json"

    def local_signing_key(self) -> tuple[str, Any]:
        """(key id, private key) of the local issuer, created on first use."""
        with self._lock:
            if self._local is None:
                self._local = self._load_or_create_issuer_key()
            return self._local

    def _load_or_create_issuer_key(self) -> tuple[str, Any]:
        path = self._issuer_key_path
        if path.exists():
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
        kid = hashlib.sha256(_public_pem(key).encode()).hexdigest()[:16]
        return kid, key

    def local_public_keys(self) -> dict[str, str]:
        kid, key = self.local_signing_key()
        return {kid: _public_pem(key)}

    def service_account_keys(self, email: str) -> dict[str, str]:
        try:
            accounts = json.loads(self._service_accounts_path.read_text())
        except FileNotFoundError:
            return {}
        return dict(accounts.get(email.lower(), {}))

    def trust_service_account(self, key_file: dict) -> str:
        """Record the public half of a service-account key file; returns the account e-mail."""
        email = key_file["client_email"].lower()
        private = serialization.load_pem_private_key(key_file["private_key"].encode(), password=None)
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            try:
                accounts = json.loads(self._service_accounts_path.read_text())
            except FileNotFoundError:
                accounts = {}
            accounts.setdefault(email, {})[key_file["private_key_id"]] = _public_pem(private)
            tmp = self._service_accounts_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(accounts, indent=2, sort_keys=True))
            os.replace(tmp, self._service_accounts_path)
        return email
