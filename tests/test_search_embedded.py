"""Behaviour specific to the embedded engine: storage, updates, concurrency, URL forms."""
from __future__ import annotations

import itertools
import random
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dss.index import DocumentRejected, SearchIndex, open_search_index
from dss.index.embedded import EmbeddedSearchIndex
from tests.fixtures.hca_corpus import generate_bundles
from tests.infra.helpers import poll_until

REPLICA = "aws"
ORGAN = "files.specimen_from_organism_json.organ.text"


def _ids(index: SearchIndex, query: dict[str, Any], replica: str = REPLICA) -> list[str]:
    return [hit.id for hit in index.search(replica, {"query": query}, size=1000, source=False).hits]


@pytest.fixture
def documents() -> list[tuple[str, dict[str, Any]]]:
    return [(bundle.doc_id, bundle.document()) for bundle in generate_bundles(60, seed=5)]


def test_url_schemes(tmp_path: Path) -> None:
    assert isinstance(open_search_index(f"sqlite://{tmp_path}/dir"), EmbeddedSearchIndex)
    with pytest.raises(ValueError):
        open_search_index("ftp://example.org/index")
    with pytest.raises(ValueError):
        open_search_index("no-scheme")


def test_documents_survive_reopening(tmp_path: Path, documents: list[Any]) -> None:
    with open_search_index(f"sqlite://{tmp_path}/search", merge_threshold=25) as index:
        index.index_many(REPLICA, documents)  # some merged, some still pending
    with open_search_index(f"sqlite://{tmp_path}/search") as index:
        assert index.search(REPLICA, {"query": {"match_all": {}}}, size=0).total == len(documents)
        assert len(_ids(index, {"term": {ORGAN: "brain"}})) == sum(
            doc["files"]["specimen_from_organism_json"][0]["organ"]["text"] == "brain" for _, doc in documents)


def test_replicas_are_separate_even_in_one_file(tmp_path: Path) -> None:
    with open_search_index(f"sqlite://{tmp_path}/all.sqlite3") as index:
        index.index("aws", "a.1", {"uuid": "a", "organ": "brain"})
        index.index("gcp", "b.1", {"uuid": "b", "organ": 7})  # the same field, another type, another replica
        assert _ids(index, {"term": {"organ": "brain"}}, "aws") == ["a.1"]
        assert _ids(index, {"term": {"organ": 7}}, "gcp") == ["b.1"]
        assert _ids(index, {"match_all": {}}, "gcp") == ["b.1"]
    assert [path.name for path in tmp_path.iterdir() if path.is_dir()] == []
    assert (tmp_path / "all.sqlite3").is_file()


@pytest.mark.parametrize("threshold", [1, 1000])
def test_reindexing_replaces_a_document(tmp_path: Path, threshold: int) -> None:
    with open_search_index(f"sqlite://{tmp_path}/search", merge_threshold=threshold) as index:
        index.index(REPLICA, "a.1", {"uuid": "a", "manifest": {"version": "1"}, "organ": "brain"})
        index.index(REPLICA, "a.1", {"uuid": "a", "manifest": {"version": "1"}, "organ": "heart"})
        index.index(REPLICA, "a.1", {"uuid": "a", "manifest": {"version": "1"}, "organ": "heart"})  # identical
        assert _ids(index, {"term": {"organ": "brain"}}) == []
        assert _ids(index, {"term": {"organ": "heart"}}) == ["a.1"]
        index.refresh(REPLICA)
        index.index(REPLICA, "a.1", {"uuid": "a", "email": "x@example.org", "manifest": {"version": None}})
        assert _ids(index, {"term": {"organ": "heart"}}) == []
        assert _ids(index, {"exists": {"field": "email"}}) == ["a.1"]
        assert index.search(REPLICA, {"query": {"match_all": {}}}, size=0).total == 1


