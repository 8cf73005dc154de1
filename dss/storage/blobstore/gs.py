"""Google Cloud Storage blob store (`gs://bucket`), over google-cloud-storage.

Credentials and endpoint come from Google's own standard settings, which its libraries read: the
key file named by `GOOGLE_APPLICATION_CREDENTIALS` (or gcloud's application-default file), or, when
`STORAGE_EMULATOR_HOST` is set, the emulator with anonymous credentials. Nothing else: with neither,
building a client fails at once with BlobAccessDenied. Application Default Credentials would go on
to probe the Compute Engine metadata server (169.254.169.254): off Google Cloud that held a request
naming a `gs://` source for over a minute, and nothing configured asked the server to go there. So
metadata-server credentials (a VM's service account) and anonymous access to public buckets are not
used; on Google Cloud, give the server a key file.

Writes of up to `_CHUNK` bytes are one multipart upload. Longer ones become a resumable upload fed
`_CHUNK` bytes at a time, so a writer holds at most one chunk: the session is opened with the
library (metadata, preconditions, auth) and the chunks go straight to the session URI, which
authorises them by itself. Owning that exchange is what lets `abort()` cancel the session; the
library's file-like writer would instead publish whatever it had been given when garbage-collected.
Nothing is visible before the final chunk. `if_absent` is `ifGenerationMatch=0`, which GCS checks
atomically when the upload completes. GCS may also refuse a resumable session as it opens, so
BlobAlreadyExists can come from `write()` as well as from `commit()`.

Reads pin the generation seen by `open()`, so a concurrent overwrite cannot splice two versions.
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import functools
import io
import itertools
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, BinaryIO

import google.auth.credentials
import google.auth.exceptions
import google.auth.transport.requests
import google_crc32c
import requests
from google.api_core import exceptions as api_errors
from google.cloud import storage
from google.cloud.storage import exceptions as storage_errors

from dss.storage.blobstore import (
    STAGED_PARTS_PREFIX,
    BlobAccessDenied,
    BlobAlreadyExists,
    BlobInfo,
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    BlobStoreUnavailable,
    BlobWriter,
    CopySession,
    staged_part_key,
)

__all__ = ["GSBlobStore", "translate_error", "configured_credentials"]

logger = logging.getLogger(__name__)

# Resumable chunks must be multiples of 256 KiB; 8 MiB is also the library's largest single-request
# (multipart) upload, so one constant decides both.
_CHUNK = 8 * 1024 * 1024
_READ_CHUNK = 8 * 1024 * 1024
_TIMEOUT = (10, 120)  # connect, read
_ATTEMPTS = 5
_RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_DEFAULT_TYPE = "application/octet-stream"
_COMPOSE_LIMIT = 32  # source objects per compose request

_SDK_ERRORS = (api_errors.GoogleAPIError, requests.RequestException, google.auth.exceptions.GoogleAuthError,
               storage_errors.InvalidResponse, storage_errors.DataCorruption)
_TRANSIENT = (api_errors.TooManyRequests, api_errors.ServerError, api_errors.RetryError,
              requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
              google.auth.exceptions.TransportError, storage_errors.InvalidResponse, storage_errors.DataCorruption)


def translate_error(exc: Exception, key: str = "") -> BlobStoreError:
    """The BlobStore error for a google-cloud-storage / google-auth / requests exception."""
    message = f"{key}: {exc}"
    if isinstance(exc, api_errors.NotFound):
        return BlobNotFound(message)
    if isinstance(exc, api_errors.PreconditionFailed):
        return BlobAlreadyExists(message)
    if isinstance(exc, (api_errors.Forbidden, api_errors.Unauthorized, google.auth.exceptions.RefreshError,
                        google.auth.exceptions.DefaultCredentialsError)):
        return BlobAccessDenied(message)
    if isinstance(exc, _TRANSIENT):
        return BlobStoreUnavailable(message)
    return BlobStoreError(message)


@contextlib.contextmanager
def _translated(key: str) -> Iterator[None]:
    try:
        yield
    except _SDK_ERRORS as exc:
        raise translate_error(exc, key) from exc


def _crc32c_hex(value: str | None) -> str | None:
    """GCS gives crc32c as base64 of the big-endian bytes; DSS writes them as lower-case hex."""
    return base64.b64decode(value).hex() if value else None


def _timestamp(value: str | None) -> datetime.datetime | None:
    try:
        return datetime.datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def _info_from_blob(key: str, blob: storage.Blob) -> BlobInfo:
    return BlobInfo(key, blob.size or 0, blob.content_type or _DEFAULT_TYPE, dict(blob.metadata or {}),
                    crc32c=_crc32c_hex(blob.crc32c), last_modified=blob.updated)


def _info_from_resource(key: str, resource: Mapping[str, Any]) -> BlobInfo:
    return BlobInfo(key, int(resource.get("size") or 0), resource.get("contentType") or _DEFAULT_TYPE,
                    dict(resource.get("metadata") or {}), crc32c=_crc32c_hex(resource.get("crc32c")),
                    last_modified=_timestamp(resource.get("updated")))


def configured_credentials() -> tuple[google.auth.credentials.Credentials | None, str | None]:
    """The credentials an operator configured for Google's libraries, and their project: the key file
    named by GOOGLE_APPLICATION_CREDENTIALS, else gcloud's application-default file. (None, None) if
    neither exists.

    These are the first two sources of `google.auth.default()`, asked one by one because default()
    goes on to App Engine and the Compute Engine metadata server, whose probe is what must not happen.
    They are private to google-auth; tests/test_gs_credentials.py pins their behaviour.
    """
    from google.auth import _default

    try:
        for find in (_default._get_explicit_environ_credentials, _default._get_gcloud_sdk_credentials):
            credentials, project = find()
            if credentials is not None:
                return credentials, project
    except google.auth.exceptions.DefaultCredentialsError as exc:
        # The message names the key file; it goes to the log, not to a client.
        logger.error("the configured Google credentials cannot be loaded: %s", exc)
        raise BlobAccessDenied("the Google Cloud credentials configured on the server cannot be loaded") from exc
    return None, None


def _client_from_key(info: Mapping[str, Any], project: str | None) -> storage.Client:
    """A client signed in with a service-account key file's contents (`gcp-credentials.json`)."""
    from google.oauth2 import service_account

    try:
        credentials = service_account.Credentials.from_service_account_info(dict(info))
    except (ValueError, KeyError) as exc:
        logger.error("the gcp-credentials.json secret cannot be loaded: %s", type(exc).__name__)
        raise BlobAccessDenied("the Google Cloud credentials configured on the server cannot be loaded") from exc
    return storage.Client(project=project or info.get("project_id"), credentials=credentials)


