"""One contract suite for the Table port, run against SQLite and against DynamoDB on moto's server."""
from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dss.tables import Table, TableConflict, TableError, Tables, open_table


def _name() -> str:
    return f"dss-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", "dynamodb"])
def table_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'tables.sqlite3'}"
    request.getfixturevalue("aws_env")  # boto3 → moto via AWS_ENDPOINT_URL, like production → AWS
    return "dynamodb://us-east-1"


def _options(url: str) -> dict[str, bool]:
    # Deployments create DynamoDB tables with Terraform; the tests ask the backend to do it.
    return {"create_if_missing": True} if url.startswith("dynamodb") else {}


@pytest.fixture
def table(table_url: str) -> Iterator[Table]:
    with open_table(table_url, _name(), **_options(table_url)) as t:
        yield t


def test_put_get_replace(table: Table) -> None:
    assert table.get("h", "s") is None
    table.put("h", "s", {"a": 1, "nested": {"b": [1, "x", None, True]}})
    assert table.get("h", "s") == {"a": 1, "nested": {"b": [1, "x", None, True]}}
    table.put("h", "s", {"a": 2})
    assert table.get("h", "s") == {"a": 2}


def test_put_if_absent_conflicts_and_keeps_the_first(table: Table) -> None:
    table.put("h", "s", {"v": 1}, if_absent=True)
    with pytest.raises(TableConflict):
        table.put("h", "s", {"v": 2}, if_absent=True)
    assert table.get("h", "s") == {"v": 1}
    table.put("h", "other", {"v": 3}, if_absent=True)  # only the exact key pair conflicts
    assert table.get("h", "other") == {"v": 3}


def test_racing_conditional_creates_have_one_winner(table: Table) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()

    def create(i: int) -> None:
        try:
            table.put("race", "key", {"writer": i}, if_absent=True)
            result = "won"
        except TableConflict:
            result = "lost"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost"] * 7 + ["won"]


def test_delete_reports_whether_an_item_was_there(table: Table) -> None:
    table.put("h", "s", {})
    assert table.delete("h", "s") is True
    assert table.delete("h", "s") is False
    assert table.get("h", "s") is None


def test_query_is_per_hash_key_in_sort_order(table: Table) -> None:
    for sort_key in ("b", "c", "a", "a.2", "A"):
        table.put("owner-1", sort_key, {"k": sort_key})
    table.put("owner-2", "z", {"k": "z"})
    assert [b["k"] for b in table.query("owner-1")] == ["A", "a", "a.2", "b", "c"]
    assert table.query("nobody") == []
    assert table.count("owner-1") == 5
    assert table.count("owner-2") == 1
    assert table.count("nobody") == 0


def test_scan_returns_every_body(table: Table) -> None:
    expected = {(f"h{i % 3}", f"s{i}") for i in range(25)}
    for h, s in expected:
        table.put(h, s, {"h": h, "s": s})
    assert {(b["h"], b["s"]) for b in table.scan()} == expected


def test_large_body_round_trips(table: Table) -> None:
    body = {"text": "x" * 200_000, "unicode": "é€😀"}
    table.put("h", "big", body)
    assert table.get("h", "big") == body


@pytest.mark.parametrize("hash_key, sort_key", [("", "s"), ("h", ""), (None, "s")])
def test_empty_keys_are_refused(table: Table, hash_key: str, sort_key: str) -> None:
    with pytest.raises(ValueError):
        table.put(hash_key, sort_key, {})
    with pytest.raises(ValueError):
        table.get(hash_key, sort_key)


def test_body_must_be_an_object(table: Table) -> None:
    with pytest.raises(TypeError):
        table.put("h", "s", ["not", "an", "object"])  # type: ignore[arg-type]


def test_tables_with_the_same_url_are_separate(table_url: str) -> None:
    options = _options(table_url)
    with open_table(table_url, _name(), **options) as one, open_table(table_url, _name(), **options) as two:
        one.put("h", "s", {"in": "one"})
        assert two.get("h", "s") is None
        assert list(two.scan()) == []


def test_a_reopened_table_sees_earlier_writes(table_url: str) -> None:
    name = _name()
    with open_table(table_url, name, **_options(table_url)) as first:
        first.put("h", "s", {"kept": True})
    with open_table(table_url, name) as second:
        assert second.get("h", "s") == {"kept": True}


def test_registry_opens_each_name_once_with_its_prefix(table_url: str) -> None:
    tables = Tables(table_url, prefix=f"{_name()}-", **_options(table_url))
    try:
        assert tables("subscriptions") is tables("subscriptions")
        assert tables("subscriptions").name.startswith(tables.prefix)
        tables("subscriptions").put("h", "s", {})
        assert tables("collections").get("h", "s") is None
    finally:
        tables.close()


def test_missing_dynamodb_table_is_a_table_error(aws_env: str) -> None:
    table = open_table("dynamodb://us-east-1", _name())  # not created
    with pytest.raises(TableError, match="does not exist"):
        table.get("h", "s")
    with pytest.raises(TableError):
        table.put("h", "s", {})
    with pytest.raises(TableError):
        list(table.scan())


def test_unreachable_dynamodb_is_a_table_error(monkeypatch: pytest.MonkeyPatch, aws_env: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    table = open_table("dynamodb://us-east-1", _name())
    with pytest.raises(TableError) as caught:
        table.get("h", "s")
    assert caught.value.__cause__ is not None


def test_sqlite_file_errors_are_table_errors(tmp_path: Path) -> None:
    not_a_database = tmp_path / "garbage.sqlite3"
    not_a_database.write_bytes(b"this is not a database" * 100)
    with pytest.raises(TableError):
        open_table(f"sqlite://{not_a_database}", "subscriptions")


@pytest.mark.parametrize("url", ["nothing", "ftp://x", "redis://localhost"])
def test_unknown_schemes_are_refused(url: str) -> None:
    with pytest.raises(ValueError):
        open_table(url, "subscriptions")


@pytest.mark.parametrize("name", ["", "ab", "has space", "semi;colon", 'quo"te', "x" * 256])
def test_invalid_table_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        open_table(f"sqlite://{tmp_path / 't.sqlite3'}", name)
