"""The BlobStore contract, run against every backend: local disk, S3 (moto) and GCS (the emulator).

The `blobstore` fixture (tests/infra/storage_servers.py) gives a fresh, empty store of each kind.
Backend-specific checks (S3 ETags, GCS crc32c, leftover multipart uploads) sit next to the common
ones, keyed on `store.scheme`.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import botocore.exceptions
import google.auth.exceptions
import google_crc32c
import pytest
import requests
from botocore.exceptions import ClientError
from google.api_core import exceptions as api_errors

from dss.checksums import Checksums, checksum_stream
from dss.storage.blobstore import (
    BlobAccessDenied,
    BlobAlreadyExists,
    BlobNotFound,
    BlobStore,
    BlobStoreError,
    BlobStoreFactory,
    BlobStoreUnavailable,
)
from dss.storage.blobstore import gs as gs_backend
from dss.storage.blobstore import s3 as s3_backend
from tests.infra.storage_servers import STORE_OPTIONS

MiB = 1024 * 1024


def _crc32c(data: bytes) -> str:
    return google_crc32c.Checksum(data).digest().hex()


def _chunks(data: bytes, size: int = MiB) -> Iterator[bytes]:
    view = memoryview(data)
    for offset in range(0, len(data), size):
        yield bytes(view[offset:offset + size])


# --- round trips --------------------------------------------------------------------------------
def test_put_get_head_round_trip(blobstore: BlobStore) -> None:
    data = b"hello, blob store\n" * 100
    metadata = {"dss-owner": "alice", "dss-kind": "test"}
    put = blobstore.put("files/greeting.txt", data, content_type="text/plain", metadata=metadata)
    assert put.size == len(data)
    info = blobstore.head("files/greeting.txt")
    assert (info.key, info.size, info.content_type, dict(info.metadata)) == (
        "files/greeting.txt", len(data), "text/plain", metadata)
    assert info.last_modified is not None
    assert blobstore.get("files/greeting.txt") == data
    assert blobstore.exists("files/greeting.txt")
    if blobstore.scheme == "s3":
        assert info.etag == put.etag == hashlib.md5(data).hexdigest()
    if blobstore.scheme == "gs":
        assert info.crc32c == put.crc32c == _crc32c(data)


def test_empty_object(blobstore: BlobStore) -> None:
    blobstore.put("files/empty", b"")
    assert blobstore.head("files/empty").size == 0
    assert blobstore.get("files/empty") == b""
    with blobstore.open("files/empty", 0, 10) as stream:
        assert stream.read() == b""
    if blobstore.scheme == "s3":
        assert blobstore.head("files/empty").etag == hashlib.md5(b"").hexdigest()


@pytest.mark.parametrize(("start", "end"), [(0, None), (10, 20), (1000, None), (0, 1024), (1020, 2000), (5, 5),
                                            (1024, None), (2000, None), (3, 4)])
def test_ranged_open(blobstore: BlobStore, start: int, end: int | None) -> None:
    data = bytes(range(256)) * 4
    blobstore.put("files/ranged", data)
    with blobstore.open("files/ranged", start, end) as stream:
        assert stream.read() == data[start:end]


def test_small_reads_reassemble(blobstore: BlobStore) -> None:
    data = os.urandom(100_000)
    blobstore.put("files/pieces", data)
    with blobstore.open("files/pieces", 7) as stream:
        pieces = iter(lambda: stream.read(4093), b"")
        assert b"".join(pieces) == data[7:]


def test_overwrite_replaces_bytes_and_attributes(blobstore: BlobStore) -> None:
    blobstore.put("files/doc", b"first version", content_type="text/plain", metadata={"v": "1"})
    blobstore.put("files/doc", b"second", content_type="application/json", metadata={"w": "2"})
    info = blobstore.head("files/doc")
    assert (info.size, info.content_type, dict(info.metadata)) == (6, "application/json", {"w": "2"})
    assert blobstore.get("files/doc") == b"second"


def test_delete_is_idempotent(blobstore: BlobStore) -> None:
    blobstore.put("files/doomed", b"x")
    blobstore.delete("files/doomed")
    blobstore.delete("files/doomed")
    blobstore.delete("files/never-existed")
    assert not blobstore.exists("files/doomed")
    assert list(blobstore.list("files/")) == []


def test_missing_keys_raise_blob_not_found(blobstore: BlobStore) -> None:
    for operation in (blobstore.head, blobstore.get, blobstore.open, blobstore.tags):
        with pytest.raises(BlobNotFound) as caught:
            operation("files/missing")
        if blobstore.scheme != "file":
            assert caught.value.__cause__ is not None, "the SDK's error is kept as the cause"


def test_tags(blobstore: BlobStore) -> None:
    blobstore.put("files/tagged", b"x")
    assert blobstore.tags("files/tagged") == {}
    if blobstore.scheme == "s3":
        blobstore.client.put_object_tagging(  # type: ignore[attr-defined]
            Bucket=blobstore.bucket, Key="files/tagged", Tagging={"TagSet": [{"Key": "dss", "Value": "yes"}]})
        assert blobstore.tags("files/tagged") == {"dss": "yes"}


# --- conditional create -------------------------------------------------------------------------
def test_conditional_create(blobstore: BlobStore) -> None:
    blobstore.put("files/once", b"first", if_absent=True)
    with pytest.raises(BlobAlreadyExists):
        blobstore.put("files/once", b"second", if_absent=True)
    with blobstore.writer("files/once", if_absent=True) as writer:
        writer.write(b"third")
        with pytest.raises(BlobAlreadyExists):
            writer.commit()
    assert blobstore.get("files/once") == b"first"


def test_racing_conditional_creates_have_one_winner(blobstore: BlobStore) -> None:
    contenders = 20
    barrier = threading.Barrier(contenders)
    winners: list[bytes] = []
    losers: list[BaseException] = []

    def contend(index: int) -> None:
        data = f"contender {index} ".encode() * (index + 1)
        barrier.wait()
        try:
            blobstore.put("files/contested", data, if_absent=True)
            winners.append(data)
        except BaseException as exc:  # noqa: BLE001 - every outcome is asserted below
            losers.append(exc)

    threads = [threading.Thread(target=contend, args=(index,)) for index in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1, f"{len(winners)} winners; failures: {losers[:3]}"
    assert len(losers) == contenders - 1 and all(isinstance(exc, BlobAlreadyExists) for exc in losers), losers
    assert blobstore.get("files/contested") == winners[0]


# --- listing ------------------------------------------------------------------------------------
LISTED = ["files/abc.1", "files/abc.2", "files/abc.10", "files/abd.1", "files/ab", "files/a", "files/b",
          "files/abc", "files/zz.1"] + [f"files/{i:03d}.{uuid.UUID(int=i).hex[-6:]}" for i in range(40)]


LIST_CASES = [
    ("files/", None), ("files/ab", None), ("files/abc.", None), ("files/abc", "files/abc"),
    ("files/", "files/abc.1"), ("files/", "files/abc.15"), ("files/", "files/0"), ("files/", "a"),
    ("files/", "files/zz.1"), ("files/", "g"), ("files/q", None), ("nothing/", None), ("files/0", "files/019"),
]


def test_list_order_prefix_and_start_after(blobstore: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = LISTED + ["other/abc.1", "filesx"]
    random.Random(7).shuffle(keys)
    for key in keys:
        blobstore.put(key, key.encode())
    if blobstore.scheme == "s3":
        # Small pages, so the listing has to follow ListObjectsV2 continuation across pages.
        client = blobstore.client  # type: ignore[attr-defined]
        paginator = client.get_paginator("list_objects_v2")
        paginate = paginator.paginate
        monkeypatch.setattr(paginator, "paginate", lambda **kw: paginate(**kw, PaginationConfig={"PageSize": 7}))
        monkeypatch.setattr(client, "get_paginator", lambda name: paginator)
    for prefix, start_after in LIST_CASES:
        expected = sorted(k for k in LISTED if k.startswith(prefix) and (start_after is None or k > start_after))
        assert list(blobstore.list(prefix, start_after=start_after)) == expected, (prefix, start_after)


def test_list_descends_below_the_prefix(blobstore: BlobStore) -> None:
    """Prefixes are plain string prefixes, not directories."""
    keys = ["bundles/x/1", "bundles/x/2", "bundles/y", "bundles/zz/deep/er"]
    for key in keys:
        blobstore.put(key, b"")
    assert list(blobstore.list("bundles/")) == sorted(keys)
    assert list(blobstore.list("")) == sorted(keys)
    assert list(blobstore.list("bun")) == sorted(keys)


def test_names_a_file_system_treats_specially_are_ordinary_keys(blobstore: BlobStore) -> None:
    """Bundle file names become checkout keys: hidden, shard-like, sidecar-like and escape-like parts too."""
    keys = ["c/.bashrc", "c/~y", "c/%z", "c/%2ebashrc", "c/a.meta", "c/a", "c/.d/f", "c/~d/.meta", "c/-", "c/zz"]
    for key in keys:
        blobstore.put(key, key.encode())
    for key in keys:
        assert blobstore.get(key) == key.encode(), key
    assert list(blobstore.list("c/")) == sorted(keys)
    assert list(blobstore.list("c/.")) == sorted(k for k in keys if k.startswith("c/."))
    assert list(blobstore.list("c/", start_after="c/.d/f")) == sorted(k for k in keys if k > "c/.d/f")
    for bad in ("c/../x", "c/./x", "c//x"):
        with pytest.raises(BlobNotFound):
            blobstore.get(bad)


# --- large, streamed writes ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def big_data() -> bytes:
    return random.Random(1).randbytes(70 * MiB)


@pytest.mark.parametrize("declare_size", [True, False], ids=["sized", "unsized"])
def test_streamed_multipart_write(blobstore: BlobStore, big_data: bytes, declare_size: bool) -> None:
    expected: Checksums = checksum_stream(io.BytesIO(big_data), len(big_data))
    with blobstore.writer("files/big", size=len(big_data) if declare_size else None) as writer:
        for chunk in _chunks(big_data):
            writer.write(chunk)
        assert not blobstore.exists("files/big"), "nothing is visible before commit"
        committed = writer.commit()
    info = blobstore.head("files/big")
    assert info.size == committed.size == len(big_data)
    if blobstore.scheme == "s3":
        assert info.etag == committed.etag == expected.s3_etag
        assert expected.s3_etag.endswith("-2")
    if blobstore.scheme == "gs":
        assert info.crc32c == committed.crc32c == expected.crc32c
    boundary = 64 * MiB
    with blobstore.open("files/big", boundary - 10, boundary + 10) as stream:
        assert stream.read() == big_data[boundary - 10:boundary + 10]


def test_object_of_exactly_one_part_is_a_single_upload(blobstore: BlobStore, big_data: bytes) -> None:
    data = big_data[:64 * MiB]
    with blobstore.writer("files/64mib") as writer:  # size unknown: the writer must not start a multipart upload
        for chunk in _chunks(data, 8 * MiB):
            writer.write(chunk)
        writer.commit()
    info = blobstore.head("files/64mib")
    assert info.size == len(data)
    if blobstore.scheme == "s3":
        assert info.etag == checksum_stream(io.BytesIO(data), len(data)).s3_etag == hashlib.md5(data).hexdigest()


def test_abort_leaves_nothing(blobstore: BlobStore, big_data: bytes) -> None:
    with blobstore.writer("files/small-abandoned") as writer:
        writer.write(b"never published")
        writer.abort()
        writer.abort()
    # 65 MiB: past the first S3 part and several GCS resumable chunks, so uploads are under way.
    with pytest.raises(RuntimeError), blobstore.writer("files/big-abandoned", size=80 * MiB) as writer:
        for chunk in _chunks(big_data[:65 * MiB], 8 * MiB):
            writer.write(chunk)
        raise RuntimeError("the source failed")
    assert list(blobstore.list("files/")) == []
    assert not blobstore.exists("files/big-abandoned")
    if blobstore.scheme == "s3":
        uploads = blobstore.client.list_multipart_uploads(Bucket=blobstore.bucket)  # type: ignore[attr-defined]
        assert uploads.get("Uploads", []) == []


# --- copies from another store (the copy workflow's steps) --------------------------------------
NATIVE = {"s3": {"s3-multipart", "s3-copy-object"}, "gs": {"gs-rewrite"}}
# What each method lets `verify` see: a native copy only what the service computed.
ESTABLISHED = {"s3-multipart": {"size", "s3_etag"}, "s3-copy-object": {"size", "s3_etag"},
               "gs-rewrite": {"size", "crc32c"}, "gs-compose": {"size", "crc32c"},
               "staged": {"size", "sha256", "sha1", "s3_etag", "crc32c"}}


def _source_store(kind: str, destination: BlobStore, request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    """Another store: of the destination's kind ("same"), or on local disk ("file")."""
    if kind == "file" or destination.scheme == "file":
        return BlobStoreFactory(**STORE_OPTIONS).for_url((tmp_path / "source").as_uri())
    fixture = "new_s3_bucket" if destination.scheme == "s3" else "new_gcs_bucket"
    return BlobStoreFactory(**STORE_OPTIONS).for_url(f"{destination.scheme}://{request.getfixturevalue(fixture)()}")