def test_malformed_values_are_left_out(tmp_path: Path) -> None:
    with open_search_index(f"sqlite://{tmp_path}/search") as index:
        index.index(REPLICA, "a.1", {"uuid": "a", "n": 1, "o": {"x": 1}})
        index.index(REPLICA, "b.1", {"uuid": "b", "n": "not a number", "o": "not an object", "m": 2})
        assert _ids(index, {"exists": {"field": "n"}}) == ["a.1"]
        assert _ids(index, {"term": {"m": 2}}) == ["b.1"]  # the rest of the document is indexed
        with pytest.raises(DocumentRejected):
            index.index(REPLICA, "c.1", {"uuid": "c", "bad": float("nan")})
        with pytest.raises(DocumentRejected):
            index.index(REPLICA, "", {"uuid": "c"})


def test_indexing_while_searching(tmp_path: Path, documents: list[Any]) -> None:
    index = open_search_index(f"sqlite://{tmp_path}/search", merge_threshold=8)
    errors: list[BaseException] = []
    done = threading.Event()

    def write(part: list[Any]) -> None:
        try:
            for doc_id, doc in part:
                index.index(REPLICA, doc_id, doc)
        except BaseException as error:  # noqa: BLE001 - reported by the test thread
            errors.append(error)

    def read() -> None:
        totals = [0]
        try:
            while not done.is_set():
                page = index.search(REPLICA, {"query": {"bool": {"must_not": {"term": {ORGAN: "liver"}}}}}, size=5)
                assert len(page.hits) == min(5, page.total)
                assert page.total >= totals[-1]  # each search sees at least what the previous one saw
                totals.append(page.total)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    writers = [threading.Thread(target=write, args=(documents[n::4],)) for n in range(4)]
    readers = [threading.Thread(target=read) for _ in range(2)]
    try:
        for thread in writers + readers:
            thread.start()
        for thread in writers:
            thread.join()
        done.set()
        for thread in readers:
            thread.join()
        assert not errors
        assert index.search(REPLICA, {"query": {"match_all": {}}}, size=0).total == len(documents)
        liver = sum(doc["files"]["specimen_from_organism_json"][0]["organ"]["text"] == "liver" for _, doc in documents)
        assert len(_ids(index, {"term": {ORGAN: "liver"}})) == liver
    finally:
        index.close()


def test_closed_index_refuses_work(tmp_path: Path) -> None:
    index = open_search_index(f"sqlite://{tmp_path}/search")
    index.close()
    with pytest.raises(Exception, match="closed"):
        index.search("aws", {"query": {"match_all": {}}}, size=1)


def test_large_bundles_are_indexed_without_their_file_list(tmp_path: Path) -> None:
    from dss.index import build_document

    entries = [{"name": f"cell_{n}.loom", "uuid": f"f{n}", "version": "v", "content-type": "application/octet-stream",
                "indexed": False, "size": n} for n in range(30)]
    entries.append({"name": "project_0.json", "uuid": "p", "version": "v", "content-type": "application/json",
                    "indexed": True, "size": 10})
    manifest = {"version": "v1", "files": entries}
    document = build_document("big", manifest, lambda entry: {"title": "huge atlas"}, manifest_file_limit=20)
    with open_search_index(f"sqlite://{tmp_path}/search") as index:
        index.index(REPLICA, "big.v1", document)
        assert _ids(index, {"match": {"files.project_json.title.text": "atlas"}}) == ["big.v1"]
        assert _ids(index, {"exists": {"field": "manifest.files"}}) == []
        assert index.get(REPLICA, "big.v1")["manifest"]["files"] == []


