"""Execution history for operators: `scripts/dss-ops.py workflows list` and `workflows show <id>`.

These read the executor's journal file directly, so they work while the server runs (SQLite WAL lets a
reader in beside the writer) and when it does not. `progress` turns the journal's Map and Parallel
records into counts, drawn as bars by `show`.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from dss.workflows.errors import ExecutionNotFound
from dss.workflows.journal import FAILED, RUNNING, SUCCEEDED, Journal

__all__ = ["progress", "list_executions", "show_execution", "add_cli", "cmd_list", "cmd_show"]


def _time(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(value: Any, width: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text if len(text) <= width else text[: width - 1] + "…"


def bar(done: int, total: int, width: int = 30) -> str:
    filled = width if total == 0 else width * done // total
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def progress(journal: Journal, execution_id: str) -> list[dict[str, Any]]:
    """One entry per Map or Parallel run: its state, scope, size and how many children ended how."""
    entries = []
    for event in journal.events(execution_id):
        if event.type not in ("MapStarted", "ParallelStarted"):
            continue
        prefix = event.detail["prefix"]
        total = event.detail.get("length", event.detail.get("branches", 0))
        children = [scope for scope in journal.scopes(execution_id, prefix) if scope.scope[len(prefix):].isdigit()]
        counts = {status: sum(1 for c in children if c.status == status) for status in (SUCCEEDED, FAILED, RUNNING)}
        entries.append({"state": event.state, "scope": event.scope or "/", "total": total,
                        "succeeded": counts[SUCCEEDED], "failed": counts[FAILED], "running": counts[RUNNING]})
    return entries


def list_executions(journal: Journal, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    return [record.summary() for record in journal.executions(status, limit)]


def show_execution(journal: Journal, execution_id: str) -> dict[str, Any]:
    record = journal.execution(execution_id)
    if record is None:
        raise ExecutionNotFound(execution_id)
    return {**record.summary(), "input": record.input, "output": record.output,
            "progress": progress(journal, execution_id),
            "events": [{"seq": e.seq, "at": e.at, "scope": e.scope, "type": e.type, "state": e.state,
                        "detail": e.detail} for e in journal.events(execution_id)]}


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Journal | None]:
    journal = Journal(path) if path.exists() else None
    try:
        yield journal
    finally:
        if journal is not None:
            journal.close()


def cmd_list(path: Path, *, status: str | None = None, limit: int = 50, as_json: bool = False,
             out: TextIO = sys.stdout) -> int:
    with _opened(path) as journal:
        executions = list_executions(journal, status, limit) if journal else []
    if as_json:
        print(json.dumps(executions, indent=2), file=out)
        return 0
    for e in executions:
        ended = e["stopped"] or datetime.datetime.now(datetime.UTC).timestamp()
        print(f"{e['id']:<36} {e['workflow']:<26} {e['status']:<9} {_time(e['started'])} "
              f"{ended - e['started']:8.1f}s {e['error'] or ''}", file=out)
    print(f"{len(executions)} execution(s).", file=sys.stderr)
    return 0


def cmd_show(path: Path, execution_id: str, *, as_json: bool = False, events: bool = True,
             out: TextIO = sys.stdout) -> int:
    try:
        with _opened(path) as journal:
            if journal is None:
                raise ExecutionNotFound(execution_id)
            shown = show_execution(journal, execution_id)
    except ExecutionNotFound:
        print(f"no workflow execution {execution_id!r}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(shown, indent=2), file=out)
        return 0
    print(f"{shown['id']}  {shown['workflow']}  {shown['status']}  started {_time(shown['started'])}  "
          f"stopped {_time(shown['stopped'])}", file=out)
    if shown["status"] == FAILED:
        print(f"error: {shown['error']}\ncause: {_short(shown['cause'], 400)}", file=out)
    print(f"input:  {_short(shown['input'], 400)}", file=out)
    if shown["status"] == SUCCEEDED:
        print(f"output: {_short(shown['output'], 400)}", file=out)
    for entry in shown["progress"]:
        extra = f", {entry['failed']} failed" if entry["failed"] else ""
        print(f"{entry['scope']}{'' if entry['scope'].endswith('/') else '/'}{entry['state']:<24} "
              f"{bar(entry['succeeded'], entry['total'])} ({entry['running']} running{extra})", file=out)
    if events:
        for event in shown["events"]:
            print(f"{event['seq']:>6} {_time(event['at'])} {event['scope'] or '/':<24} {event['type']:<18} "
                  f"{event['state'] or '':<18} {_short(event['detail'])}", file=out)
    return 0


def add_cli(commands: Any, journal_path: Callable[[], Path]) -> argparse.ArgumentParser:
    """Add `workflows list|show` to an argparse sub-command set; `journal_path()` names the journal file."""
    parser = commands.add_parser("workflows", help="list workflow executions, or show one with its history")
    verbs = parser.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", help="recent executions, newest first")
    listing.add_argument("--status", choices=[RUNNING, SUCCEEDED, FAILED])
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=lambda args: cmd_list(journal_path(), status=args.status, limit=args.limit,
                                                    as_json=args.json))
    show = verbs.add_parser("show", help="one execution: status, progress of its Map states, its events")
    show.add_argument("execution_id")
    show.add_argument("--json", action="store_true")
    show.add_argument("--no-events", action="store_true")
    show.set_defaults(func=lambda args: cmd_show(journal_path(), args.execution_id, as_json=args.json,
                                                 events=not args.no_events))
    return parser
