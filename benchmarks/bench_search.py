#!/usr/bin/env python
"""Benchmark of the embedded search engine: indexing, search latency, percolation.

Each figure is printed with its target and with a baseline measured in the same run on the same
documents, so that the numbers can be read on any machine:

* indexing: bundles per second through `index_many` (batches of 100, the bulk path) and through
  `index` (one bundle per call, the path of the event handler), over the wall time until all of them
  are merged, reading the bundles from a JSON-lines file; baseline: reading the same file and storing
  the documents as plain JSON rows in SQLite without any index;
* search: p50 and p99 latency of term, bool (README-style) and range queries, 100 hits per page, over
  the whole corpus; baseline: a plain SQLite primary-key lookup of one document;
* percolation: one new bundle against every subscription; baseline: evaluating every subscription's
  compiled predicate on the bundle, without the anchor pre-filter;
* JMESPath matching: one new bundle against as many JMESPath subscriptions (`ExpressionSet`, each picking
  one project); baseline: `jmespath.search` of every expression in turn.

Then the same figures on a real OpenSearch 2.19 node and a real Elasticsearch 7.10 node, one after the
other (started from `make opensearch`'s and `make elasticsearch7`'s installs, 1 GiB heap, full JIT),
through the cloud backend, on the same corpus in the same run, each printed side by side with the
embedded engine's as ratios (embedded speed over the engine's: >= 1 means the embedded engine is at
least as fast). Their indexing is bulk requests of the same 100 bundles, timed until searchable
(refresh); subscriptions are stored there in bulk too (storing is not what is measured).
`--engines opensearch` runs one of them, `--engines ''` none.

Targets are goals, not assertions: the script exits non-zero only if something crashes.

    .venv/bin/python benchmarks/bench_search.py            # 100,000 bundles, 10,000 subscriptions
    .venv/bin/python benchmarks/bench_search.py --quick    # 5,000 bundles, 2,000 subscriptions
    .venv/bin/python benchmarks/bench_search.py --dir /tmp/bench   # keep (and reuse) the index
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dss.index import open_search_index  # noqa: E402
from dss.index.embedded import EmbeddedSearchIndex  # noqa: E402
from dss.index.mapping import FieldMap, analyse  # noqa: E402
from dss.index.matcher import compile_predicate  # noqa: E402
from dss.index.query import QueryParser  # noqa: E402
from dss.subscriptions.matching import ExpressionSet  # noqa: E402
from tests.fixtures.hca_corpus import ORGANS, generate_documents  # noqa: E402
from tests.infra.opensearch import ENGINES, Engine, start_node  # noqa: E402

REPLICA = "aws"
BATCH = 100
ORGAN = "files.specimen_from_organism_json.organ.text"
AGE = "files.donor_organism_json.age_in_years"
SUBMITTED = "files.donor_organism_json.provenance.submission_date"


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, figure: str, value: float, unit: str, target: str, ok: bool | None, baseline: str,
            ratio: float | None) -> None:
        verdict = "-" if ok is None else "yes" if ok else "NO"
        ratio_text = "-" if ratio is None else f"{ratio:,.2f}x"
        self.rows.append((figure, f"{value:,.1f} {unit}", target, verdict, baseline, ratio_text))
        print(" | ".join(self.rows[-1]), flush=True)

    def print(self) -> None:
        header = ("figure", "measured", "target", "met", "baseline (same run)", "ratio to baseline")
        widths = [max(len(row[i]) for row in [header, *self.rows]) for i in range(len(header))]
        print()
        for row in [header, tuple("-" * width for width in widths), *self.rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def timed(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


# ------------------------------------------------------------------------------------------ indexing

def chunks(docs: Iterator[tuple[str, dict[str, Any]]], size: int) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    while chunk := list(itertools.islice(docs, size)):
        yield chunk


def write_corpus(path: Path, count: int) -> None:
    """The generated bundles as JSON lines, so that timing covers indexing, not generating."""
    with path.open("w") as corpus:
        for doc_id, doc in generate_documents(count, seed=42):
            corpus.write(json.dumps([doc_id, doc]) + "\n")


def read_corpus(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open() as corpus:
        for line in corpus:
            doc_id, doc = json.loads(line)
            yield doc_id, doc


def index_corpus(index: EmbeddedSearchIndex, corpus: Path, count: int, singles: int) -> tuple[float, float, float]:
    """Index `count` bundles read from `corpus`: all but `singles` with `index_many`, the rest with one
    `index` call each. Each rate is documents over the wall time until every one of them is merged
    (`refresh`), since merging runs in the background. Returns (bulk/s, single/s, baseline/s)."""
    docs = read_corpus(corpus)
    started = time.perf_counter()
    bulk = 0
    for chunk in chunks(itertools.islice(docs, count - singles), BATCH):
        index.index_many(REPLICA, chunk)
        bulk += len(chunk)
        if bulk % 10000 == 0:
            print(f"  … {bulk:,} bundles indexed ({bulk / (time.perf_counter() - started):,.0f}/s)", flush=True)
    index.refresh(REPLICA)
    bulk_rate = bulk / (time.perf_counter() - started)
    started = time.perf_counter()
    for doc_id, doc in docs:
        index.index(REPLICA, doc_id, doc)
    index.refresh(REPLICA)
    single_rate = singles / (time.perf_counter() - started)
    baseline = _PlainStore()
    started = time.perf_counter()
    for chunk in chunks(read_corpus(corpus), BATCH):
        baseline.store(chunk)
    baseline_rate = count / (time.perf_counter() - started)
    baseline.close()
    return bulk_rate, single_rate, baseline_rate


class _PlainStore:
    """The baseline: the same documents as JSON rows in SQLite, keyed by id, nothing indexed."""

    def __init__(self) -> None:
        self.directory = tempfile.TemporaryDirectory()
        self.conn = sqlite3.connect(f"{self.directory.name}/plain.sqlite3", isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("CREATE TABLE docs (doc_id TEXT PRIMARY KEY, source TEXT NOT NULL)")

    def store(self, chunk: list[tuple[str, dict[str, Any]]]) -> None:
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT OR REPLACE INTO docs VALUES (?, ?)",
                              [(doc_id, json.dumps(doc)) for doc_id, doc in chunk])
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()
        self.directory.cleanup()


# -------------------------------------------------------------------------------------------- search

def search_queries(rng: random.Random) -> dict[str, Callable[[], dict[str, Any]]]:
    organs = list(ORGANS)

    def term() -> dict[str, Any]:
        return {"query": {"term": {ORGAN: rng.choice(organs)}}}

    def boolean() -> dict[str, Any]:
        return {"query": {"bool": {"must": [
            {"match": {"files.donor_organism_json.medical_history.smoking_history": rng.choice(("yes", "no"))}},
            {"match": {ORGAN: rng.choice(organs)}},
            {"match": {"files.donor_organism_json.biomaterial_core.ncbi_taxon_id": 9606}}]}}}

    def range_() -> dict[str, Any]:
        if rng.random() < 0.5:
            low = rng.randint(0, 80)
            return {"query": {"range": {AGE: {"gte": low, "lt": low + 10}}}}
        year = rng.randint(2016, 2020)
        return {"query": {"range": {SUBMITTED: {"gte": f"{year}-01-01", "lte": f"{year}-03-31"}}}}

    return {"term": term, "bool": boolean, "range": range_}


def search_latencies(index: Any, rounds: int) -> dict[str, tuple[float, float]]:
    """(p50, p99) in ms of each query kind, 100 hits per page, the same queries for every backend."""
    rng = random.Random(5)
    figures = {}
    for name, make in search_queries(rng).items():
        for _ in range(3):  # warm up
            index.search(REPLICA, make(), size=100, source=False)
        samples = []
        for _ in range(rounds):
            query = make()
            samples.append(timed(lambda query=query: index.search(REPLICA, query, size=100, source=False)) * 1000)
        figures[name] = (percentile(samples, 0.5), percentile(samples, 0.99))
    return figures


def measure_searches(index: EmbeddedSearchIndex, directory: Path, rounds: int, table: Table) -> None:
    baseline = _primary_key_latency(directory, rounds)
    for name, (p50, p99) in search_latencies(index, rounds).items():
        table.add(f"search {name} p50", p50, "ms", "<= 20 ms", p50 <= 20,
                  f"SQLite primary-key lookup p50 {baseline:.3f} ms", p50 / baseline)
        table.add(f"search {name} p99", p99, "ms", "-", None, "", None)


def _primary_key_latency(directory: Path, rounds: int) -> float:
    conn = sqlite3.connect(str(directory / f"{REPLICA}.sqlite3"))
    ids = [row[0] for row in conn.execute("SELECT doc_id FROM docs ORDER BY random() LIMIT ?", (rounds,))]
    samples = [timed(lambda doc_id=doc_id: conn.execute("SELECT source FROM docs WHERE doc_id = ?",
                                                        (doc_id,)).fetchone()) * 1000 for doc_id in ids]
    conn.close()
    return percentile(samples, 0.5)


# --------------------------------------------------------------------------------------- percolation

def subscription_queries(count: int, rng: random.Random) -> Iterator[dict[str, Any]]:
    organs = list(ORGANS)
    shapes: list[Callable[[], dict[str, Any]]] = [
        lambda: {"bool": {"must": [{"term": {ORGAN: rng.choice(organs)}},
                                   {"range": {AGE: {"gte": rng.randint(0, 80)}}}]}},
        lambda: {"match": {"files.donor_organism_json.genus_species.text": rng.choice(("Homo sapiens",
                                                                                      "Mus musculus"))}},
        lambda: {"bool": {"must": [{"exists": {"field": "files.donor_organism_json.medical_history"}},
                                   {"term": {"files.donor_organism_json.sex": rng.choice(("female", "male"))}}]}},
        lambda: {"query_string": {"query": f"{ORGAN}:{rng.choice(organs).split()[0]} AND "
                                           f"files.library_preparation_protocol_json.end_bias:\"3 prime tag\""}},
        lambda: {"range": {"files.cell_suspension_json.total_estimated_cells": {"gte": rng.choice((1000, 50000))}}},
        lambda: {"term": {"files.project_json.project_core.project_short_name": f"liveratlas{rng.randint(0, 11)}"}},
    ]
    for number in range(count):
        yield {"query": shapes[number % len(shapes)]()}


def measure_percolation(index: EmbeddedSearchIndex, count: int, probes: int, table: Table) -> float:
    rng = random.Random(9)
    queries = list(subscription_queries(count, rng))
    started = time.perf_counter()
    for number, query in enumerate(queries):
        index.add_subscription_query(REPLICA, f"sub-{number}", query)
    print(f"  … {count:,} subscriptions stored in {time.perf_counter() - started:.1f} s", flush=True)
    new_docs = [doc for _, doc in generate_documents(probes, seed=4242)]
    index.percolate(REPLICA, new_docs[0])  # loads and compiles the subscriptions
    samples = [timed(lambda doc=doc: index.percolate(REPLICA, doc)) * 1000 for doc in new_docs]
    brute = _brute_force_percolation(queries, new_docs)
    p50 = percentile(samples, 0.5)
    table.add(f"percolate 1 bundle vs {count:,} subs p50", p50, "ms", "<= 50 ms", p50 <= 50,
              f"every predicate, no pre-filter: {brute:.1f} ms", p50 / brute)
    table.add(f"percolate 1 bundle vs {count:,} subs p99", percentile(samples, 0.99), "ms", "-", None, "", None)
    return p50


def measure_jmespath(count: int, probes: int, table: Table) -> None:
    import jmespath

    template = "files.project_json[0].project_core.project_short_name == 'project-{}'"
    expressions = ExpressionSet((n, template.format(n)) for n in range(count))
    docs = [dict(doc, files=dict(doc["files"], project_json=[{"project_core": {"project_short_name":
            f"project-{n}"}}])) for n, (_, doc) in enumerate(generate_documents(probes, seed=77))]
    samples = [timed(lambda doc=doc: expressions.matching(doc)) * 1000 for doc in docs]
    compiled = [jmespath.compile(template.format(n)) for n in range(count)]
    naive = [timed(lambda doc=doc: [e.search(doc) for e in compiled]) * 1000 for doc in docs[:5]]
    p50 = percentile(samples, 0.5)
    table.add(f"JMESPath: 1 bundle vs {count:,} subs p50", p50, "ms", "<= 50 ms", p50 <= 50,
              f"every expression in turn: {percentile(naive, 0.5):.1f} ms", p50 / percentile(naive, 0.5))


def _brute_force_percolation(queries: list[dict[str, Any]], docs: list[dict[str, Any]]) -> float:
    fields = FieldMap()
    for doc in docs:
        for name, field_type in analyse(doc, fields).new_types.items():
            fields.add(name, field_type)
    predicates = [compile_predicate(QueryParser(fields).parse(query["query"])) for query in queries]
    samples = []
    for doc in docs:
        started = time.perf_counter()
        analysed = analyse(doc, fields)
        sum(1 for predicate in predicates if predicate(analysed))
        samples.append((time.perf_counter() - started) * 1000)
    return percentile(samples, 0.5)


# -------------------------------------------------------------------------------- side by side with OpenSearch

def measure_engine(engine: Engine, corpus: Path, bundles: int, rounds: int, subscriptions: int,
                   probes: int) -> dict[str, float]:
    """The same figures on a real node of `engine` through the cloud backend: bundles/s, and ms."""
    from opensearchpy import helpers

    from dss.index.elasticsearch import SUBSCRIPTION_PREFIX, ElasticsearchSearchIndex

    node = start_node(engine, heap="1g", quick_start=False)
    print(f"  … {engine.label} green after {node.startup_seconds:.1f} s", flush=True)
    figures: dict[str, float] = {}
    try:
        index = ElasticsearchSearchIndex.from_url(node.url, stage="bench", timeout=300)
        started = time.perf_counter()
        for chunk in chunks(read_corpus(corpus), BATCH):
            index.index_many(REPLICA, chunk)
        index.refresh(REPLICA)
        figures["indexing"] = bundles / (time.perf_counter() - started)
        print(f"  … {bundles:,} bundles indexed in {engine.name} ({figures['indexing']:,.0f}/s)", flush=True)
        for name, (p50, p99) in search_latencies(index, rounds).items():
            figures[f"search {name} p50"], figures[f"search {name} p99"] = p50, p99
        queries = list(subscription_queries(subscriptions, random.Random(9)))
        helpers.bulk(index._client, ({"_index": index.index_name(REPLICA), "_id": f"{SUBSCRIPTION_PREFIX}sub-{n}",
                                      "_source": {"query": query["query"]}} for n, query in enumerate(queries)),
                     refresh="true", chunk_size=500, request_timeout=300)
        new_docs = [doc for _, doc in generate_documents(probes, seed=4242)]
        index.percolate(REPLICA, new_docs[0])  # warm up
        samples = [timed(lambda doc=doc: index.percolate(REPLICA, doc)) * 1000 for doc in new_docs]
        figures["percolate p50"], figures["percolate p99"] = percentile(samples, 0.5), percentile(samples, 0.99)
        index.close()
    finally:
        node.stop()
    return figures


def print_side_by_side(embedded: dict[str, float], engine: Engine, theirs: dict[str, float], bundles: int,
                       subscriptions: int) -> None:
    """Each figure on both engines; the ratio is embedded speed over the engine's (>= 1: as fast or faster)."""
    header = ("figure", "embedded", engine.label, f"embedded/{engine.name} speed", "embedded at least as fast")
    rows = []
    for name, value in theirs.items():
        if name not in embedded:
            continue
        mine = embedded[name]
        if name == "indexing":
            label, unit, ratio = f"indexing {bundles:,} bundles (bulk of {BATCH}, until searchable)", "bundles/s", \
                mine / value
        else:
            label = name.replace("percolate", f"percolate 1 bundle vs {subscriptions:,} subs")
            unit, ratio = "ms", value / mine
        rows.append((label, f"{mine:,.1f} {unit}", f"{value:,.1f} {unit}", f"{ratio:,.2f}x",
                     "yes" if ratio >= 1 else "NO"))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print()
    for row in [header, tuple("-" * width for width in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


# ----------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 bundles and 2,000 subscriptions")
    parser.add_argument("--bundles", type=int, help="bundles to index (default 100,000)")
    parser.add_argument("--subscriptions", type=int, help="subscriptions to percolate against (default 10,000)")
    parser.add_argument("--searches", type=int, default=200, help="searches per query kind (default 200)")
    # enough single writes to span several merges of full segments (8,192 bundles each), whose cost
    # a shorter window would either miss or take whole
    parser.add_argument("--singles", type=int, default=20_000, help="bundles indexed one per call (default 20,000)")
    parser.add_argument("--dir", type=Path, help="keep the index here; an existing one of the right size is reused")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"real engines to run side by side, comma-separated (default {','.join(ENGINES)}; "
                             "empty: none)")
    args = parser.parse_args(argv)
    engines = [ENGINES[key] for key in args.engines.split(",") if key]
    bundles = args.bundles or (5000 if args.quick else 100_000)
    subscriptions = args.subscriptions or (2000 if args.quick else 10_000)
    logging.basicConfig(level=logging.ERROR)  # the corpus has deliberately broken files; keep output clean

    with tempfile.TemporaryDirectory() as scratch:
        directory = args.dir or Path(scratch)
        table = Table()
        index = open_search_index(f"sqlite://{directory}", cache_mib=256)
        assert isinstance(index, EmbeddedSearchIndex)
        corpus = Path(scratch) / "corpus.jsonl"
        embedded: dict[str, float] = {}
        try:
            existing = index.search(REPLICA, {"query": {"match_all": {}}}, size=0).total
            if existing == bundles:
                print(f"reusing the {bundles:,} bundles indexed in {directory}")
            else:
                if existing:
                    raise SystemExit(f"{directory} holds {existing:,} bundles, not {bundles:,}: use another --dir")
                print(f"generating {bundles:,} bundles …", flush=True)
                write_corpus(corpus, bundles)
                print(f"indexing {bundles:,} bundles …", flush=True)
                bulk, single, plain = index_corpus(index, corpus, bundles, min(args.singles, bundles // 5))
                embedded["indexing"] = bulk
                table.add(f"index_many({BATCH}) throughput", bulk, "bundles/s", ">= 500/s", bulk >= 500,
                          f"plain JSON rows in SQLite: {plain:,.0f}/s", bulk / plain)
                table.add("index() one bundle per call", single, "bundles/s", ">= 500/s", single >= 500,
                          f"plain JSON rows in SQLite: {plain:,.0f}/s", single / plain)
            print(f"searching {bundles:,} bundles …", flush=True)
            measure_searches(index, directory, args.searches, table)
            for name, (p50, p99) in search_latencies(index, args.searches).items():
                embedded[f"search {name} p50"], embedded[f"search {name} p99"] = p50, p99
            print(f"percolating against {subscriptions:,} subscriptions …", flush=True)
            embedded["percolate p50"] = measure_percolation(index, subscriptions, 50, table)
            measure_jmespath(subscriptions, 50, table)
        finally:
            if args.dir is None:
                index.close()
            else:
                _drop_subscriptions(index, subscriptions)
                index.close()
        table.print()
        if engines and not corpus.exists():  # the embedded index was reused: the same documents again
            write_corpus(corpus, bundles)
        for engine in engines:
            print(f"\nthe same on {engine.label}: {bundles:,} bundles, {subscriptions:,} subscriptions …", flush=True)
            theirs = measure_engine(engine, corpus, bundles, args.searches, subscriptions, 50)
            print_side_by_side(embedded, engine, theirs, bundles, subscriptions)
    return 0


def _drop_subscriptions(index: EmbeddedSearchIndex, count: int) -> None:
    for number in range(count):
        index.remove_subscription_query(REPLICA, f"sub-{number}")


if __name__ == "__main__":
    sys.exit(main())
