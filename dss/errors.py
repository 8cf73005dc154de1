"""Domain errors, named by meaning. Each carries the stable machine `code` that clients see.

Only `dss.api.errors` turns these into HTTP statuses and problem+json bodies; nothing below the API
layer knows about HTTP. Storage backends raise `dss.storage.blobstore.BlobStoreError` subclasses,
which the domain translates where it matters.

    DSSError
    ├── InvalidRequest          (client sent something unusable)
    │   ├── IllegalVersion, IllegalArguments (IllegalUUID, IllegalFileName), UnknownSourceSchema,
    │   │   DuplicateFilename, FileMissing, OnlyOneUrlType, IllegalToken, IllegalSource
    ├── NotFound
    ├── Conflict                FileConflict, BundleConflict, TombstoneConflict
    ├── Unprocessable           MissingChecksum, InvalidChecksum, ChecksumMismatch, CopyFailed
    ├── Unauthorized / Forbidden / AuthProblem
    ├── ReadOnly, Unavailable
    └── CheckoutError           (500)
"""
from __future__ import annotations

__all__ = [
    "DSSError", "InvalidRequest", "IllegalVersion", "IllegalArguments", "IllegalUUID", "IllegalFileName",
    "UnknownSourceSchema",
    "IllegalSource", "DuplicateFilename", "FileMissing", "OnlyOneUrlType", "IllegalToken", "NotFound",
    "Conflict", "FileConflict", "BundleConflict", "TombstoneConflict", "Unprocessable",
    "MissingChecksum", "InvalidChecksum", "ChecksumMismatch", "CopyFailed", "AuthProblem", "Unauthorized",
    "Forbidden", "ReadOnly", "Unavailable", "TooManySubscriptions", "CheckoutError",
]


class DSSError(Exception):
    code = "internal_error"

    def __init__(self, title: str, *, code: str | None = None) -> None:
        super().__init__(title)
        self.title = title
        if code is not None:
            self.code = code


class InvalidRequest(DSSError):
    code = "illegal_arguments"


class IllegalVersion(InvalidRequest):
    code = "illegal_version"


class IllegalArguments(InvalidRequest):
    code = "illegal_arguments"


class IllegalUUID(IllegalArguments):
    """Not a whole 8-4-4-4-12 uuid. The code is the one the spec's pattern answers with (the contract), so
    that a client sees one code whichever layer refused the uuid."""
    code = "illegal_arguments"


class IllegalFileName(IllegalArguments):
    """A bundle file name no store, index or client disk could hold (NUL, `a//b`, `．．／x`, too long…)."""
    code = "illegal_file_name"


class UnknownSourceSchema(InvalidRequest):
    code = "unknown_source_schema"


class IllegalSource(InvalidRequest):
    code = "illegal_source_url"


class DuplicateFilename(InvalidRequest):
    code = "duplicate_filename"


class FileMissing(InvalidRequest):
    code = "file_missing"


class OnlyOneUrlType(InvalidRequest):
    code = "only_one_urltype"


class IllegalToken(InvalidRequest):
    code = "illegal_token"


class NotFound(DSSError):
    code = "not_found"


class Conflict(DSSError):
    code = "conflict"


class FileConflict(Conflict):
    code = "file_already_exists"


class BundleConflict(Conflict):
    code = "bundle_already_exists"


class TombstoneConflict(Conflict):
    code = "bundle_tombstone_already_exists"


class Unprocessable(DSSError):
    code = "unprocessable"


class MissingChecksum(Unprocessable):
    code = "missing_checksum"


class InvalidChecksum(Unprocessable):
    code = "invalid_checksum"


class ChecksumMismatch(Unprocessable):
    code = "checksum_mismatch"


class CopyFailed(Unprocessable):
    """The asynchronous copy of a file version (202 PUT /files) failed; a checksum failure carries the
    contract's code `missing_checksum`."""
    code = "copy_failed"


class AuthProblem(DSSError):
    """401 for a missing or malformed Authorization header (connexion's historical code)."""
    code = "OAuthProblem"


class Unauthorized(DSSError):
    code = "Unauthorized"


class Forbidden(DSSError):
    code = "Forbidden"


class TooManySubscriptions(DSSError):
    code = "not_acceptable"


class CheckoutError(DSSError):
    """A checkout a read waits for failed (500 `checkout_error`, as the contract has it)."""
    code = "checkout_error"


class ReadOnly(DSSError):
    code = "read_only"


class Unavailable(DSSError):
    code = "service_unavailable"
