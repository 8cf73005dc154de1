"""Bearer-token authentication and the authorisation rules every operation shares.

Trusted issuers:
- the local issuer (`Config.local_issuer`), keys in the data directory (`dss.auth.keys`);
- Google service accounts (`iss == sub`, an e-mail): keys recorded by `dss-ops.py trust-service-account`,
  or, for domains in `Config.authorized_domains`, Google's published JWKS for that account;
- OpenID Connect providers in `Config.openid_providers` or named by an identity provider's `issuer`
  (discovery document → `jwks_uri`).

Each token is read by the first identity provider (`Config.identity_providers()`) that may issue it and
lists its `aud`: that provider's audiences are verified, and its group and e-mail claims read. So clients
that send different claims (hca: `https://auth.data.humancellatlas.org/group`; dbio:
`https://auth.ucsc.ucsc-cgp-redwood.org/group`) work against one server.

Check order follows the original service: a missing or malformed header is a 401 `OAuthProblem`;
an undecodable token 401 `Unauthorized`; an untrusted issuer 403 `Forbidden`; a bad signature,
audience or expiry 401 `Unauthorized`. Tokens are never logged.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt

from dss.auth.keys import KeyStore, new_service_account_key
from dss.config import Config, IdentityProvider
from dss.errors import AuthProblem, Forbidden, Unauthorized

__all__ = ["Principal", "Authenticator", "require_group", "require_admin", "require_email", "mint_token",
           "KeyStore", "new_service_account_key"]

logger = logging.getLogger(__name__)

INVALID = "Authorization token is invalid"
NOT_AUTHORIZED = "User is not authorized to access this resource"
GOOGLE_SA_JWKS = "https://www.googleapis.com/service_accounts/v1/jwk/{}"


@dataclass(frozen=True)
class Principal:
    issuer: str
    subject: str
    email: str | None
    groups: frozenset[str]


class Authenticator:
    def __init__(self, config: Config, keys: KeyStore,
                 jwks_client_factory: Callable[[str], Any] | None = None) -> None:
        self.config = config
        self.keys = keys
        self._jwks_factory = jwks_client_factory or (lambda url: jwt.PyJWKClient(url, cache_keys=True))
        self._jwks_clients: dict[str, Any] = {}
        self._lock = threading.Lock()

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthProblem("No authorization token provided")
        parts = authorization.split()
        if len(parts) != 2 or parts[0].lower() != "bearer":
            raise AuthProblem("Invalid authorization header")
        return self.verify(parts[1])

    def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise Unauthorized("Failed to decode token.") from None
        issuer = str(unverified.get("iss") or "")
        keys = self._keys_for(issuer, str(unverified.get("sub") or ""), header.get("kid"))
        if not keys:
            raise Unauthorized(INVALID)
        provider = self._provider(issuer, unverified.get("aud"))
        claims = self._decode(token, issuer, keys, provider)
        return self._principal(claims, provider)

    def _provider(self, issuer: str, audience: Any) -> IdentityProvider:
        """The first provider for `issuer` listing one of the token's audiences (a 401 if there is none)."""
        listed = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
        audiences = {a for a in listed if isinstance(a, str)}  # any JSON may stand there
        for provider in self.config.identity_providers():
            if provider.issuer in (None, issuer) and audiences & set(provider.audiences):
                return provider
        logger.info("Rejected a token from %s: no identity provider lists its audience", issuer)
        raise Unauthorized(INVALID)

    def _decode(self, token: str, issuer: str, keys: Iterable[Any], provider: IdentityProvider) -> dict:
        for key in keys:
            try:
                return jwt.decode(token, key, algorithms=["RS256"], audience=list(provider.audiences),
                                  issuer=issuer, options={"require": ["exp", "iss", "aud"]}, leeway=30)
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError as exc:
                logger.info("Rejected a token from %s: %s", issuer, type(exc).__name__)
                raise Unauthorized(INVALID) from None
        raise Unauthorized(INVALID)

    def _keys_for(self, issuer: str, subject: str, kid: str | None) -> list[Any]:
        if issuer == self.config.local_issuer:
            return _select(self.keys.local_public_keys(), kid)
        if "@" in issuer and issuer == subject:
            local = _select(self.keys.service_account_keys(issuer), kid)
            if local:
                return local
            if issuer.rpartition("@")[2] in self.config.authorized_domains:
                return self._remote_key(GOOGLE_SA_JWKS.format(issuer), kid)
        elif issuer in self.config.openid_providers or any(
                p.issuer == issuer for p in self.config.identity_providers()):
            return self._remote_key(self._jwks_uri(issuer), kid)
        raise Forbidden(NOT_AUTHORIZED)

    def _jwks_uri(self, issuer: str) -> str:
        import requests

        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            return requests.get(url, timeout=10).json()["jwks_uri"]
        except Exception:  # noqa: BLE001 - any failure means we cannot verify this token
            logger.warning("Could not read the OpenID configuration of %s", issuer)
            raise Unauthorized(INVALID) from None

    def _remote_key(self, jwks_url: str, kid: str | None) -> list[Any]:
        with self._lock:
            client = self._jwks_clients.setdefault(jwks_url, self._jwks_factory(jwks_url))
        try:
            return [client.get_signing_key(kid).key] if kid else [k.key for k in client.get_signing_keys()]
        except jwt.PyJWTError:
            raise Unauthorized(INVALID) from None

    @staticmethod
    def _principal(claims: dict, provider: IdentityProvider) -> Principal:
        email = claims.get(provider.email_claim) or claims.get("email")
        groups = claims.get(provider.group_claim) or claims.get("groups") or ()
        if isinstance(groups, str):
            groups = [groups]
        return Principal(claims["iss"], str(claims.get("sub", "")), str(email).lower() if email else None,
                         frozenset(str(g) for g in groups))


def _select(keys: dict[str, str], kid: str | None) -> list[Any]:
    if kid and kid in keys:
        return [keys[kid]]
    return list(keys.values())


def require_group(principal: Principal, allowed: Iterable[str]) -> None:
    if not principal.groups & set(allowed):
        raise Forbidden(NOT_AUTHORIZED)


def require_email(principal: Principal) -> str:
    if not principal.email:
        raise Unauthorized("Authorization token is missing email claims.")
    return principal.email


def require_admin(principal: Principal, admin_emails: Iterable[str]) -> str:
    email = principal.email
    if not email or email not in set(admin_emails):
        raise Forbidden("You can't delete bundles with these credentials!")
    return email


def mint_token(config: Config, keys: KeyStore, email: str, groups: Iterable[str], ttl: int = 3600) -> str:
    """A token from the local issuer, as `dss-ops.py token` prints it."""
    kid, private_key = keys.local_signing_key()
    now = int(time.time())
    claims = {
        "iss": config.local_issuer, "sub": email, "aud": config.audiences[0], "iat": now, "exp": now + ttl,
        "email": email, config.email_claim: email, config.group_claim: list(groups),
    }
    return jwt.encode(claims, private_key, algorithm="RS256", headers={"kid": kid})
