"""Amazon S3 blob store (`s3://bucket`), over boto3.

The endpoint, region and credentials come from boto3's own configuration chain (the standard
`AWS_*` variables, `~/.aws/config`, instance roles), so this module never reads the environment;
a local S3 such as moto is reached through `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_S3`.

Writes follow the DSS `s3_etag` convention (`dss.checksums`): up to 64 MiB one PutObject, whose ETag
is the object's MD5; beyond that a multipart upload in `s3_part_size(size)` parts, whose ETag is
`md5(part md5s)-N`. A part is staged in a spooled temporary file (memory up to a few MiB, then disk),
so a writer holds at most one part whatever the object's size. Conditional creates use
`If-None-Match: *`, which S3 evaluates atomically on PutObject and on CompleteMultipartUpload.
"""
from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import tempfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO

from botocore import exceptions as boto_errors
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from dss import aws
from dss.checksums import S3_MAX_PARTS, S3_SINGLE_PART_LIMIT, s3_part_size
from dss.storage.blobstore import (
    BlobAccessDenied,
    BlobAlreadyExists,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    BlobStoreUnavailable,
    BlobWriter,
    CopySession,
)

__all__ = ["S3BlobStore", "translate_error"]

logger = logging.getLogger(__name__)

# A part larger than this goes to disk while it is staged.
_SPOOL_IN_MEMORY = 8 * 1024 * 1024

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_EXISTS_CODES = frozenset({"PreconditionFailed", "ConditionalRequestConflict", "412"})
_DENIED_CODES = frozenset({
    "AccessDenied", "Forbidden", "403", "AllAccessDisabled", "AccountProblem", "InvalidAccessKeyId",
    "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken", "TokenRefreshRequired",
})
_UNAVAILABLE_CODES = frozenset({
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException",
    "RequestThrottled", "RequestTimeout", "RequestTimeoutException", "ServiceUnavailable", "InternalError",
    "500", "502", "503", "504",
    # The body arrived damaged or short: sending it again is the cure.
    "BadDigest", "IncompleteBody",
})
# Network failures and corrupt transfers: worth retrying later.
_TRANSIENT = (boto_errors.ConnectionError, boto_errors.HTTPClientError, boto_errors.IncompleteReadError,
              boto_errors.FlexibleChecksumError)
_NO_CREDENTIALS = (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError,
                   boto_errors.CredentialRetrievalError)


