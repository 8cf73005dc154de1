"""The GCS store's contract on fake-gcs-server as well as on gcp-storage-emulator.

fake-gcs-server is the emulator the GCS events run on (tests/infra/gcs_events.py), so the store must work
on it too. The contract tests of tests/test_blobstore.py run here unchanged, with every GCS fixture pointed
at a fake-gcs-server (`gcs_emulator` is overridden for this module); of the slow, parametrised ones, the
variants that exercise what differs between servers run: rewrite (same store) and compose of staged parts
(from local disk; small parts, so that a compose in two rounds is cheap); resumable uploads run in
`test_abort_leaves_nothing` and `test_a_resumable_upload_keeps_its_content_type_and_metadata`.

What fake-gcs-server does differently, and what the store does about it:
- it ignores the `X-Upload-Content-Type` of a resumable session: the store also puts the content type in
  the session's object resource, which GCS reads too (`_GSWriter._blob`);
- it serves signed URLs (with `-public-host` naming its own address) but ignores
  `response-content-disposition`: `test_signed_url_serves_bytes_and_ranges` checks what it serves and that
  the URL carries the disposition GCS would apply;
- it finalizes a resumable upload when asked for the session's status (`Content-Range: bytes */*`), which
  GCS answers with 308: the store's recovery from a dropped chunk (tested on gcp-storage-emulator by
  `test_gs_resumable_upload_survives_a_dropped_request`) cannot be exercised here.
"""
from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from dss.storage.blobstore import BlobStore, BlobStoreFactory
from tests import test_blobstore as contract
from tests.infra.storage_servers import STORE_OPTIONS
from tests.test_blobstore import (  # noqa: F401 - collected here, against fake-gcs-server
    test_abort_leaves_nothing,
    test_conditional_create,
    test_delete_is_idempotent,
    test_empty_object,
    test_list_descends_below_the_prefix,
    test_list_order_prefix_and_start_after,
    test_missing_keys_raise_blob_not_found,
    test_names_a_file_system_treats_specially_are_ordinary_keys,
    test_overwrite_replaces_bytes_and_attributes,
    test_put_get_head_round_trip,
    test_racing_conditional_creates_have_one_winner,
    test_ranged_open,
    test_small_reads_reassemble,
    test_tags,
)

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def big_data() -> bytes:
    return random.Random(1).randbytes(70 * MiB)


@pytest.fixture
def gcs_emulator(fake_gcs: str) -> str:
    """Every GCS fixture of this module (`gcs_env`, `new_gcs_bucket`, …) on fake-gcs-server."""
    return fake_gcs


@pytest.fixture
def blobstore(gcs_bucket: str) -> BlobStore:
    return BlobStoreFactory(**STORE_OPTIONS).for_url(f"gs://{gcs_bucket}")


def test_rewrite_within_gcs(blobstore: BlobStore, big_data: bytes, request: pytest.FixtureRequest,
                            tmp_path: Path) -> None:
    contract.test_copy_from_another_store(blobstore, big_data, 1000, "same", request, tmp_path)


@pytest.mark.parametrize("part_count", [2, 40], ids=["one-round", "two-rounds"])
def test_compose_of_staged_parts(blobstore: BlobStore, big_data: bytes, tmp_path: Path, part_count: int) -> None:
    """Parts staged from local disk are assembled by compose, in rounds of at most 32 sources, and published
    by a rewrite: the workflow's steps with small parts, so that 40 of them stay cheap."""
    part_size = 64 * 1024
    data = big_data[:part_count * part_size - 100]
    source = BlobStoreFactory(**STORE_OPTIONS).for_url((tmp_path / "source").as_uri())
    source.put("staged/object", data, content_type="text/plain", metadata={"hca-dss-sha256": "x"})
    info = source.head("staged/object")
    session = blobstore.copy_start(source, "staged/object", "blobs/copy", upload_id="c" * 32, size=info.size,
                                   part_size=part_size, source_info=info)
    assert session["kind"] == "gs-compose"
    for number in reversed(range(1, part_count + 1)):  # any order
        start = (number - 1) * part_size
        assert blobstore.copy_part(session, source, "staged/object", number, start,
                                   min(start + part_size, info.size)) is None
    seen: list[Mapping[str, Any]] = []
    blobstore.copy_finish(session, "blobs/copy", size=info.size, part_count=part_count,
                          content_type=info.content_type, metadata=info.metadata, if_absent=True, verify=seen.append)
    assert seen == [{"size": len(data), "crc32c": contract._crc32c(data)}]  # what GCS computed of the composite
    assert blobstore.get("blobs/copy") == data
    copied = blobstore.head("blobs/copy")
    assert (copied.content_type, copied.metadata.get("hca-dss-sha256")) == ("text/plain", "x")
    contract._nothing_left(blobstore)


def test_a_refused_copy_publishes_nothing(blobstore: BlobStore, big_data: bytes, request: pytest.FixtureRequest,
                                          tmp_path: Path) -> None:
    contract.test_a_refused_copy_publishes_nothing(blobstore, big_data, 1000, request, tmp_path)


def test_a_resumable_upload_keeps_its_content_type_and_metadata(blobstore: BlobStore, big_data: bytes) -> None:
    data = big_data[:9 * MiB]  # more than one chunk: a resumable session
    blobstore.put("files/typed", data, content_type="text/plain", metadata={"hca-dss-sha256": "x"})
    info = blobstore.head("files/typed")
    assert (info.size, info.content_type, dict(info.metadata)) == (len(data), "text/plain", {"hca-dss-sha256": "x"})


def test_missing_bucket_raises_blob_not_found(request: pytest.FixtureRequest) -> None:
    contract.test_missing_bucket_raises_blob_not_found("gs", request)


def test_signed_url_serves_bytes_and_ranges(blobstore: BlobStore) -> None:
    data = bytes(range(256)) * 10
    key = "files/signed file.bin"
    blobstore.put(key, data)
    url = blobstore.signed_url(key, 300, content_disposition='attachment; filename="x.bin"')
    assert parse_qs(urlsplit(url).query)["response-content-disposition"] == ['attachment; filename="x.bin"']
    whole = requests.get(url, timeout=30)
    assert whole.status_code == 200 and whole.content == data
    part = requests.get(url, headers={"Range": "bytes=100-199"}, timeout=30)
    assert part.status_code == 206 and part.content == data[100:200]
