"""Events: every committed write publishes one, after it is durable.

An `Event` names the replica and storage key written. The bus fans each event out to every
registered handler (sync, index, notify) as its own durable message, so one slow or failing handler
never holds up another. Handlers are idempotent: a message seen twice does no harm, and a message
whose worker died mid-way is leased again after its lease runs out.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

__all__ = ["Event"]


@dataclass(frozen=True)
class Event:
    replica: str
    key: str
    action: str = "created"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Event:
        return cls(**json.loads(text))