def translate_error(exc: Exception, key: str = "") -> BlobStoreError:
    """The BlobStore error for a botocore exception (the caller raises it `from exc`)."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        message = f"{key}: {code} {error.get('Message', '')}".rstrip()
        if code in _NOT_FOUND_CODES or status == 404:
            return BlobNotFound(message)
        if code in _EXISTS_CODES or status == 412:
            return BlobAlreadyExists(message)
        if code in _DENIED_CODES or status in (401, 403):
            return BlobAccessDenied(message)
        if code in _UNAVAILABLE_CODES or status == 429 or status >= 500:
            return BlobStoreUnavailable(message)
        return BlobStoreError(message)
    if isinstance(exc, _TRANSIENT):
        return BlobStoreUnavailable(f"{key}: {exc}")
    if isinstance(exc, _NO_CREDENTIALS):
        return BlobAccessDenied(f"{key}: {exc}")
    return BlobStoreError(f"{key}: {exc}")


@contextlib.contextmanager
def _translated(key: str) -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise translate_error(exc, key) from exc


class _Stream:
    """A GetObject body whose read errors arrive as BlobStore errors."""

    def __init__(self, body: Any, key: str) -> None:
        self._body, self._key = body, key

    def read(self, size: int = -1) -> bytes:
        with _translated(self._key):
            return self._body.read(None if size is None or size < 0 else size)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._body.close()

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _EmptyStream(_Stream):
    def __init__(self) -> None:
        super().__init__(None, "")

    def read(self, size: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _Part:
    """One part being staged: bytes in a spooled file, plus their MD5 for Content-MD5 and the ETag."""

    def __init__(self) -> None:
        self.file = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)
        self.md5 = hashlib.md5()
        self.size = 0

    def write(self, data: memoryview) -> None:
        self.file.write(data)
        self.md5.update(data)
        self.size += len(data)

    def body(self) -> BinaryIO:
        self.file.seek(0)
        return self.file  # type: ignore[return-value]

    def content_md5(self) -> str:
        return base64.b64encode(self.md5.digest()).decode()

    def close(self) -> None:
        self.file.close()


class _S3Writer(BlobWriter):
    def __init__(self, store: S3BlobStore, key: str, size: int | None, content_type: str,
                 metadata: Mapping[str, str] | None, if_absent: bool) -> None:
        self.store, self.key, self.if_absent = store, key, if_absent
        self.content_type, self.metadata = content_type, dict(metadata or {})
        # Unknown sizes get the normal 64 MiB parts; they are then limited to 10,000 parts (640 GiB).
        self.part_size = s3_part_size(size or 0)
        self.size = 0
        self._part: _Part | None = _Part()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []
        self._part_md5s: list[bytes] = []
        self._closed = False

    @property
    def _bucket(self) -> str:
        return self.store.bucket

    def write(self, chunk: bytes) -> None:
        assert not self._closed and self._part is not None, "writer already closed"
        view = memoryview(chunk)
        while view:
            # A full part is sent only once more data arrives, so an object of exactly one part's
            # size (≤ 64 MiB) still goes as a single PutObject, as the s3_etag convention expects.
            if self._part.size == self.part_size:
                self._send_part()
            take = min(len(view), self.part_size - self._part.size)
            self._part.write(view[:take])
            view = view[take:]
        self.size += len(chunk)

    def _send_part(self) -> None:
        assert self._part is not None
        if self._upload_id is None:
            self._start_multipart()
        number = len(self._parts) + 1
        if number > S3_MAX_PARTS:
            raise BlobStoreError(f"{self.key}: more than {S3_MAX_PARTS} parts; pass `size` to the writer")
        part, self._part = self._part, _Part()
        try:
            with _translated(self.key):
                response = self.store.client.upload_part(
                    Bucket=self._bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number,
                    Body=part.body(), ContentLength=part.size, ContentMD5=part.content_md5())
        finally:
            part.close()
        self._parts.append({"PartNumber": number, "ETag": response["ETag"]})
        self._part_md5s.append(part.md5.digest())

    def _start_multipart(self) -> None:
        with _translated(self.key):
            response = self.store.client.create_multipart_upload(
                Bucket=self._bucket, Key=self.key, ContentType=self.content_type, Metadata=self.metadata)
        self._upload_id = response["UploadId"]
        logger.debug("started multipart upload %s of s3://%s/%s", self._upload_id, self._bucket, self.key)

    def commit(self) -> BlobInfo:
        assert not self._closed and self._part is not None, "writer already closed"
        try:
            etag = self._put_single() if self._upload_id is None else self._complete_multipart()
        finally:
            self.abort()
        # S3 lower-cases metadata names; say what head() will say.
        metadata = {name.lower(): value for name, value in self.metadata.items()}
        return BlobInfo(self.key, self.size, self.content_type, metadata, etag=etag)

    def _conditions(self) -> dict[str, str]:
        return {"IfNoneMatch": "*"} if self.if_absent else {}

    def _put_single(self) -> str:
        assert self._part is not None and self._part.size == self.size
        with _translated(self.key):
            response = self.store.client.put_object(
                Bucket=self._bucket, Key=self.key, Body=self._part.body(), ContentLength=self.size,
                ContentMD5=self._part.content_md5(), ContentType=self.content_type, Metadata=self.metadata,
                **self._conditions())
        return response["ETag"].strip('"')

    def _complete_multipart(self) -> str:
        assert self._part is not None
        if self._part.size:
            self._send_part()
        with _translated(self.key):
            response = self.store.client.complete_multipart_upload(
                Bucket=self._bucket, Key=self.key, UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts}, **self._conditions())
        self._upload_id = None  # completed: nothing left for abort() to clean up
        etag = response["ETag"].strip('"')
        expected = f"{hashlib.md5(b''.join(self._part_md5s)).hexdigest()}-{len(self._part_md5s)}"
        if etag != expected:
            # Every part went with Content-MD5, so the bytes are right; the ETag is computed differently
            # (SSE-KMS buckets do that), which breaks the DSS s3_etag convention for this bucket.
            logger.warning("s3://%s/%s: ETag %s is not the expected %s", self._bucket, self.key, etag, expected)
        return etag

    def abort(self) -> None:
        self._closed = True
        if self._part is not None:
            self._part.close()
            self._part = None
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            try:
                self.store.client.abort_multipart_upload(Bucket=self._bucket, Key=self.key, UploadId=upload_id)
            except (ClientError, BotoCoreError):
                # A bucket lifecycle rule for incomplete uploads is the backstop for this.
                logger.warning("could not abort multipart upload %s of s3://%s/%s", upload_id, self._bucket,
                               self.key, exc_info=True)


class S3BlobStore(BlobStore):
    scheme = "s3"

    def __init__(self, bucket: str, *, client: Any = None, **_: Any) -> None:
        super().__init__(bucket)
        self.client = client if client is not None else self.make_client({})

    @classmethod
    def make_client(cls, options: Mapping[str, Any]) -> Any:
        """One client for all buckets: boto3 clients are thread-safe and pool their connections."""
        config = Config(
            retries={"mode": "standard", "max_attempts": 5},
            max_pool_connections=50,
            signature_version="s3v4",
            # Integrity comes from Content-MD5 on every body we send (it is also what the ETag
            # convention is built on); botocore's default CRC32 trailers are not understood by every
            # S3-compatible store.
            request_checksum_calculation="when_required",
        )
        return aws.client("s3", config=config)

    # --- primitives ---------------------------------------------------------------------------
    def head(self, key: str) -> BlobInfo:
        with _translated(key):
            response = self.client.head_object(Bucket=self.bucket, Key=key)
        return BlobInfo(
            key, response["ContentLength"], response.get("ContentType") or "application/octet-stream",
            {name.lower(): value for name, value in response.get("Metadata", {}).items()},
            etag=response["ETag"].strip('"'), last_modified=response.get("LastModified"))

    def tags(self, key: str) -> dict[str, str]:
        with _translated(key):
            response = self.client.get_object_tagging(Bucket=self.bucket, Key=key)
        return {tag["Key"]: tag["Value"] for tag in response.get("TagSet", [])}

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        if end is not None and end <= start:
            self.head(key)  # an empty range still needs the key to exist
            return _EmptyStream()  # type: ignore[return-value]
        ranged = {} if start == 0 and end is None else {"Range": f"bytes={start}-{'' if end is None else end - 1}"}
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key, **ranged)
        except ClientError as exc:
            if aws.error_code(exc) == "InvalidRange":  # start at or past the end, as with a file
                return _EmptyStream()  # type: ignore[return-value]
            raise translate_error(exc, key) from exc
        except BotoCoreError as exc:
            raise translate_error(exc, key) from exc
        return _Stream(response["Body"], key)  # type: ignore[return-value]

    def writer(self, key: str, *, size: int | None = None, content_type: str = "application/octet-stream",
               metadata: Mapping[str, str] | None = None, if_absent: bool = False) -> BlobWriter:
        return _S3Writer(self, key, size, content_type, metadata, if_absent)

    def delete(self, key: str) -> None:
        with _translated(key):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        # ListObjectsV2 returns keys in UTF-8 byte order, which is also Python's str order.
        arguments: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        if start_after is not None:
            arguments["StartAfter"] = start_after
        pages = iter(self.client.get_paginator("list_objects_v2").paginate(**arguments))
        while True:
            with _translated(prefix):
                page = next(pages, None)
            if page is None:
                return
            for entry in page.get("Contents", ()):
                yield entry["Key"]

    def signed_url(self, key: str, expires_in: int, content_disposition: str | None = None) -> str:
        params = {"Bucket": self.bucket, "Key": key}
        if content_disposition:
            params["ResponseContentDisposition"] = content_disposition
        with _translated(key):
            return self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_in)

    # --- copies from another S3 bucket, done by S3 itself -----------------------------------------
    # Objects above one DSS part are copied by UploadPartCopy in the DSS part size, so that the copy's
    # ETag is the DSS s3_etag, which finishing recomputes from the parts' ETags (the MD5s S3 computed of
    # the bytes it copied) before completing. Smaller ones are one CopyObject of a source whose ETag is
    # its MD5. Every part names the source's ETag (CopySourceIfMatch): a source replaced meanwhile fails
    # the copy rather than splicing two versions.
    def copy_start(self, source: BlobStore, source_key: str, key: str, *, upload_id: str, size: int,
                   part_size: int, source_info: BlobInfo) -> CopySession:
        if not isinstance(source, S3BlobStore) or not source_info.etag:
            return super().copy_start(source, source_key, key, upload_id=upload_id, size=size, part_size=part_size,
                                      source_info=source_info)
        native = {"key": key, "size": size, "source_bucket": source.bucket, "source_key": source_key,
                  "source_etag": source_info.etag}
        if size <= S3_SINGLE_PART_LIMIT:
            if "-" in source_info.etag:  # a multipart ETag is not the MD5 that a single object's ETag must be
                return super().copy_start(source, source_key, key, upload_id=upload_id, size=size,
                                          part_size=part_size, source_info=source_info)
            return {"kind": "s3-copy-object", "part_size": max(size, 1), **native}
        upload = self._multipart_upload(key, source_info)
        return {"kind": "s3-multipart", "part_size": s3_part_size(size), "upload": upload, **native}

    def _multipart_upload(self, key: str, source_info: BlobInfo) -> str:
        """An upload in progress for `key` (a retried or concurrent copy of the same object), else a new one."""
        with _translated(key):
            listing = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
            for upload in listing.get("Uploads", ()):
                if upload["Key"] == key:
                    return str(upload["UploadId"])
            response = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType=source_info.content_type, Metadata=dict(source_info.metadata))
        return str(response["UploadId"])

    def copy_part(self, session: CopySession, source: BlobStore, source_key: str, number: int, start: int,
                  end: int, resume: Any = None) -> Any:
        if session["kind"] == "s3-copy-object":
            return None  # one CopyObject, when finishing
        if session["kind"] != "s3-multipart":
            return super().copy_part(session, source, source_key, number, start, end, resume)
        try:
            self.client.upload_part_copy(
                Bucket=self.bucket, Key=session["key"], UploadId=session["upload"], PartNumber=number,
                CopySource={"Bucket": session["source_bucket"], "Key": source_key},
                CopySourceRange=f"bytes={start}-{end - 1}", CopySourceIfMatch=session["source_etag"])
        except ClientError as exc:
            raise _copy_error(exc, session["key"], False) from exc
        except BotoCoreError as exc:
            raise translate_error(exc, session["key"]) from exc
        return None

    def copy_finish(self, session: CopySession, key: str, *, size: int, part_count: int, content_type: str,
                    metadata: Mapping[str, str], if_absent: bool,
                    verify: Callable[[Mapping[str, Any]], None]) -> None:
        conditions = {"IfNoneMatch": "*"} if if_absent else {}
        if session["kind"] == "s3-copy-object":
            verify({"size": session["size"], "s3_etag": session["source_etag"]})
            try:
                self.client.copy_object(
                    Bucket=self.bucket, Key=key,
                    CopySource={"Bucket": session["source_bucket"], "Key": session["source_key"]},
                    CopySourceIfMatch=session["source_etag"], MetadataDirective="REPLACE",
                    ContentType=content_type, Metadata=dict(metadata), **conditions)
            except ClientError as exc:
                raise _copy_error(exc, key, self.exists(key) if if_absent else False) from exc
            except BotoCoreError as exc:
                raise translate_error(exc, key) from exc
            return
        if session["kind"] != "s3-multipart":
            return super().copy_finish(session, key, size=size, part_count=part_count, content_type=content_type,
                                       metadata=metadata, if_absent=if_absent, verify=verify)
        parts = _copied_parts(self.client, self.bucket, session["upload"], key)
        if [part["PartNumber"] for part in parts] != list(range(1, part_count + 1)):
            raise BlobNotFound(f"{key}: upload {session['upload']} lacks parts")
        md5s = [bytes.fromhex(part["ETag"].strip('"')) for part in parts]
        etag = f"{hashlib.md5(b''.join(md5s)).hexdigest()}-{len(md5s)}"
        verify({"size": sum(part["Size"] for part in parts), "s3_etag": etag})
        with _translated(key):
            response = self.client.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=session["upload"], **conditions,
                MultipartUpload={"Parts": [{"PartNumber": p["PartNumber"], "ETag": p["ETag"]} for p in parts]})
        if response["ETag"].strip('"') != etag:
            logger.warning("s3://%s/%s: ETag %s is not the expected %s", self.bucket, key, response["ETag"], etag)

    def copy_abort(self, session: CopySession, key: str) -> None:
        if session.get("kind") != "s3-multipart":
            return super().copy_abort(session, key)
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=session["upload"])
        except ClientError as exc:
            if aws.error_code(exc) != "NoSuchUpload":
                raise translate_error(exc, key) from exc


def _copied_parts(client: Any, bucket: str, upload: str, key: str) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    with _translated(key):
        for page in client.get_paginator("list_parts").paginate(Bucket=bucket, Key=key, UploadId=upload):
            parts.extend(page.get("Parts", ()))
    return sorted(parts, key=lambda part: part["PartNumber"])


def _copy_error(exc: ClientError, key: str, destination_exists: bool) -> BlobStoreError:
    """A failed precondition on a copy is the source's ETag changing (CopySourceIfMatch), unless it is the
    destination that exists (If-None-Match)."""
    error = translate_error(exc, key)
    if isinstance(error, BlobAlreadyExists) and not destination_exists:
        return BlobStoreError(f"{key}: the source changed during the copy")
    return error
