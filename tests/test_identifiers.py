"""Identifiers and names as the contract means them: the one module that validates what clients name."""
from __future__ import annotations

import re

import pytest
import yaml

from dss.api import SPEC_PATH
from dss.errors import IllegalArguments, IllegalFileName, IllegalUUID, IllegalVersion
from dss.identifiers import (
    MAX_CREATOR_UID,
    MAX_FILE_NAME_BYTES,
    UUID_PATTERN,
    VERSION_PATTERN,
    ObjectKey,
    is_version,
    new_version,
    normalise_uuid,
    validate_creator_uid,
    validate_file_name,
    validate_source_url,
    validate_text,
    validate_version,
)

UUID = "0c1b5f2e-9d6a-4e8b-8f3c-2a7d9e1b4c6f"
VERSION = "2020-01-01T000000.000000Z"


def test_uuids_are_lower_cased():
    assert normalise_uuid(UUID.upper()) == UUID
    assert normalise_uuid("ABCDEFGH-ijkl-MNOP-qrst-UVWXYZ012345") == "abcdefgh-ijkl-mnop-qrst-uvwxyz012345"


@pytest.mark.parametrize("value", [
    f"{UUID}-zz", f"{UUID}.{VERSION}", f"..{UUID}", f"~{UUID}", f"x{UUID}", f"{UUID}\n", f" {UUID}", "",
    UUID.replace("-", ""), UUID[:-1], f"{UUID[:-1]}é", f"{UUID[:-1]}\x00", f"{UUID[:-1]}\ud800", None, 7,
])
def test_anything_but_a_whole_uuid_is_refused(value):
    with pytest.raises(IllegalUUID) as raised:
        normalise_uuid(value)
    assert raised.value.code == "illegal_arguments"  # what the spec's pattern answers for the same input


def test_versions_match_whole_and_in_ascii():
    assert is_version(VERSION) and is_version(new_version())
    for value in (VERSION + "\n", "٢٠٢٠-01-01T000000.000000Z", "", "2020-13-01T000000.000000Z",
                  "2020-01-01T240000.000000Z", "0999-01-01T000000.000000Z"):
        assert not is_version(value)


@pytest.mark.parametrize("value", [
    "", "nope", VERSION + "\n", "2020-01-01T00:00:00.000000Z", "2020-01-01T000000Z", "2020-02-30T000000.000000Z",
    "٢٠٢٠-01-01T000000.000000Z", "2020-01-01T000000.000000Z\x00",
])
def test_malformed_versions_are_illegal_version(value):
    with pytest.raises(IllegalVersion):
        validate_version(value)


def test_keys_with_a_trailing_newline_are_not_parsed():
    assert ObjectKey.parse(f"files/{UUID}.{VERSION}") == ObjectKey("files", UUID, VERSION)
    assert ObjectKey.parse(f"files/{UUID}.{VERSION}\n") is None
    assert ObjectKey.parse(f"bundles/{UUID}.dead\n") is None


@pytest.mark.parametrize("name", [
    "a/b.json", "good..path", ".bashrc", "données/été.json", "a b/c-d_e.f", "x" * 255,
    "/".join(["y" * 255] * 3) + "/" + "z" * (MAX_FILE_NAME_BYTES - 3 * 256), "emoji-👩‍🔬.json", "..x", "x..",
])
def test_file_names_stores_and_disks_hold_are_accepted(name):
    assert validate_file_name(name) == name


