"""Checking a replica's events journal against its bundles (`dss-ops.py journal verify`).

Replays every journal from the first and reports, as readable lines: journals out of order or
overlapping, an event seen twice, a stream slice that is not the event's document, and bundle versions
of the store with no CREATE event (compacted or pending). `missing` lists the bundle keys of the last,
which an operator can re-drive through the queue (`--repair`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from dss.identifiers import ObjectKey
from dss.journal import PENDING, EventJournal

__all__ = ["JournalReport", "verify_journal"]


@dataclass
class JournalReport:
    journals: int = 0
    events: int = 0
    problems: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # bundle keys with no CREATE event


def verify_journal(journal: EventJournal) -> JournalReport:
    report = JournalReport()
    store = journal.store
    seen: set[tuple[str, str]] = set()
    previous: tuple[str, str, str] | None = None
    for entry in journal.journals():
        report.journals += 1
        data = store.get(entry.stream_key)
        for event in entry.events:
            order = (event.timestamp, event.event_id, event.event_type)
            if previous is not None and order <= previous:
                report.problems.append(f"journal {entry.journal_id}: {event.event_id} out of order")
            if (event.event_id, event.event_type) in seen:
                report.problems.append(f"journal {entry.journal_id}: {event.event_type} {event.event_id} repeated")
            previous = order
            seen.add((event.event_id, event.event_type))
            report.events += 1
            try:
                document = json.loads(data[event.offset:event.offset + event.size])
                info = document["bundle_info"]
                ok = f"{info['uuid']}.{info['version']}" == event.event_id
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                report.problems.append(f"journal {entry.journal_id}: bad document for {event.event_id}")
    pending = {key[len(PENDING):] for key in store.list(PENDING)}
    for key in store.list("bundles/"):
        parsed = ObjectKey.parse(key)
        if parsed is None or parsed.dead or not parsed.version:
            continue
        event_id = f"{parsed.uuid}.{parsed.version}"
        if (event_id, "CREATE") not in seen and f"{event_id}.CREATE" not in pending:
            report.missing.append(key)
            report.problems.append(f"{key}: no CREATE event")
    return report
