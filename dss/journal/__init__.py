"""The events journal of one replica: every bundle CREATE, TOMBSTONE and DELETE, replayable exactly.

Everything lives in the replica's own blob store, through the BlobStore port only (local disk, S3, GCS
alike; the serverless deployment runs the same code):

    events/pending/<uuid>.<version>.<TYPE>    an event recorded but not yet compacted (JSON: event_id,
                                              event_type, recorded, document)
    events/journals/<seq>                     journal manifest number <seq> (12 digits), write-once
    events/streams/<seq>.<nonce>              the journal's documents, concatenated (newline-separated)
    events/index/<uuid>.<version>.<TYPE>      where a compacted event's document is (journal, offset, size)
    events/rolled/<seq>                       marker: journal <seq>'s index entries are written and its
                                              pending events removed

**Order.** An event's `timestamp` is the moment the journal accepted it (DSS_VERSION format), not the
bundle's version: versions are chosen by clients and may lie anywhere in the past, so ordering by them
would force rewriting journals already read. The replay order is the key (timestamp, event_id,
event_type); journal k holds only keys greater than every key of journal k-1, so reading the journals
in sequence and each journal in order is the replay, and it never changes once read.

**Late events.** Recorders take their `recorded` time before writing, so a slow recorder may write an
event older than a journal compacted meanwhile. The compactor never drops or reorders it: an event
whose `recorded` time is not after the last journal's `to_date` is dated one microsecond after it.
`timestamp` is therefore "accepted by the journal", never earlier than anything already compacted.

**Exactly once.** Compaction commits journal `<seq>` with a conditional create, so of two compactors
(several server processes, or a daemon and an operator) exactly one wins each sequence number and the
other starts over. Before choosing events, a compactor finishes ("rolls forward") the latest journal:
it writes the index entries of its events and only then deletes their pending records. By induction
every journal before the next one is rolled forward, so a pending event that already has an index
entry is a duplicate (a recorder retried after its event was compacted) and is discarded. A crash at
any step leaves either a pending record or an index entry for every recorded event.
"""
from __future__ import annotations

import datetime
import json
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dss.errors import IllegalToken, IllegalVersion, InvalidRequest
from dss.identifiers import VERSION_FORMAT, new_version, validate_version
from dss.storage.blobstore import BlobAlreadyExists, BlobNotFound, BlobStore

__all__ = ["EventJournal", "EVENT_TYPES", "Journal", "JournalEvent", "DEFAULT_JOURNAL_SIZE"]

logger = logging.getLogger(__name__)

EVENT_TYPES = ("CREATE", "TOMBSTONE", "DELETE")
DEFAULT_JOURNAL_SIZE = 1000
PENDING, JOURNALS, STREAMS, INDEX, ROLLED = (
    "events/pending/", "events/journals/", "events/streams/", "events/index/", "events/rolled/")
_READERS = 8  # threads reading pending records


def _seq_key(seq: int) -> str:
    return f"{JOURNALS}{seq:012d}"


def _after(timestamp: str) -> str:
    """The DSS_VERSION one microsecond after `timestamp`."""
    moment = datetime.datetime.strptime(timestamp, VERSION_FORMAT) + datetime.timedelta(microseconds=1)
    return moment.strftime(VERSION_FORMAT)


@dataclass(frozen=True)
class JournalEvent:
    event_id: str  # <uuid>.<version>
    event_type: str
    timestamp: str
    offset: int
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {"event_id": self.event_id, "event_type": self.event_type, "timestamp": self.timestamp,
                "offset": self.offset, "size": self.size}


@dataclass(frozen=True)
class Journal:
    seq: int
    from_date: str
    to_date: str
    stream_key: str
    events: tuple[JournalEvent, ...]

    @property
    def journal_id(self) -> str:
        return f"{self.seq:012d}"

    def to_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "journal_id": self.journal_id, "from_date": self.from_date, "to_date": self.to_date,
                "size": len(self.events), "stream_key": self.stream_key,
                "events": [e.as_dict() for e in self.events]}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Journal:
        return cls(doc["seq"], doc["from_date"], doc["to_date"], doc["stream_key"],
                   tuple(JournalEvent(**e) for e in doc["events"]))


@dataclass(frozen=True)
class _Pending:
    key: str
    event_id: str
    event_type: str
    recorded: str
    document: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.event_id}.{self.event_type}"


