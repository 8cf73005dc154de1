"""Whether a process still runs (what leases, intents and temp files name their owner by), and the CPU
priority of background threads."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["lower_thread_priority", "process_identity", "process_running"]


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


def lower_thread_priority(nice: int) -> bool:
    """Raise the calling thread's nice value by `nice` (Linux schedules threads one by one; a thread
    starts with the nice value of the thread that starts it, so everything it starts inherits it).
    False where the system cannot do it for one thread, or refuses."""
    if nice <= 0 or not hasattr(os, "setpriority") or not os.path.isdir("/proc/self/task"):
        return False  # elsewhere PRIO_PROCESS with a thread id would renice the whole process, or fail
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread, min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice))
    except OSError as exc:
        logger.warning("Could not lower the priority of background threads: %s", exc)
        return False
    return True
