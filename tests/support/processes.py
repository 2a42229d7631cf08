"""Waiting for processes to die, for tests that kill workers."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from support.waiting import wait_until


def gone(pid: int) -> bool:
    """Whether the process has exited: a zombie whose threads have all exited
    (one that its parent can reap) counts."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state == "Z" and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except (OSError, IndexError):
        return True


def kill_and_wait(pid: int) -> None:
    """SIGKILL a process and wait until it is gone."""
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: gone(pid), timeout=10, what=f"worker {pid} to die")
