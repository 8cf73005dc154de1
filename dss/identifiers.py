"""Identifiers, versions and storage keys: immutable typed values, composed and parsed only here."""
from __future__ import annotations

import datetime
import enum
import re
from dataclasses import dataclass

from dss.errors import IllegalVersion

__all__ = [
    "Replica", "VERSION_FORMAT", "new_version", "validate_version", "is_version", "BlobKey",
    "ObjectKey", "FileFQID", "BundleFQID", "BundleTombstoneID", "UUID_PATTERN", "normalise_uuid",
]

VERSION_FORMAT = "%Y-%m-%dT%H%M%S.%fZ"
_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{6}\.\d{6}Z$")
UUID_PATTERN = "[A-Za-z0-9]{8}-[A-Za-z0-9]{4}-[A-Za-z0-9]{4}-[A-Za-z0-9]{4}-[A-Za-z0-9]{12}"
_LOWER_UUID = "[a-z0-9]{8}-[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{12}"
_OBJECT_KEY_RE = re.compile(rf"^(files|bundles|collections)/({_LOWER_UUID})(?:\.([^/]+?))?(\.dead)?$")
_BLOB_KEY_RE = re.compile(r"^blobs/([a-z0-9]{64})\.([a-z0-9]{40})\.([a-z0-9]{32}(?:-[0-9]+)?)\.([a-z0-9]{8})$")


class Replica(str, enum.Enum):
    aws = "aws"
    gcp = "gcp"

    @property
    def scheme(self) -> str:
        return {"aws": "s3", "gcp": "gs"}[self.value]

    @property
    def other(self) -> Replica:
        return Replica.gcp if self is Replica.aws else Replica.aws


def new_version(now: datetime.datetime | None = None) -> str:
    """A server-side version: UTC now in DSS_VERSION format."""
    moment = now or datetime.datetime.now(datetime.UTC)
    return moment.astimezone(datetime.UTC).strftime(VERSION_FORMAT)


def is_version(value: str) -> bool:
    return bool(_VERSION_RE.match(value))


def validate_version(value: str) -> str:
    """Reject anything that does not round-trip through DSS_VERSION exactly (400 illegal_version)."""
    if _VERSION_RE.match(value):
        try:
            parsed = datetime.datetime.strptime(value, VERSION_FORMAT)
        except ValueError:
            pass
        else:
            if parsed.strftime(VERSION_FORMAT) == value:
                return value
    try:
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise IllegalVersion(f"version should be an RFC3339 compliant timestamp: {value!r}") from None
    raise IllegalVersion(f"version should be in the format 'YYYY-MM-DDTHHmmSS.zzzzzzZ': {value!r}")


def normalise_uuid(value: str) -> str:
    return value.lower()


@dataclass(frozen=True, order=True)
class BlobKey:
    sha256: str
    sha1: str
    s3_etag: str
    crc32c: str

    def __str__(self) -> str:
        return f"blobs/{self.sha256}.{self.sha1}.{self.s3_etag}.{self.crc32c}"

    @classmethod
    def parse(cls, key: str) -> BlobKey | None:
        match = _BLOB_KEY_RE.match(key)
        return cls(*match.groups()) if match else None


@dataclass(frozen=True, order=True)
class ObjectKey:
    """`<kind>/<uuid>[.<version>][.dead]`: file metadata, bundle manifests, collections, tombstones."""
    kind: str
    uuid: str
    version: str | None = None
    dead: bool = False

    def __str__(self) -> str:
        version = f".{self.version}" if self.version else ""
        return f"{self.kind}/{self.uuid}{version}{'.dead' if self.dead else ''}"

    @classmethod
    def parse(cls, key: str) -> ObjectKey | None:
        match = _OBJECT_KEY_RE.match(key)
        if not match:
            return None
        kind, uuid, version, dead = match.groups()
        if version == "dead" and not dead:
            version, dead = None, ".dead"
        if version is not None and not is_version(version):
            return None
        return cls(kind, uuid, version, bool(dead))

    @property
    def prefix(self) -> str:
        """The listing prefix of every version of this uuid."""
        return f"{self.kind}/{self.uuid}."


def FileFQID(uuid: str, version: str | None = None) -> ObjectKey:  # noqa: N802 - a value constructor
    return ObjectKey("files", uuid, version)


def BundleFQID(uuid: str, version: str | None = None) -> ObjectKey:  # noqa: N802
    return ObjectKey("bundles", uuid, version)


def BundleTombstoneID(uuid: str, version: str | None = None) -> ObjectKey:  # noqa: N802
    return ObjectKey("bundles", uuid, version, dead=True)