def _copy(source: BlobStore, source_key: str, target: BlobStore, key: str,
          verify: Callable[[Mapping[str, Any]], None]) -> str:
    """Drive the copy steps as the copy workflow does; returns the method the destination chose."""
    info = source.head(source_key)
    session = target.copy_start(source, source_key, key, upload_id="u" * 32, size=info.size,
                                part_size=64 * MiB, source_info=info)
    part_count = max(1, -(-info.size // session["part_size"]))
    for number in reversed(range(1, part_count + 1)):  # any order
        start = (number - 1) * session["part_size"]
        end, resume = min(start + session["part_size"], info.size), None
        while (resume := target.copy_part(session, source, source_key, number, start, end, resume)) is not None:
            pass
    target.copy_finish(session, key, size=info.size, part_count=part_count, content_type=info.content_type,
                       metadata=info.metadata, if_absent=True, verify=verify)
    return str(session["kind"])


def _nothing_left(store: BlobStore) -> None:
    assert list(store.list("workflows/")) == []
    if store.scheme == "s3":
        uploads = store.client.list_multipart_uploads(Bucket=store.bucket)  # type: ignore[attr-defined]
        assert uploads.get("Uploads", []) == []


@pytest.mark.parametrize("size", [1000, 70 * MiB], ids=["small", "two-parts"])
@pytest.mark.parametrize("source_kind", ["same", "file"])
def test_copy_from_another_store(blobstore: BlobStore, big_data: bytes, size: int, source_kind: str,
                                 request: pytest.FixtureRequest, tmp_path: Path) -> None:
    source = _source_store(source_kind, blobstore, request, tmp_path)
    data = big_data[:size]
    source.put("staged/object", data, content_type="text/plain", metadata={"hca-dss-sha256": "x"})
    expected = checksum_stream(io.BytesIO(data), size)
    seen: list[Mapping[str, Any]] = []
    method = _copy(source, "staged/object", blobstore, "blobs/copy", seen.append)
    native = source.scheme == blobstore.scheme and blobstore.scheme in NATIVE
    assert (method in NATIVE.get(blobstore.scheme, set())) == native, method
    assert set(seen[0]) == ESTABLISHED[method]
    assert all(seen[0][name] == value for name, value in {"size": size, **expected.as_dict()}.items()
               if name in seen[0])
    assert blobstore.get("blobs/copy") == data
    info = blobstore.head("blobs/copy")
    assert (info.content_type, info.metadata.get("hca-dss-sha256")) == ("text/plain", "x")
    if blobstore.scheme == "s3":
        assert info.etag == expected.s3_etag  # the DSS ETag, whichever way the bytes came
    if blobstore.scheme == "gs":
        assert info.crc32c == expected.crc32c
    _nothing_left(blobstore)


@pytest.mark.parametrize("size", [1000, 70 * MiB], ids=["small", "two-parts"])
def test_a_refused_copy_publishes_nothing(blobstore: BlobStore, big_data: bytes, size: int,
                                          request: pytest.FixtureRequest, tmp_path: Path) -> None:
    source = _source_store("same", blobstore, request, tmp_path)
    source.put("staged/object", big_data[:size])

    def refuse(found: Mapping[str, Any]) -> None:
        raise ValueError("wrong checksum")

    info = source.head("staged/object")
    session = blobstore.copy_start(source, "staged/object", "blobs/refused", upload_id="r" * 32, size=size,
                                   part_size=64 * MiB, source_info=info)
    part_count = max(1, -(-size // session["part_size"]))
    for number in range(1, part_count + 1):
        start = (number - 1) * session["part_size"]
        while blobstore.copy_part(session, source, "staged/object", number, start,
                                  min(start + session["part_size"], size)) is not None:
            pass
    with pytest.raises(ValueError, match="wrong checksum"):
        blobstore.copy_finish(session, "blobs/refused", size=size, part_count=part_count,
                              content_type=info.content_type, metadata={}, if_absent=True, verify=refuse)
    assert not blobstore.exists("blobs/refused")
    blobstore.copy_abort(session, "blobs/refused")
    blobstore.copy_abort(session, "blobs/refused")  # idempotent
    _nothing_left(blobstore)


# --- signed URLs --------------------------------------------------------------------------------
def test_signed_url(blobstore: BlobStore) -> None:
    data = bytes(range(256)) * 10
    key = "files/signed file.bin"
    blobstore.put(key, data)
    url = blobstore.signed_url(key, 300, content_disposition='attachment; filename="x.bin"')
    if blobstore.scheme == "file":
        assert url.startswith("/blobstore/test/files/signed%20file.bin?")  # served by the API, tested there
        return
    whole = requests.get(url, timeout=30)
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["Content-Disposition"] == 'attachment; filename="x.bin"'
    part = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=30)
    assert part.status_code == 206 and part.content == data[100:200]
    plain = requests.get(blobstore.signed_url(key, 300), timeout=30)
    assert plain.status_code == 200 and plain.content == data


# --- errors -------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_missing_bucket_raises_blob_not_found(scheme: str, request: pytest.FixtureRequest) -> None:
    """(A local store creates its directory, so it has no missing-bucket case.)"""
    request.getfixturevalue("aws_env" if scheme == "s3" else "gcs_env")
    store = BlobStoreFactory(**STORE_OPTIONS).for_url(f"{scheme}://dss-test-missing-{uuid.uuid4().hex[:12]}")
    for operation in (store.head, store.get, store.open, lambda key: list(store.list(key)),
                      lambda key: store.put(key, b"x")):
        with pytest.raises(BlobNotFound) as caught:
            operation("files/x")
        assert caught.value.__cause__ is not None


def _client_error(code: str, status: int) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}}, "Op")


