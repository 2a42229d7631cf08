"""CPU and memory of the host and of this server's processes, read from /proc.

`HostSampler.sample(processes)` reads, for the front end and every worker
process, CPU use since the previous sample (percent of one core) and memory:
RSS (resident pages, shared ones counted in full by every process) and PSS
(shared pages split between the processes sharing them, so the PSS of the
front end and its workers adds up to what the server really holds). The host
line is the whole machine's CPU utilisation and memory. Where /proc is not
there (not Linux) or a figure cannot be read, it is None, never a made-up 0.

PSS is dear to read: the kernel walks every mapping of the process for
/proc/PID/smaps_rollup, 10-15 ms of CPU for a process that has torch mapped,
charged to the front end that reads it. Sampled every second for three
processes that was ~5% of a core, about a quarter of a millisecond per image
at 150 images/s on two cores. So PSS is read at most every
`pss_interval` seconds per process (RSS, from /proc/PID/statm, every time).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class ProcessRole:
    """Which of the server's processes a pid is. A worker hosts every model
    version placed on its device: `models` names them ("name:version");
    `model`, `version` and `instance` are the first one's."""

    pid: int
    role: str  # "front end" or "worker"
    model: str = ""
    version: int = 0
    instance: int = 0
    models: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProcessFigures:
    """One process at one moment; None where it could not be read."""

    role: ProcessRole
    cpu_percent: float | None = None
    rss_bytes: int | None = None
    pss_bytes: int | None = None


@dataclass(frozen=True)
class HostFigures:
    """The machine at one moment."""

    cpu_count: int
    cpu_percent: float | None = None
    memory_total_bytes: int | None = None
    memory_available_bytes: int | None = None


class HostSampler:
    """Reads /proc; CPU percentages are deltas since the previous `sample`.

    `clock` (monotonic seconds) and `proc` (the /proc directory) are
    parameters so tests can drive both.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic, proc: Path | str = "/proc",
                 pss_interval: float = 30.0):
        self.clock = clock
        self.proc = Path(proc)
        self.pss_interval = pss_interval
        self._pss: dict[int, tuple[float, int | None]] = {}  # pid -> (read at, PSS bytes)
        self.ticks_per_second = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self._host_ticks: tuple[int, int] | None = None
        self._process_ticks: dict[int, tuple[float, int]] = {}

    def sample(self, processes: list[ProcessRole]) -> tuple[HostFigures, list[ProcessFigures]]:
        """The host and each of `processes` now."""
        now = self.clock()
        figures = [self._process(role, now) for role in processes]
        live = {f.role.pid for f in figures}
        self._process_ticks = {pid: v for pid, v in self._process_ticks.items() if pid in live}
        self._pss = {pid: v for pid, v in self._pss.items() if pid in live}
        return self._host(), figures

    def _host(self) -> HostFigures:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        host = HostFigures(cpu_count=cpus)
        busy_total = _read_host_ticks(self.proc / "stat")
        if busy_total is not None:
            previous, self._host_ticks = self._host_ticks, busy_total
            if previous is not None and busy_total[1] > previous[1]:
                host = replace(host, cpu_percent=100.0 * (busy_total[0] - previous[0]) / (busy_total[1] - previous[1]))
        memory = _read_kib_fields(self.proc / "meminfo", ("MemTotal", "MemAvailable"))
        return replace(host, memory_total_bytes=memory.get("MemTotal"),
                       memory_available_bytes=memory.get("MemAvailable"))

    def _process(self, role: ProcessRole, now: float) -> ProcessFigures:
        base = self.proc / str(role.pid)
        figures = ProcessFigures(role)
        ticks = _read_process_ticks(base / "stat")
        if ticks is not None:
            previous = self._process_ticks.get(role.pid)
            self._process_ticks[role.pid] = (now, ticks)
            if previous is not None and now > previous[0]:
                seconds = (ticks - previous[1]) / self.ticks_per_second
                figures = replace(figures, cpu_percent=max(0.0, 100.0 * seconds / (now - previous[0])))
        rss = _read_statm_rss(base / "statm")
        cached = self._pss.get(role.pid)
        if cached is None or now - cached[0] >= self.pss_interval:
            memory = _read_kib_fields(base / "smaps_rollup", ("Rss", "Pss"))
            cached = self._pss[role.pid] = (now, memory.get("Pss"))
            if rss is None:
                rss = memory.get("Rss")
        return replace(figures, rss_bytes=rss, pss_bytes=cached[1])


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except (OSError, ValueError):  # gone, not ours, or not Linux
        return None


def _read_host_ticks(path: Path) -> tuple[int, int] | None:
    """(busy, total) jiffies of every CPU, from /proc/stat's first line."""
    text = _read(path)
    if not text or not text.startswith("cpu "):
        return None
    values = [int(v) for v in text.split("\n", 1)[0].split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user and nice
    return total - idle, total


def _read_process_ticks(path: Path) -> int | None:
    """utime + stime of a process, in clock ticks."""
    text = _read(path)
    if not text:
        return None
    # The command name (field 2) is in parentheses and may hold spaces.
    fields = text.rsplit(")", 1)[-1].split()
    try:
        return int(fields[11]) + int(fields[12])
    except (IndexError, ValueError):
        return None


def _read_kib_fields(path: Path, names: tuple[str, ...]) -> dict[str, int]:
    """`Name:   123 kB` lines of /proc files, in bytes."""
    text = _read(path)
    found: dict[str, int] = {}
    for line in (text or "").splitlines():
        name, _, rest = line.partition(":")
        if name in names and rest.split():
            found[name] = int(rest.split()[0]) * 1024
    return found


def _read_statm_rss(path: Path) -> int | None:
    text = _read(path)
    try:
        return int(text.split()[1]) * os.sysconf("SC_PAGE_SIZE") if text else None
    except (IndexError, ValueError, AttributeError):
        return None