class EventJournal:
    """The journal of one replica's store; safe to use from several threads and processes at once."""

    def __init__(self, store: BlobStore, journal_size: int = DEFAULT_JOURNAL_SIZE) -> None:
        self.store = store
        self.journal_size = max(1, journal_size)
        self._cache: OrderedDict[int, Journal] = OrderedDict()  # journals are write-once
        self._lock = threading.Lock()
        self._latest_seen = 0

    # --- recording --------------------------------------------------------------------------
    def record(self, event_type: str, uuid: str, version: str, document: dict[str, Any]) -> bool:
        """Record one event (idempotent); False if it was already recorded or compacted."""
        if event_type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {event_type!r}")
        name = f"{uuid}.{version}.{event_type}"
        if self.store.exists(INDEX + name):
            return False
        body = {"event_id": f"{uuid}.{version}", "event_type": event_type, "recorded": new_version(),
                "document": {**document, "event_type": event_type, "bundle_info": {"uuid": uuid, "version": version}}}
        try:
            self.store.put_json(PENDING + name, body, if_absent=True)
        except BlobAlreadyExists:
            return False
        return True

    # --- compaction -------------------------------------------------------------------------
    def compact(self, *, flush_before: str | None = None) -> int:
        """Write journals of `journal_size` events while enough are pending, then one journal of the rest
        if the oldest of them was recorded before `flush_before`; returns the number of journals written."""
        written = 0
        while True:
            last = self.latest()
            if last is not None:
                self._roll_forward(last)
            pending = self._pending()
            while self._ready(pending, flush_before):
                batch, pending = pending[:self.journal_size], pending[self.journal_size:]
                journal = self._commit(last, batch)
                if journal is None:
                    break  # another compactor took this sequence number: start over from what it wrote
                self._roll_forward(journal)
                last, written = journal, written + 1
            else:
                return written

    def _ready(self, pending: list[_Pending], flush_before: str | None) -> bool:
        if len(pending) >= self.journal_size:
            return True
        return bool(pending) and flush_before is not None and pending[0].recorded < flush_before

    def _pending(self) -> list[_Pending]:
        """Pending events not compacted yet, oldest first; duplicates of compacted ones are removed."""
        keys = list(self.store.list(PENDING))
        with ThreadPoolExecutor(_READERS, thread_name_prefix="dss-journal") as pool:
            found = [p for p in pool.map(self._read_pending, keys) if p is not None]
        found.sort(key=lambda p: (p.recorded, p.event_id, EVENT_TYPES.index(p.event_type)))
        return found

    def _read_pending(self, key: str) -> _Pending | None:
        name = key[len(PENDING):]
        if self.store.exists(INDEX + name):
            self.store.delete(key)  # recorded again after it was compacted: a duplicate
            return None
        try:
            body = self.store.get_json(key)
        except BlobNotFound:
            return None  # compacted meanwhile
        return _Pending(key, body["event_id"], body["event_type"], body["recorded"], body["document"])

    def _commit(self, last: Journal | None, batch: list[_Pending]) -> Journal | None:
        """Write the journal following `last` from `batch`; None if another compactor wrote it first."""
        floor = last.to_date if last is not None else None
        dated = [((p.recorded if floor is None or p.recorded > floor else _after(floor)), p) for p in batch]
        dated.sort(key=lambda item: (item[0], item[1].event_id, EVENT_TYPES.index(item[1].event_type)))
        seq = last.seq + 1 if last is not None else 1
        stream_key = f"{STREAMS}{seq:012d}.{secrets.token_hex(8)}"
        chunks, events, offset = [], [], 0
        for timestamp, pending in dated:
            data = json.dumps(pending.document, separators=(",", ":")).encode()
            events.append(JournalEvent(pending.event_id, pending.event_type, timestamp, offset, len(data)))
            chunks.append(data + b"\n")
            offset += len(data) + 1
        self.store.put(stream_key, b"".join(chunks), content_type="application/x-ndjson")
        journal = Journal(seq, events[0].timestamp, events[-1].timestamp, stream_key, tuple(events))
        try:
            self.store.put_json(_seq_key(seq), journal.to_json(), if_absent=True)
        except BlobAlreadyExists:
            self.store.delete(stream_key)
            logger.info("Journal %d of %s was written by another compactor", seq, self.store.url)
            return None
        self._remember(journal)
        logger.info("Compacted %d events into journal %d of %s", len(events), seq, self.store.url)
        return journal

    def _roll_forward(self, journal: Journal) -> None:
        """Index entries first, then the pending records go (see the module docstring)."""
        marker = f"{ROLLED}{journal.seq:012d}"
        if self.store.exists(marker):
            return

        def settle(event: JournalEvent) -> None:
            name = f"{event.event_id}.{event.event_type}"
            self.store.put_json(INDEX + name, {"journal": journal.seq, "stream_key": journal.stream_key,
                                               "offset": event.offset, "size": event.size,
                                               "timestamp": event.timestamp})
            self.store.delete(PENDING + name)

        with ThreadPoolExecutor(_READERS, thread_name_prefix="dss-journal") as pool:
            list(pool.map(settle, journal.events))
        self.store.put(marker, b"")

    # --- reading ----------------------------------------------------------------------------
    def _journal_keys(self) -> list[str]:
        return [key for key in self.store.list(JOURNALS) if key[len(JOURNALS):].isdigit()]

    def latest(self) -> Journal | None:
        """The last journal; only keys after the last one seen are listed (journals are never removed)."""
        hint = self._latest_seen
        after = _seq_key(hint) if hint else None
        keys = [key for key in self.store.list(JOURNALS, start_after=after) if key[len(JOURNALS):].isdigit()]
        seq = int(keys[-1][len(JOURNALS):]) if keys else hint
        if not seq:
            return None
        self._latest_seen = max(self._latest_seen, seq)
        return self.journal(seq)

    def journal(self, seq: int) -> Journal:
        with self._lock:
            if seq in self._cache:
                self._cache.move_to_end(seq)
                return self._cache[seq]
        journal = Journal.from_json(self.store.get_json(_seq_key(seq)))
        self._remember(journal)
        return journal

    def _remember(self, journal: Journal) -> None:
        with self._lock:
            self._cache[journal.seq] = journal
            while len(self._cache) > 256:
                self._cache.popitem(last=False)

    def journals(self, from_date: str | None = None, to_date: str | None = None) -> Iterator[Journal]:
        """Journals overlapping [from_date, to_date], in order (a binary search finds the first)."""
        seqs = [int(key[len(JOURNALS):]) for key in self._journal_keys()]
        low, high = 0, len(seqs)
        while from_date is not None and low < high:  # the first journal ending at or after from_date
            middle = (low + high) // 2
            if self.journal(seqs[middle]).to_date < from_date:
                low = middle + 1
            else:
                high = middle
        for seq in seqs[low:]:
            journal = self.journal(seq)
            if to_date is not None and journal.from_date > to_date:
                return
            yield journal

    def page(self, from_date: str | None, to_date: str | None, per_page: int,
             token: str | None = None) -> tuple[list[Journal], str | None]:
        """Up to `per_page` journals overlapping the range from `token` (else `from_date`), and the next
        page's token (the from_date of the journal after them) or None."""
        if from_date is not None and to_date is not None and from_date > to_date:
            raise InvalidRequest("from_date must not be after to_date", code="bad_request")
        if token is not None:
            try:
                from_date = validate_version(token)
            except IllegalVersion:
                raise IllegalToken("token should be the from_date of a journal, as in a Link header") from None
        found: list[Journal] = []
        for journal in self.journals(from_date, to_date):
            if len(found) == per_page:
                return found, journal.from_date
            found.append(journal)
        return found, None

    def document(self, uuid: str, version: str) -> dict[str, Any] | None:
        """The latest event document of a bundle version (DELETE, else TOMBSTONE, else CREATE), or None."""
        for event_type in reversed(EVENT_TYPES):
            name = f"{uuid}.{version}.{event_type}"
            try:
                where = self.store.get_json(INDEX + name)
            except BlobNotFound:
                try:
                    return self.store.get_json(PENDING + name)["document"]
                except BlobNotFound:
                    continue
            with self.store.open(where["stream_key"], where["offset"], where["offset"] + where["size"]) as stream:
                return json.loads(stream.read())
        return None

    def stream_url(self, journal: Journal, expires_in: int) -> str:
        return self.store.signed_url(journal.stream_key, expires_in)
