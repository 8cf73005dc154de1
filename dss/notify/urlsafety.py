"""Callback URL safety: keep subscribers from pointing DSS at its own network (SSRF).

A callback URL is accepted only with an ``http``/``https`` scheme and a host whose addresses are all
globally routable. Private, loopback, link-local, multicast, reserved, unspecified and shared (CGNAT)
addresses are refused, also when hidden inside IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, 6to4, NAT64). An
operator allow-list re-admits named hosts (``localhost``) or address ranges (``10.0.0.0/8``), for tests
and private deployments.

The check runs at subscription time and again before every attempt, because DNS can change between the
two. :func:`check_callback_url` returns the addresses it approved; `dss.notify.transport` connects to
exactly those, so there is no second DNS lookup an attacker could answer differently (no TOCTOU gap).
"""
from __future__ import annotations

import ipaddress
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dss.errors import InvalidRequest

__all__ = [
    "AllowList", "CheckedTarget", "UnsafeCallbackURL", "UnresolvableCallbackHost", "Resolver",
    "check_callback_url", "is_public_address", "system_resolver", "redact_url",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> IP address strings; injectable so tests can play DNS tricks without a DNS server.
Resolver = Callable[[str, int], Sequence[str]]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsafeCallbackURL(InvalidRequest):
    """The callback URL is malformed or points at an address the policy refuses."""

    code = "illegal_arguments"


class UnresolvableCallbackHost(UnsafeCallbackURL):
    """The host did not resolve. At delivery time this may be transient, so it is retried like a failure."""


@dataclass(frozen=True)
class AllowList:
    """Hosts (exact, case-insensitive names) and address ranges exempt from the public-address rule."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: str | Iterable[str] | AllowList | None) -> AllowList:
        """Build from ``"127.0.0.1/32,localhost,10.0.0.0/8"`` or a sequence of such entries. A bare IP
        address is a one-address range."""
        if isinstance(entries, AllowList):
            return entries
        if entries is None:
            return cls()
        items = entries.split(",") if isinstance(entries, str) else entries
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for item in (i.strip() for i in items):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                if "/" in item:
                    raise ValueError(f"allow-list entry {item!r} is not a CIDR range") from None
                hosts.add(_normal_host(item))
        return cls(frozenset(hosts), tuple(networks))

    def permits_host(self, host: str) -> bool:
        return _normal_host(host) in self.hosts

    def permits_address(self, address: IPAddress) -> bool:
        candidates = {address, _embedded_ipv4(address) or address}
        return any(a in net for a in candidates for net in self.networks if a.version == net.version)


@dataclass(frozen=True)
class CheckedTarget:
    """A callback URL that passed the check, with the addresses a connection may use."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address tunnels to, if any (mapped, 6to4, NAT64)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public_address(address: IPAddress) -> bool:
    """Whether ``address`` (or the IPv4 address it embeds) is globally routable unicast."""
    address = _embedded_ipv4(address) or address
    special = (address.is_private or address.is_loopback or address.is_link_local or address.is_multicast
               or address.is_reserved or address.is_unspecified)
    # `is_global` also excludes ranges none of the flags above name, such as 100.64.0.0/10 (CGNAT).
    return address.is_global and not special


def system_resolver(host: str, port: int) -> list[str]:
    """All addresses the system resolver returns for ``host``, in its preferred order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _parse(url: str) -> tuple[str, str, int]:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UnsafeCallbackURL(f"callback URL is malformed: {e}") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise UnsafeCallbackURL("callback URL must use http or https")
    if not parts.hostname:
        raise UnsafeCallbackURL("callback URL has no host")
    return scheme, _normal_host(parts.hostname), port or _DEFAULT_PORTS[scheme]


def _resolve(host: str, port: int, resolver: Resolver) -> list[IPAddress]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        found = [ipaddress.ip_address(a.split("%", 1)[0]) for a in resolver(host, port)]
    except (OSError, UnicodeError) as e:
        raise UnresolvableCallbackHost(f"callback host {host!r} does not resolve: {e}") from None
    if not found:
        raise UnresolvableCallbackHost(f"callback host {host!r} has no addresses")
    return found


def check_callback_url(url: str, allowlist: AllowList | str | Iterable[str] | None = None, *,
                       resolver: Resolver | None = None) -> CheckedTarget:
    """Approve ``url`` or raise :class:`UnsafeCallbackURL`.

    Every resolved address must be public or allowed: one bad record is enough to refuse, since a
    client may pick any of them (and DNS rebinding relies on mixing records)."""
    allowed = AllowList.parse(allowlist)
    scheme, host, port = _parse(url)
    addresses = _resolve(host, port, resolver or system_resolver)
    if not allowed.permits_host(host):
        for address in addresses:
            if not (is_public_address(address) or allowed.permits_address(address)):
                raise UnsafeCallbackURL(f"callback host {host!r} resolves to a non-public address {address}")
    return CheckedTarget(url, scheme, host, port, tuple(str(a) for a in addresses))


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path`` — the URL without credentials, query or fragment, for logs."""
    try:
        parts = urllib.parse.urlsplit(url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:
        return "<malformed URL>"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))