@pytest.mark.parametrize(("error", "expected"), [
    (_client_error("NoSuchKey", 404), BlobNotFound),
    (_client_error("NoSuchBucket", 404), BlobNotFound),
    (_client_error("404", 404), BlobNotFound),
    (_client_error("PreconditionFailed", 412), BlobAlreadyExists),
    (_client_error("ConditionalRequestConflict", 409), BlobAlreadyExists),
    (_client_error("AccessDenied", 403), BlobAccessDenied),
    (_client_error("403", 403), BlobAccessDenied),
    (_client_error("InvalidAccessKeyId", 403), BlobAccessDenied),
    (_client_error("SignatureDoesNotMatch", 403), BlobAccessDenied),
    (_client_error("SlowDown", 503), BlobStoreUnavailable),
    (_client_error("ThrottlingException", 400), BlobStoreUnavailable),
    (_client_error("RequestTimeout", 400), BlobStoreUnavailable),
    (_client_error("InternalError", 500), BlobStoreUnavailable),
    (_client_error("ServiceUnavailable", 503), BlobStoreUnavailable),
    (_client_error("SomethingNew", 502), BlobStoreUnavailable),
    (_client_error("InvalidArgument", 400), BlobStoreError),
    (botocore.exceptions.EndpointConnectionError(endpoint_url="http://x"), BlobStoreUnavailable),
    (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://x"), BlobStoreUnavailable),
    (botocore.exceptions.ReadTimeoutError(endpoint_url="http://x"), BlobStoreUnavailable),
    (botocore.exceptions.ConnectionClosedError(endpoint_url="http://x"), BlobStoreUnavailable),
    (botocore.exceptions.ResponseStreamingError(error="reset"), BlobStoreUnavailable),
    (botocore.exceptions.IncompleteReadError(actual_bytes=1, expected_bytes=2), BlobStoreUnavailable),
    (botocore.exceptions.NoCredentialsError(), BlobAccessDenied),
    (botocore.exceptions.ParamValidationError(report="bad"), BlobStoreError),
])
def test_s3_error_translation(error: Exception, expected: type[BlobStoreError]) -> None:
    translated = s3_backend.translate_error(error, "k")
    assert type(translated) is expected


@pytest.mark.parametrize(("error", "expected"), [
    (api_errors.NotFound("m"), BlobNotFound),
    (api_errors.PreconditionFailed("m"), BlobAlreadyExists),
    (api_errors.Forbidden("m"), BlobAccessDenied),
    (api_errors.Unauthorized("m"), BlobAccessDenied),
    (google.auth.exceptions.RefreshError("m"), BlobAccessDenied),
    (google.auth.exceptions.DefaultCredentialsError("m"), BlobAccessDenied),
    (api_errors.TooManyRequests("m"), BlobStoreUnavailable),
    (api_errors.InternalServerError("m"), BlobStoreUnavailable),
    (api_errors.ServiceUnavailable("m"), BlobStoreUnavailable),
    (api_errors.GatewayTimeout("m"), BlobStoreUnavailable),
    (api_errors.RetryError("m", cause=None), BlobStoreUnavailable),
    (google.auth.exceptions.TransportError("m"), BlobStoreUnavailable),
    (requests.ConnectionError("m"), BlobStoreUnavailable),
    (requests.Timeout("m"), BlobStoreUnavailable),
    (requests.exceptions.ChunkedEncodingError("m"), BlobStoreUnavailable),
    (gs_backend.storage_errors.DataCorruption(None, "m"), BlobStoreUnavailable),
    (api_errors.BadRequest("m"), BlobStoreError),
])
def test_gs_error_translation(error: Exception, expected: type[BlobStoreError]) -> None:
    translated = gs_backend.translate_error(error, "k")
    assert type(translated) is expected


def test_gs_resumable_upload_survives_a_dropped_request(gcs_bucket: str, big_data: bytes,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk lost in transit is resent from where the session says it got to."""
    store = BlobStoreFactory(**STORE_OPTIONS).for_url(f"gs://{gcs_bucket}")
    put = store.session.put  # type: ignore[attr-defined]
    calls = {"data": 0}

    def flaky_put(url: str, data: bytes = b"", headers: dict | None = None, **kwargs: object) -> requests.Response:
        if data:
            calls["data"] += 1
            if calls["data"] in (2, 3):  # the second chunk fails twice, once after reaching the server
                if calls["data"] == 3:
                    put(url, data=data, headers=headers, **kwargs)
                raise requests.ConnectionError("connection reset")
        return put(url, data=data, headers=headers, **kwargs)

    monkeypatch.setattr(store.session, "put", flaky_put)  # type: ignore[attr-defined]
    monkeypatch.setattr(gs_backend.time, "sleep", lambda seconds: None)
    data = big_data[:20 * MiB]
    with store.writer("files/resumed") as writer:
        for chunk in _chunks(data):
            writer.write(chunk)
        info = writer.commit()
    assert calls["data"] > 3
    assert info.crc32c == store.head("files/resumed").crc32c == _crc32c(data)
    assert store.get("files/resumed") == data