def _table_count(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def test_replaced_documents_leave_the_segments(tmp_path: Path, documents: list[Any]) -> None:
    database = tmp_path / "search" / f"{REPLICA}.sqlite3"
    with open_search_index(f"sqlite://{tmp_path}/search", merge_threshold=10, merge_in_background=False) as index:
        index.index_many(REPLICA, documents[:40])
        assert _table_count(database, "pending") == 0
        changed = [(doc_id, {**doc, "organ": "replaced"}) for doc_id, doc in documents[:20]]
        index.index_many(REPLICA, changed[:5])  # below the threshold: old versions listed as deleted
        assert _table_count(database, "deleted") == 5
        assert len(_ids(index, {"match_all": {}})) == 40
        assert sorted(_ids(index, {"term": {"organ": "replaced"}})) == sorted(doc_id for doc_id, _ in changed[:5])
        index.index_many(REPLICA, changed[5:])
        index.refresh(REPLICA)  # segments with a quarter of their documents replaced are rewritten
        assert _table_count(database, "deleted") == 0
        assert len(_ids(index, {"match_all": {}})) == 40
        assert sorted(_ids(index, {"term": {"organ": "replaced"}})) == sorted(doc_id for doc_id, _ in changed)
        brain = {doc_id for doc_id, doc in documents[:40]
                 if doc["files"]["specimen_from_organism_json"][0]["organ"]["text"] == "brain"}
        assert set(_ids(index, {"term": {ORGAN: "brain"}})) == brain


def test_the_background_merger_needs_no_refresh(tmp_path: Path, documents: list[Any]) -> None:
    database = tmp_path / "search" / f"{REPLICA}.sqlite3"
    with open_search_index(f"sqlite://{tmp_path}/search", merge_threshold=16) as index:
        for doc_id, doc in documents:
            index.index(REPLICA, doc_id, doc)
        # the last few go once writes have paused; the timeout is a hang guard only
        poll_until(lambda: _table_count(database, "pending") == 0, "the background merger to take every "
                   "pending document", timeout=120)
        assert _table_count(database, "segments") >= 1
        assert len(_ids(index, {"match_all": {}})) == len(documents)


def test_parallel_builds_type_new_fields_in_document_order(tmp_path: Path) -> None:
    """Chunks are built in separate processes; a field first seen in an earlier chunk keeps the
    type its first value gave it, even if a later chunk saw only other kinds of value."""
    docs = [(f"d{n}.1", {"uuid": f"d{n}", **({"x": 5} if n == 50 else {"x": "abc"} if n >= 150 else {})})
            for n in range(300)]
    with open_search_index(f"sqlite://{tmp_path}/search", merge_threshold=10 ** 6,
                           merge_in_background=False) as index:
        index.index_many(REPLICA, docs)
        pending = _ids(index, {"exists": {"field": "x"}})
        index.refresh(REPLICA)
        assert _ids(index, {"exists": {"field": "x"}}) == pending == ["d50.1"]
        assert _ids(index, {"term": {"x": 5}}) == ["d50.1"]


def test_indexes_in_the_old_layout_are_rebuilt(tmp_path: Path, documents: list[Any]) -> None:
    database = tmp_path / "search" / f"{REPLICA}.sqlite3"
    with open_search_index(f"sqlite://{tmp_path}/search", merge_in_background=False) as index:
        index.index_many(REPLICA, documents)
        index.refresh(REPLICA)
    conn = sqlite3.connect(database)
    conn.executescript("DROP TABLE postings; DROP TABLE segments; DROP TABLE deleted; "
                       "CREATE TABLE postings (field INTEGER NOT NULL, value NOT NULL, doc INTEGER NOT NULL, "
                       "positions, PRIMARY KEY (field, value, doc)) WITHOUT ROWID;")
    conn.close()
    with open_search_index(f"sqlite://{tmp_path}/search") as index:
        brain = sum(doc["files"]["specimen_from_organism_json"][0]["organ"]["text"] == "brain" for _, doc in documents)
        assert len(_ids(index, {"term": {ORGAN: "brain"}})) == brain  # pending meanwhile, still found
        index.refresh(REPLICA)
        assert _table_count(database, "pending") == 0
        assert len(_ids(index, {"term": {ORGAN: "brain"}})) == brain


@pytest.mark.parametrize("background", [False, True])
def test_tokens_stored_as_keywords_behave_as_tokens(tmp_path: Path, background: bool) -> None:
    """A one-word value is stored once, as a keyword: `.text` queries must still see it as a token,
    and never see a keyword that is not a token."""
    docs = [("a.1", {"uuid": "a", "sha": "ABC123", "tags": ["blood", "liver cell"], "name": "homo sapiens"}),
            ("b.1", {"uuid": "b", "sha": "abc124", "tags": ["liver", "blood"], "name": "homo"})]
    with open_search_index(f"sqlite://{tmp_path}/search", merge_threshold=1,
                           merge_in_background=background) as index:
        index.index_many(REPLICA, docs)
        index.refresh(REPLICA)
        assert _ids(index, {"match": {"sha.text": "abc123"}}) == ["a.1"]
        assert _ids(index, {"prefix": {"sha.text": "abc12"}}) == ["b.1", "a.1"]
        assert _ids(index, {"wildcard": {"sha.text": "*124"}}) == ["b.1"]
        assert _ids(index, {"range": {"sha.text": {"gte": "abc123", "lt": "abc124"}}}) == ["a.1"]
        assert _ids(index, {"match_phrase": {"tags.text": "blood liver"}}) == []  # another value of the field
        assert _ids(index, {"match_phrase": {"tags.text": "liver cell"}}) == ["a.1"]
        assert _ids(index, {"match_phrase": {"name.text": "homo sapiens"}}) == ["a.1"]
        assert _ids(index, {"term": {"name.text": "homo sapiens"}}) == []  # a keyword, not a token
        assert _ids(index, {"prefix": {"name.text": "homo s"}}) == []
        assert _ids(index, {"term": {"name.text": "homo"}}) == ["b.1", "a.1"]
        assert _ids(index, {"match": {"tags.text": "blood"}}) == ["b.1", "a.1"]


def test_segments_without_word_marks_still_read_and_merge(tmp_path: Path) -> None:
    """Segments written before one-word values were marked list such a value twice: under its keyword
    (positions NULL) and as a `.text` token. They answer the same and merge with marked ones."""
    database = tmp_path / "search" / f"{REPLICA}.sqlite3"
    with open_search_index(f"sqlite://{tmp_path}/search", merge_threshold=1, segment_fanout=2,
                           merge_in_background=False) as index:
        index.index(REPLICA, "a.1", {"uuid": "a", "sha": "ABC123"})
        conn = sqlite3.connect(database)
        with conn:  # rewrite the first segment as the earlier version wrote it
            conn.execute("INSERT INTO postings SELECT seg, (SELECT id FROM fields WHERE name = f.name || '.text'), "
                         "value, docs, '0' FROM postings JOIN fields AS f ON f.id = postings.field "
                         "WHERE positions = ''")
            assert conn.execute("UPDATE postings SET positions = NULL WHERE positions = ''").rowcount == 1
        assert _ids(index, {"term": {"sha.text": "abc123"}}) == ["a.1"]
        index.index(REPLICA, "b.1", {"uuid": "b", "sha": "abc123"})
        index.refresh(REPLICA)
        assert _table_count(database, "segments") == 1
        marks = conn.execute("SELECT positions FROM postings JOIN fields ON fields.id = postings.field "
                             "WHERE fields.name = 'sha'").fetchall()
        conn.close()
        assert marks == [("",)]
        assert _ids(index, {"term": {"sha.text": "abc123"}}) == ["b.1", "a.1"]
        assert _ids(index, {"match_phrase": {"sha.text": {"query": "abc123 abc123", "slop": 100}}}) == []
        assert _ids(index, {"term": {"sha": "ABC123"}}) == ["b.1", "a.1"]


def test_merged_word_marks_stay_marks(tmp_path: Path) -> None:
    database = tmp_path / "search" / f"{REPLICA}.sqlite3"
    with open_search_index(f"sqlite://{tmp_path}/search", merge_threshold=1, segment_fanout=2,
                           merge_in_background=False) as index:
        for doc_id, tags in [("a.1", ["red fox"]), ("b.1", "fox"), ("c.1", ["fox", "den"]), ("d.1", "Fox")]:
            index.index(REPLICA, doc_id, {"uuid": doc_id[0], "tags": tags})
        index.refresh(REPLICA)
        assert _table_count(database, "segments") == 1
        assert _ids(index, {"match_phrase": {"tags.text": "red fox"}}) == ["a.1"]
        assert _ids(index, {"match": {"tags.text": "fox"}}) == ["d.1", "c.1", "b.1", "a.1"]
        conn = sqlite3.connect(database)
        marks = conn.execute("SELECT value, positions FROM postings JOIN fields ON fields.id = postings.field "
                             "WHERE fields.name = 'tags' ORDER BY value").fetchall()
        conn.close()
        assert marks == [("den", ""), ("fox", ""), ("red fox", None)]


def test_two_indexes_on_one_directory_share_it(tmp_path: Path, documents: list[Any]) -> None:
    """As several server processes do: each has its merger; the lock files let one merge at a time."""
    first = open_search_index(f"sqlite://{tmp_path}/search", merge_threshold=8)
    second = open_search_index(f"sqlite://{tmp_path}/search", merge_threshold=8)
    try:
        writers = [threading.Thread(target=index.index_many, args=(REPLICA, documents[n::2]))
                   for n, index in enumerate((first, second))]
        for thread in writers:
            thread.start()
        for thread in writers:
            thread.join()
        first.refresh(REPLICA)
        second.refresh(REPLICA)
        liver = sum(doc["files"]["specimen_from_organism_json"][0]["organ"]["text"] == "liver" for _, doc in documents)
        for index in (first, second):
            assert index.search(REPLICA, {"query": {"match_all": {}}}, size=0).total == len(documents)
            assert len(_ids(index, {"term": {ORGAN: "liver"}})) == liver
        assert _table_count(tmp_path / "search" / f"{REPLICA}.sqlite3", "pending") == 0
    finally:
        started = time.monotonic()
        first.close()
        second.close()
        assert time.monotonic() - started < 60  # a hang guard: closing stops the merger without draining


# values whose tokens are tricky: one word or several, case, joiners, non-ASCII (the Kelvin sign
# lower-cases to an ASCII "k"), underscores, empty
_VALUES = ["fox", "Fox", "red fox", "red", "abc-123", "ABC123", "café", "Café au lait", "\u212a", "k", "owl",
           "black cat", "cat", "3.14", "u.s.a", "U.S.A", "x_y", "___", "", "owl owl", "big red fox", "Kelvin \u212a",
           "straße", "e.coli", "E. coli"]
_TOKENS = ["fox", "red", "abc", "123", "abc123", "café", "k", "owl", "cat", "black", "3.14", "u.s.a", "x_y", "big",
           "kelvin", "straße", "e.coli", "e", "coli", "au"]


def _token_queries(rng: random.Random, field: str) -> list[dict[str, Any]]:
    queries: list[dict[str, Any]] = []
    for token in _TOKENS:
        queries += [{"term": {field: token}}, {"prefix": {field: token[:2]}},
                    {"term": {field: {"value": token.upper(), "case_insensitive": True}}}]
    queries += [{"match_phrase": {field: f"{a} {b}"}} for a, b in itertools.product(_TOKENS[:10], repeat=2)]
    for _ in range(60):
        phrase = " ".join(rng.choice(_TOKENS) for _ in range(rng.choice([2, 3])))
        queries.append({"match_phrase": {field: {"query": phrase, "slop": rng.choice([0, 2, 99, 100, 101, 300])}}})
    return queries + [{"wildcard": {field: "*o*"}}, {"range": {field: {"gte": "b", "lt": "d"}}},
                      {"exists": {"field": field}}, {"match": {field: {"query": "red fox", "operator": "and"}}}]


def test_segments_answer_like_the_document_matcher(tmp_path: Path) -> None:
    """Segments store tokens in two places (`.text` rows, and keywords that are one word); every
    token query must answer as testing each analysed document does (pending documents are)."""
    rng = random.Random(7)
    docs = []
    for number in range(400):
        values = [rng.choice(_VALUES) for _ in range(rng.choice([1, 1, 2, 3, 4]))]
        docs.append((f"d{number:03}.1", {"uuid": f"d{number:03}", "t": values[0] if len(values) == 1 else values,
                                          "o": {"s": rng.choice(_VALUES)}}))
    with open_search_index(f"sqlite://{tmp_path}/segments", merge_threshold=1, segment_fanout=3,
                           merge_in_background=False) as segments, \
            open_search_index(f"sqlite://{tmp_path}/pending", merge_threshold=10 ** 6,
                              merge_in_background=False) as pending:
        for start in range(0, len(docs), 37):
            segments.index_many(REPLICA, docs[start:start + 37])
        segments.refresh(REPLICA)
        pending.index_many(REPLICA, docs)
        for query in _token_queries(rng, "t.text") + _token_queries(rng, "o.s.text"):
            assert sorted(_ids(segments, query)) == sorted(_ids(pending, query)), query
