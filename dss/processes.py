"""Whether a process still runs: what leases, intents and temp files name their owner by."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["process_identity", "process_running"]


def process_identity(pid: int) -> str | None:
    """`pid:start time` of a running process, None if it is gone. The start time tells a reused pid
    from the one recorded, and a zombie (killed, not yet reaped) counts as gone. Without /proc, the
    pid alone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return str(pid)
    state, *rest = stat.rsplit(")", 1)[1].split()
    return None if state in ("Z", "X") else f"{pid}:{rest[18]}"


def process_running(pid: int) -> bool:
    """Is `pid` a live process (not a zombie)? Pids of other users count as live."""
    return process_identity(pid) is not None