def _emulated(client: storage.Client) -> bool:
    """Whether STORAGE_EMULATOR_HOST points the client at an emulator, which takes anonymous requests."""
    return bool(getattr(client, "_is_emulator_set", False))


@functools.cache
def _throwaway_signer() -> google.auth.credentials.Signing:
    """A service-account identity with a key made up on the spot, for clients without credentials.

    An anonymous client talks to an emulator (or to public buckets); the emulator serves signed URLs
    without checking the signature, so a locally generated key yields URLs of the real V4 shape.
    GCS itself would refuse them, but it would refuse an anonymous signer anyway.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.auth import crypt
    from google.oauth2 import service_account

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return service_account.Credentials(crypt.RSASigner.from_string(pem), "dss-anonymous@localhost",
                                       "https://oauth2.googleapis.com/token")


class _Reader:
    """Bytes [start, end) of one generation of an object, fetched `_READ_CHUNK` at a time."""

    def __init__(self, blob: storage.Blob, size: int, start: int, end: int, key: str) -> None:
        self._blob, self._size, self._key = blob, size, key
        self._pos, self._end = start, end  # next byte to fetch; end of the range
        self._buffer, self._offset = b"", 0  # fetched bytes, and how many of them were returned

    def read(self, size: int = -1) -> bytes:
        buffered = len(self._buffer) - self._offset
        if size is None or size < 0:
            data = self._buffer[self._offset:] + self._fetch(self._end - self._pos)
            self._buffer, self._offset = b"", 0
            return data
        if buffered < size and self._pos < self._end:
            self._buffer = self._buffer[self._offset:] + self._fetch(min(self._end - self._pos, max(size, _READ_CHUNK)))
            self._offset = 0
        data = self._buffer[self._offset:self._offset + size]
        self._offset += len(data)
        return data

    def _fetch(self, count: int) -> bytes:
        if count <= 0:
            return b""
        whole = self._pos == 0 and count == self._size
        # Only a whole-object download can be checked against the object's crc32c.
        ranged = {} if whole else {"start": self._pos, "end": self._pos + count - 1}
        with _translated(self._key):
            data = self._blob.download_as_bytes(raw_download=True, checksum="crc32c" if whole else None, **ranged)
        if not data:
            raise BlobStoreUnavailable(f"{self._key}: no bytes at offset {self._pos} of {self._size}")
        self._pos += len(data)
        return data

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._buffer, self._pos = b"", self._end

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _GSWriter(BlobWriter):
    def __init__(self, store: GSBlobStore, key: str, content_type: str, metadata: Mapping[str, str] | None,
                 if_absent: bool) -> None:
        self.store, self.key, self.if_absent = store, key, if_absent
        self.content_type, self.metadata = content_type, dict(metadata or {})
        self.size = 0
        self._crc = google_crc32c.Checksum()
        self._buffer = bytearray()  # bytes not yet persisted by GCS; _buffer[0] is at offset _offset
        self._offset = 0
        self._session_url: str | None = None
        self._closed = False

    def _blob(self) -> storage.Blob:
        blob = self.store.bucket_ref.blob(self.key)
        # In the resource too, not only in the session's X-Upload-Content-Type header: GCS takes either,
        # fake-gcs-server only the resource.
        blob.metadata, blob.content_type = self.metadata, self.content_type
        return blob

    def _generation_match(self) -> int | None:
        return 0 if self.if_absent else None

    def write(self, chunk: bytes) -> None:
        assert not self._closed, "writer already closed"
        self._buffer += chunk
        self._crc.update(bytes(chunk))
        self.size += len(chunk)
        # Send only full chunks with more data behind them: the final request then always carries
        # bytes, and an object of up to one chunk never opens a session.
        while len(self._buffer) > _CHUNK:
            self._upload(final=False)

    def commit(self) -> BlobInfo:
        assert not self._closed, "writer already closed"
        try:
            if self._session_url is None:
                return self._upload_whole()
            resource = self._upload(final=True)
            self._session_url = None  # completed: nothing left for abort() to cancel
            return _info_from_resource(self.key, resource or {})
        finally:
            self.abort()

    def _upload_whole(self) -> BlobInfo:
        blob = self._blob()
        with _translated(self.key):
            blob.upload_from_file(io.BytesIO(self._buffer), size=len(self._buffer), content_type=self.content_type,
                                  client=self.store.client, if_generation_match=self._generation_match(),
                                  checksum=None, crc32c_checksum_value=self._crc_base64())
        return _info_from_blob(self.key, blob)

    def _crc_base64(self) -> str:
        return base64.b64encode(self._crc.digest()).decode()

    # --- the resumable session ------------------------------------------------------------------
    def _upload(self, final: bool) -> dict[str, Any] | None:
        """Get bytes up to the end of this chunk (or of everything, if final) persisted.

        GCS may persist less than it was sent (308 with a shorter Range); after a failure we ask the
        session how far it got before resending. Returns the object resource once final.
        """
        if self._session_url is None:
            with _translated(self.key):
                self._session_url = self._blob().create_resumable_upload_session(
                    content_type=self.content_type, client=self.store.client, checksum=None,
                    if_generation_match=self._generation_match())
        end = self._offset + (len(self._buffer) if final else _CHUNK)
        failures, ask_status = 0, False
        while True:
            before = self._offset
            error: Exception | None = None
            try:
                response = self._status() if ask_status else self._put(end, final)
            except requests.RequestException as exc:
                response, error = None, exc
            if response is not None:
                if response.status_code in (200, 201):
                    self._advance(end)
                    return response.json()
                if response.status_code == 308:
                    self._advance(self._persisted(response))
                    if self._offset == end and not final:
                        return None
                    if ask_status or self._offset > before:
                        failures, ask_status = 0, False
                        continue
                    error = BlobStoreUnavailable(f"{self.key}: upload made no progress at offset {self._offset}")
                else:
                    error = api_errors.from_http_response(response)
                    if response.status_code not in _RETRYABLE_STATUS:
                        raise translate_error(error, self.key) from error
            failures += 1
            if failures >= _ATTEMPTS:
                if isinstance(error, BlobStoreError):
                    raise error
                assert error is not None
                raise translate_error(error, self.key) from error
            logger.info("retrying upload of gs://%s/%s at offset %d: %s", self.store.bucket, self.key,
                        self._offset, error)
            time.sleep(min(0.5 * 2 ** failures, 8))
            ask_status = True

    def _put(self, end: int, final: bool) -> requests.Response:
        body = bytes(self._buffer[: end - self._offset])
        total = str(end) if final else "*"
        span = f"{self._offset}-{self._offset + len(body) - 1}" if body else "*"
        headers = {"Content-Range": f"bytes {span}/{total}"}
        if final:
            headers["X-Goog-Hash"] = f"crc32c={self._crc_base64()}"  # GCS verifies it before publishing
        assert self._session_url is not None
        return self.store.session.put(self._session_url, data=body, headers=headers, timeout=_TIMEOUT)

    def _status(self) -> requests.Response:
        assert self._session_url is not None
        return self.store.session.put(self._session_url, headers={"Content-Range": "bytes */*"}, timeout=_TIMEOUT)

    @staticmethod
    def _persisted(response: requests.Response) -> int:
        """`Range: bytes=0-N` on a 308 means N+1 bytes are persisted; no Range means none."""
        received = response.headers.get("Range")
        return int(received.rpartition("-")[2]) + 1 if received else 0

    def _advance(self, offset: int) -> None:
        drop = min(offset - self._offset, len(self._buffer))
        if drop > 0:
            del self._buffer[:drop]
            self._offset += drop

    def abort(self) -> None:
        self._closed = True
        self._buffer = bytearray()
        if self._session_url is not None:
            url, self._session_url = self._session_url, None
            try:
                # GCS answers 499 once a session is cancelled; an abandoned one expires after a week.
                response = self.store.session.delete(url, timeout=_TIMEOUT)
                logger.debug("cancelled upload of gs://%s/%s: %s", self.store.bucket, self.key, response.status_code)
            except requests.RequestException:
                logger.warning("could not cancel upload of gs://%s/%s", self.store.bucket, self.key, exc_info=True)


class GSBlobStore(BlobStore):
    scheme = "gs"

    def __init__(self, bucket: str, *, client: storage.Client | None = None, **_: Any) -> None:
        super().__init__(bucket)
        self.client = client if client is not None else self.make_client({})
        self.bucket_ref = self.client.bucket(bucket)
        # For resumable-session chunks only: a session URI carries its own authorisation.
        self.session = requests.Session()

    @classmethod
    def make_client(cls, options: Mapping[str, Any]) -> storage.Client:
        # An explicit project (None: none) keeps the library from asking google.auth.default() for one.
        project = options.get("gcp_project") or None
        anonymous = storage.Client(project=project, credentials=google.auth.credentials.AnonymousCredentials())
        if _emulated(anonymous):
            return anonymous  # as the library itself does for an emulator, whatever else is configured
        if options.get("gcp_credentials"):  # the key from the secret store (dss.secrets: gcp-credentials.json)
            return _client_from_key(options["gcp_credentials"], project)
        credentials, found_project = configured_credentials()
        if credentials is None:
            raise BlobAccessDenied("no Google Cloud credentials are configured on the server "
                                   "(GOOGLE_APPLICATION_CREDENTIALS, or STORAGE_EMULATOR_HOST for an emulator)")
        return storage.Client(project=project or found_project, credentials=credentials)

    # --- primitives ---------------------------------------------------------------------------
    def _loaded(self, key: str) -> storage.Blob:
        blob = self.bucket_ref.blob(key)
        with _translated(key):
            blob.reload()
        return blob

    def head(self, key: str) -> BlobInfo:
        return _info_from_blob(key, self._loaded(key))

    def open(self, key: str, start: int = 0, end: int | None = None) -> BinaryIO:
        loaded = self._loaded(key)
        size = loaded.size or 0
        end = size if end is None else min(end, size)
        # A fresh blob naming the generation: downloads then ask for exactly that version.
        pinned = self.bucket_ref.blob(key, generation=loaded.generation)
        return _Reader(pinned, size, min(start, end), end, key)  # type: ignore[return-value]

    def writer(self, key: str, *, size: int | None = None, content_type: str = _DEFAULT_TYPE,
               metadata: Mapping[str, str] | None = None, if_absent: bool = False) -> BlobWriter:
        return _GSWriter(self, key, content_type, metadata, if_absent)

    def delete(self, key: str) -> None:
        with contextlib.suppress(BlobNotFound), _translated(key):
            self.bucket_ref.blob(key).delete()

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        # GCS lists in UTF-8 byte order (Python's str order); start_offset is inclusive, hence the
        # filter, which also covers servers that ignore start_offset (gcp-storage-emulator does).
        blobs = iter(self.client.list_blobs(self.bucket_ref, prefix=prefix or None, start_offset=start_after,
                                            fields="items(name),nextPageToken"))
        while True:
            with _translated(prefix):
                blob = next(blobs, None)
            if blob is None:
                return
            if start_after is None or blob.name > start_after:
                yield blob.name

    def signed_url(self, key: str, expires_in: int, content_disposition: str | None = None) -> str:
        with _translated(key):
            return self.bucket_ref.blob(key).generate_signed_url(
                version="v4", expiration=datetime.timedelta(seconds=expires_in), method="GET",
                response_disposition=content_disposition, **self._signing_arguments())

    def _signing_arguments(self) -> dict[str, Any]:
        # The library's own generate_signed_url reads the client's credentials the same way.
        credentials = self.client._credentials
        if isinstance(credentials, google.auth.credentials.Signing):
            return {}
        if isinstance(credentials, google.auth.credentials.AnonymousCredentials):
            return {"credentials": _throwaway_signer()}
        # Token-only credentials (Compute Engine, workload identity) sign through IAM signBlob.
        email = getattr(credentials, "service_account_email", None)
        if not email:
            raise BlobAccessDenied(f"gs://{self.bucket}: these credentials cannot sign URLs")
        if not credentials.valid:
            credentials.refresh(google.auth.transport.requests.Request())
        return {"service_account_email": email, "access_token": credentials.token}

    # --- copies from another GCS bucket, done by GCS itself ---------------------------------------
    # One `rewrite` of the whole object into a staging key, its token kept in the caller's workflow
    # state between calls (a large cross-location rewrite takes many); finishing checks the size and the
    # crc32c GCS computed of the copy, then publishes it by a second rewrite inside this bucket, which
    # GCS does without copying the bytes again (same location and storage class).
    def copy_start(self, source: BlobStore, source_key: str, key: str, *, upload_id: str, size: int,
                   part_size: int, source_info: BlobInfo) -> CopySession:
        if not isinstance(source, GSBlobStore):  # parts staged by the base class, assembled by compose
            return {**super().copy_start(source, source_key, key, upload_id=upload_id, size=size,
                                         part_size=part_size, source_info=source_info), "kind": "gs-compose"}
        return {"kind": "gs-rewrite", "part_size": max(size, 1), "staging": staged_part_key(upload_id, 1)}

    def copy_part(self, session: CopySession, source: BlobStore, source_key: str, number: int, start: int,
                  end: int, resume: Any = None) -> Any:
        if session["kind"] != "gs-rewrite":
            return super().copy_part(session, source, source_key, number, start, end, resume)
        assert isinstance(source, GSBlobStore)
        staging = self.bucket_ref.blob(session["staging"])
        if resume is None:
            with contextlib.suppress(BlobNotFound):
                if self.head(session["staging"]).size == end - start:
                    return None  # an earlier call finished it
        with _translated(session["staging"]):
            token, _, _ = staging.rewrite(source.bucket_ref.blob(source_key), token=resume)
        return token

    def copy_finish(self, session: CopySession, key: str, *, size: int, part_count: int, content_type: str,
                    metadata: Mapping[str, str], if_absent: bool,
                    verify: Callable[[Mapping[str, Any]], None]) -> None:
        if session["kind"] == "gs-compose":
            assembled = self._compose_parts(session["id"], part_count, content_type, metadata)
        elif session["kind"] == "gs-rewrite":
            assembled = session["staging"]
        else:
            return super().copy_finish(session, key, size=size, part_count=part_count, content_type=content_type,
                                       metadata=metadata, if_absent=if_absent, verify=verify)
        copied = self.head(assembled)
        verify({"size": copied.size, **({"crc32c": copied.crc32c} if copied.crc32c else {})})
        target, token = self.bucket_ref.blob(key), None
        while True:
            with _translated(key):
                token, _, _ = target.rewrite(self.bucket_ref.blob(assembled), token=token,
                                             if_generation_match=0 if if_absent else None)
            if token is None:
                break
        self.copy_abort(session, key)

    # Parts staged from another kind of store are assembled by GCS `compose` (at most 32 sources per
    # call, so more parts are composed in rounds) instead of being read back and uploaded again; GCS
    # computes the crc32c of the result, which is checked before the rewrite that publishes it.
    def _compose_parts(self, upload_id: str, part_count: int, content_type: str, metadata: Mapping[str, str]) -> str:
        sources = [staged_part_key(upload_id, number) for number in range(1, part_count + 1)]
        for round_number in itertools.count():
            groups = [sources[i:i + _COMPOSE_LIMIT] for i in range(0, len(sources), _COMPOSE_LIMIT)]
            sources = [f"{STAGED_PARTS_PREFIX}{upload_id}/composed-{round_number}-{index:05d}"
                       for index in range(len(groups))]
            for name, group in zip(sources, groups):
                composed = self.bucket_ref.blob(name)
                composed.content_type, composed.metadata = content_type, dict(metadata)
                with _translated(name):
                    composed.compose([self.bucket_ref.blob(part) for part in group])
            if len(sources) == 1:
                break
        return sources[0]

    def copy_abort(self, session: CopySession, key: str) -> None:
        if session.get("kind") == "gs-rewrite":
            self.delete(session["staging"])
        elif session.get("kind") == "gs-compose":
            for name in list(self.list(f"{STAGED_PARTS_PREFIX}{session['id']}/")):  # parts and composites
                self.delete(name)
        else:
            super().copy_abort(session, key)