@pytest.mark.parametrize("name", [
    # what the spec's pattern already refuses, for callers other than the API
    "/abs", "~/home", "a/./b", "a/.hidden", "a\\b", ".", "..", "./x", "a/..",
    # control characters, lone surrogates, line separators
    "a\x00b", "a\x01", "a\n", "tab\there", "del\x7f", "nel\x85", "line\u2028sep", "para\u2029", "\ud800",
    "a\udfff/b",
    # empty segments
    "", "a//b", "dir/", "a/b/",
    # names whose NFKC form breaks the rules: fullwidth dots and slashes, dot leaders, fullwidth backslash
    "．．／x", "‥/x", "x/．", "x/‥", "a／．hidden", "a＼b", "～/x", "․",
    # longer than the stores' keys allow, or a segment longer than a file system's name
    "x" * (MAX_FILE_NAME_BYTES + 1), "é" * (MAX_FILE_NAME_BYTES // 2 + 1), "x" * 256, "a/" + "é" * 128,
    "\ufdfa" * 14,  # 42 bytes, but its NFKC form (what a file system may store) is 462
])
def test_file_names_no_store_index_or_disk_could_hold_are_refused(name):
    with pytest.raises(IllegalFileName) as raised:
        validate_file_name(name)
    assert raised.value.code == "illegal_file_name"
    assert "\ud800" not in raised.value.title and "\x00" not in raised.value.title  # shown escaped


def test_the_longest_name_leaves_a_checkout_key_within_1024_bytes():
    key = f"bundles/{UUID}.{VERSION}/" + "n" * MAX_FILE_NAME_BYTES
    assert len(key.encode()) == 1024


@pytest.mark.parametrize("url", [
    "s3://bucket/key", "gs://my_bucket.example/a/b c", "file:///staging/x", "file://localhost/x",
    "wasb://container@account/key", "s3://b/" + "k" * 1024,
])
def test_source_urls_that_can_be_parsed_pass(url):
    assert validate_source_url(url) == url


@pytest.mark.parametrize("url", [
    "s3:///k", "gs:///k", "s3://-bucket/k", "s3://b b/k", "s3://b/" + "k" * 1025, "s3://b/k\x00", "file:///x\x00y",
    "file:///x\ud800", "gs://b/\udc80", "s3://b/k\n", "s3://b/k\x7f", None,
    "gs://T-x/k", "gs://bucket/.", "gs://bucket/..", "gs://ab/k", "gs://bucket-/k",
])
def test_source_urls_that_would_reach_a_store_broken_are_refused(url):
    with pytest.raises(IllegalArguments) as raised:
        validate_source_url(url)
    assert raised.value.code == "illegal_arguments"


@pytest.mark.parametrize("value, ok", [
    (0, True), (1, True), (MAX_CREATOR_UID, True), (-1, False), (MAX_CREATOR_UID + 1, False), (10**30, False),
    (True, False), (1.0, False), ("1", False), (None, False),
])
def test_creator_uids_fit_an_int64(value, ok):
    if ok:
        assert validate_creator_uid(value) == value
    else:
        with pytest.raises(IllegalArguments):
            validate_creator_uid(value)


def _spec() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text())


def test_the_spec_uses_the_identifiers_patterns_anchored():
    schemas = _spec()["components"]["schemas"]
    assert schemas["UUID"]["pattern"] == UUID_PATTERN and UUID_PATTERN.startswith("^") and UUID_PATTERN.endswith("$")
    assert schemas["Version"]["pattern"] == VERSION_PATTERN
    assert schemas["Version"]["format"] == "DSS_VERSION"
    assert not re.search(VERSION_PATTERN, "") and not re.search(UUID_PATTERN, f"{UUID}-zz")
    assert schemas["BundleFile"]["properties"]["uuid"] == {"$ref": "#/components/schemas/UUID"}
    assert schemas["BundleFile"]["properties"]["version"] == {"$ref": "#/components/schemas/Version"}
    assert (schemas["CreatorUID"]["minimum"], schemas["CreatorUID"]["maximum"]) == (0, MAX_CREATOR_UID)


def test_every_uuid_and_version_parameter_in_the_spec_is_validated():
    spec = _spec()
    parameters = spec["components"]["parameters"]
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                if "$ref" in parameter:
                    parameter = parameters[parameter["$ref"].rsplit("/", 1)[-1]]
                if parameter["name"] in ("uuid", "version"):
                    assert "$ref" in parameter["schema"], (method, path, parameter)


@pytest.mark.parametrize("value, ok", [
    ("duplicate of another bundle", True), ("line one\nline two\r\n\tindented", True), ("été ✓", True), ("", True),
    ("a\x00b", False), ("bell\x07", False), ("\ud800", False), ("x\udfff", False), ("nel\x85", False), (None, False),
])
def test_free_text_that_others_read_back_can_be_encoded(value, ok):
    if ok:
        assert validate_text(value, "reason") == value
    else:
        with pytest.raises(IllegalArguments):
            validate_text(value, "reason")
