"""Identifiers, versions and storage keys: immutable typed values, composed and parsed only here.

Everything a client names — a uuid, a version, a bundle file name, a source URL — is validated here on
input, so that nothing reaches a storage key, a path or the index that a store, a replica or a client's
disk could not hold. Input uuids are lower-cased: storage keys use lower case only.

The patterns are anchored (`^…$`) and matched whole (`fullmatch`: `$` alone would let a trailing newline
through); `dss-api.yml` uses the same `UUID_PATTERN` and `VERSION_PATTERN` (a test keeps them equal).
"""
from __future__ import annotations

import datetime
import enum
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from dss.errors import IllegalArguments, IllegalFileName, IllegalUUID, IllegalVersion

__all__ = [
    "Replica", "VERSION_FORMAT", "VERSION_PATTERN", "new_version", "validate_version", "is_version", "BlobKey",
    "ObjectKey", "FileFQID", "BundleFQID", "BundleTombstoneID", "UUID_PATTERN", "normalise_uuid",
    "validate_file_name", "validate_source_url", "validate_creator_uid", "validate_text", "MAX_FILE_NAME_BYTES",
    "MAX_CREATOR_UID",
]

VERSION_FORMAT = "%Y-%m-%dT%H%M%S.%fZ"
# YYYY-MM-DDTHHmmSS.zzzzzzZ with months, days, hours, minutes and seconds in range, so that the spec's
# pattern describes nearly only real versions (round-tripping through strftime decides the rest: 02-30).
# ASCII digits only: `\d` would admit '٢٠٢٠'. Years before 1000 never round-trip (strftime does not pad them).
VERSION_PATTERN = (r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
                   r"T([01][0-9]|2[0-3])[0-5][0-9][0-5][0-9]\.[0-9]{6}Z$")
_VERSION_RE = re.compile(VERSION_PATTERN[1:-1])
UUID_PATTERN = "^[A-Za-z0-9]{8}-[A-Za-z0-9]{4}-[A-Za-z0-9]{4}-[A-Za-z0-9]{4}-[A-Za-z0-9]{12}$"
_UUID_RE = re.compile(UUID_PATTERN[1:-1])
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
    return bool(_VERSION_RE.fullmatch(value))


def validate_version(value: str) -> str:
    """Reject anything that does not round-trip through DSS_VERSION exactly (400 illegal_version)."""
    if not isinstance(value, str):
        raise IllegalVersion(f"version should be a string: {_shown(value)}")
    if _VERSION_RE.fullmatch(value):
        try:
            parsed = datetime.datetime.strptime(value, VERSION_FORMAT)
        except ValueError:
            pass
        else:
            if parsed.strftime(VERSION_FORMAT) == value:
                return value
    shown = _shown(value)
    try:
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise IllegalVersion(f"version should be an RFC3339 compliant timestamp: {shown}") from None
    raise IllegalVersion(f"version should be in the format 'YYYY-MM-DDTHHmmSS.zzzzzzZ': {shown}")


def normalise_uuid(value: str) -> str:
    """The storage form of an input uuid, lower-cased; IllegalUUID (400) unless the whole value matches
    UUID_PATTERN: a uuid such as `<uuid>-zz` or `..<uuid>` would make a key that no reader parses."""
    if not isinstance(value, str) or not _UUID_RE.fullmatch(value):
        raise IllegalUUID(f"uuid should be 8-4-4-4-12 letters and digits: {_shown(value)}")
    return value.lower()


MAX_CREATOR_UID = 2**63 - 1  # the contract's int64, without the negative half: user ids are not negative


def validate_creator_uid(value: int) -> int:
    """A creator uid is an integer in 0..2^63-1 (400 illegal_arguments otherwise), so that it fits every
    store's integer (DynamoDB numbers, SQLite INTEGER, Elasticsearch long) and a client's int64."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_CREATOR_UID:
        raise IllegalArguments(f"creator_uid should be an integer from 0 to {MAX_CREATOR_UID}: {_shown(value)}")
    return value


# A bundle's checkout key is `bundles/<uuid>.<version>/<name>`; S3 and GCS keys hold at most 1024 bytes
# of UTF-8, so a name may take what the prefix leaves. One path segment becomes one file or directory on
# a client's disk (`hca download`, local checkouts), where 255 bytes is the common limit (ext4, APFS, NTFS).
MAX_FILE_NAME_BYTES = 1024 - len("bundles/") - 36 - len(".") - len("2020-01-01T000000.000000Z") - len("/")
_MAX_SEGMENT_BYTES = 255
# Control characters (NUL, newlines, C1), lone surrogates (not encodable as UTF-8: the index, the stores
# and every client fail on them), and the Unicode line and paragraph separators.
_REFUSED_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})


def validate_file_name(name: str) -> str:
    """A bundle file name that every store, the index and a client's disk can hold (400 illegal_file_name).

    The spec's pattern (no leading `/` or `~/`, no `./`, `/.` or backslash, not `.` or `..`) applies to the
    name and to its NFKC normal form, which is what file systems and tools may turn it into (`．．／x` is
    `../x`); in addition no segment is empty (`a//b`, `dir/`), no character is a control character or a
    lone surrogate, and the name fits the stores' key length."""
    problem = _file_name_problem(name) if isinstance(name, str) else "it is not a string"
    if problem:
        raise IllegalFileName(f"Illegal file name {_shown(name)}: {problem}")
    return name


def _file_name_problem(name: str) -> str | None:
    if not name:
        return "it is empty"
    refused = next((c for c in name if unicodedata.category(c) in _REFUSED_CATEGORIES), None)
    if refused is not None:
        return f"it contains the character U+{ord(refused):04X}"
    for form in dict.fromkeys((name, unicodedata.normalize("NFKC", name))):  # NFKC may also lengthen a name
        what = "it" if form == name else f"its NFKC form {_shown(form)}"
        if len(form.encode()) > MAX_FILE_NAME_BYTES:
            return f"{what} is longer than {MAX_FILE_NAME_BYTES} bytes of UTF-8"
        segments = form.split("/")
        if form.startswith(("/", "~/")) or "\\" in form:
            return f"{what} starts with '/' or '~/', or contains a backslash"
        if "" in segments:
            return f"{what} has an empty path segment (a leading or trailing '/', or '//')"
        if any(segment in (".", "..") for segment in segments) or "./" in form or "/." in form:
            return f"{what} has a '.' or '..' segment, or a segment after the first that starts with '.'"
        if any(len(segment.encode()) > _MAX_SEGMENT_BYTES for segment in segments):
            return f"{what} has a path segment longer than {_MAX_SEGMENT_BYTES} bytes of UTF-8"
    return None


_SOURCE_URL_RE = re.compile(r"(s3|gs|wasb|file)://([^/]*)/(.+)", re.DOTALL)
_BUCKET_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,221}")  # S3 (legacy names too) and GCS bucket names
_GCS_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")  # GCS: lower case only, 3 to 222
_GCS_REFUSED_NAMES = (".", "..")  # object names GCS cannot hold
_MAX_KEY_BYTES = 1024  # S3 and GCS object names


def validate_source_url(url: str) -> str:
    """A PUT /files source URL fit to be parsed and opened (400 illegal_arguments otherwise): printable text
    (no NUL, control character or lone surrogate can reach a path, a key or an SDK), a bucket name where
    the scheme needs one (`s3:///k` names none), and a key that S3 or GCS could hold. Whether the source
    exists and may be read is the sources' business (dss.files.sources)."""
    if not isinstance(url, str):
        raise IllegalArguments(f"source_url should be a string: {_shown(url)}")
    refused = next((c for c in url if unicodedata.category(c) in _REFUSED_CATEGORIES), None)
    if refused is not None:
        raise IllegalArguments(f"source_url contains the character U+{ord(refused):04X}: {_shown(url)}")
    match = _SOURCE_URL_RE.fullmatch(url)
    if match and match.group(1) in ("s3", "gs"):
        if not _BUCKET_RE.fullmatch(match.group(2)):
            raise IllegalArguments(f"source_url should name a bucket, as in s3://bucket/key: {_shown(url)}")
        if len(match.group(3).encode()) > _MAX_KEY_BYTES:
            raise IllegalArguments(f"source_url's key is longer than {_MAX_KEY_BYTES} bytes: {_shown(url)}")
        if match.group(1) == "gs" and (not _GCS_BUCKET_RE.fullmatch(match.group(2))
                                       or match.group(3) in _GCS_REFUSED_NAMES):
            raise IllegalArguments(f"source_url names a bucket or object GCS cannot hold: {_shown(url)}")
    return url


def validate_text(value: str, what: str) -> str:
    """Free text a client stores and others read back (a deletion reason): anything but a lone surrogate,
    which no UTF-8 encoder accepts (a tombstone with one could never be indexed), or a control character
    other than tab and line breaks (400 illegal_arguments)."""
    if not isinstance(value, str):
        raise IllegalArguments(f"{what} should be a string: {_shown(value)}")
    refused = next((c for c in value if c not in "\t\n\r" and unicodedata.category(c) in ("Cc", "Cs")), None)
    if refused is not None:
        raise IllegalArguments(f"{what} contains the character U+{ord(refused):04X}: {_shown(value)}")
    return value


def _shown(value: object, limit: int = 100) -> str:
    """A client's value in an error title: repr() escapes control characters and surrogates; long
    values are cut."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


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
        match = _BLOB_KEY_RE.fullmatch(key)
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
        match = _OBJECT_KEY_RE.fullmatch(key)
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

    @classmethod
    def grouped(cls, keys: Iterable[str], kind: str) -> Iterator[list[ObjectKey]]:
        """The `kind` keys of a sorted listing, parsed and grouped by uuid (a uuid's versions and
        tombstones are adjacent in it); other keys are skipped."""
        group: list[ObjectKey] = []
        for key in keys:
            parsed = cls.parse(key)
            if parsed is None or parsed.kind != kind:
                continue
            if group and group[0].uuid != parsed.uuid:
                yield group
                group = []
            group.append(parsed)
        if group:
            yield group


def FileFQID(uuid: str, version: str | None = None) -> ObjectKey:  # noqa: N802 - a value constructor
    return ObjectKey("files", uuid, version)


def BundleFQID(uuid: str, version: str | None = None) -> ObjectKey:  # noqa: N802
    return ObjectKey("bundles", uuid, version)


def BundleTombstoneID(uuid: str, version: str | None = None) -> ObjectKey:  # noqa: N802
    return ObjectKey("bundles", uuid, version, dead=True)
