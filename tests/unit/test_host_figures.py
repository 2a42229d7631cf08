"""CPU and memory from /proc: a made-up /proc tree and a fake clock."""

from __future__ import annotations

import os
from pathlib import Path

from framewire.service.host_figures import HostSampler, ProcessFigures, ProcessRole


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_proc(root: Path, *, host: tuple[int, int], pid: int = 4242, ticks: tuple[int, int] = (0, 0),
               rollup: bool = True) -> None:
    """/proc/stat with `host` = (busy, idle) jiffies, and one process using `ticks` = (utime, stime)."""
    busy, idle = host
    (root / "stat").write_text(f"cpu  {busy} 0 0 {idle} 0 0 0 0 0 0\ncpu0 1 2 3 4\n")
    (root / "meminfo").write_text("MemTotal:       8000000 kB\nMemFree: 1 kB\nMemAvailable:   3000000 kB\n")
    folder = root / str(pid)
    folder.mkdir(exist_ok=True)
    # The command name holds a space and a parenthesis: fields count from the last ')'.
    rest = " ".join(["S"] + ["0"] * 10 + [str(ticks[0]), str(ticks[1])] + ["0"] * 30)
    (folder / "stat").write_text(f"{pid} (python (x) y) {rest}\n")
    if rollup:
        (folder / "smaps_rollup").write_text("00400000-7fff [rollup]\nRss:      204800 kB\nPss:      102400 kB\n")
    (folder / "statm").write_text("1000 50 10 1 0 20 0\n")


def test_cpu_percentages_are_deltas_between_samples(tmp_path):
    clock = Clock()
    sampler = HostSampler(clock=clock, proc=tmp_path)
    ticks = sampler.ticks_per_second
    write_proc(tmp_path, host=(1000, 1000), ticks=(0, 0))
    role = ProcessRole(4242, "worker", "tiny", 1, 0)
    host, (process,) = sampler.sample([role])
    assert host.cpu_percent is None and process.cpu_percent is None  # nothing to compare with yet
    assert host.memory_total_bytes == 8000000 * 1024 and host.memory_available_bytes == 3000000 * 1024
    assert process.rss_bytes == 50 * os.sysconf("SC_PAGE_SIZE") and process.pss_bytes == 100 * 2**20
    assert process.role == role

    clock.now += 2.0
    write_proc(tmp_path, host=(1300, 1100), ticks=(ticks, ticks // 2))  # 1.5 s of CPU in 2 s
    host, (process,) = sampler.sample([role])
    assert host.cpu_percent == 75.0  # 300 busy of 400 jiffies
    assert abs(process.cpu_percent - 75.0) < 1e-6
    assert host.cpu_count == len(os.sched_getaffinity(0))


def test_what_cannot_be_read_is_unknown_not_zero(tmp_path):
    sampler = HostSampler(clock=Clock(), proc=tmp_path / "missing")
    host, (process,) = sampler.sample([ProcessRole(1, "front end")])
    assert (host.cpu_percent, host.memory_total_bytes) == (None, None)
    assert (process.cpu_percent, process.rss_bytes, process.pss_bytes) == (None, None, None)


def test_without_smaps_rollup_pss_is_unknown(tmp_path):
    write_proc(tmp_path, host=(1, 1), rollup=False)
    _, (process,) = HostSampler(clock=Clock(), proc=tmp_path).sample([ProcessRole(4242, "worker")])
    assert process.rss_bytes == 50 * os.sysconf("SC_PAGE_SIZE") and process.pss_bytes is None


def test_pss_is_read_at_most_once_per_interval_rss_every_time(tmp_path):
    clock = Clock()
    sampler = HostSampler(clock=clock, proc=tmp_path, pss_interval=30.0)
    write_proc(tmp_path, host=(1, 1))
    role = ProcessRole(4242, "worker")
    assert sampler.sample([role])[1][0].pss_bytes == 100 * 2**20
    (tmp_path / "4242" / "smaps_rollup").write_text("Rss: 409600 kB\nPss: 307200 kB\n")
    (tmp_path / "4242" / "statm").write_text("1000 70 10 1 0 20 0\n")
    clock.now += 29.0
    _, (process,) = sampler.sample([role])
    assert process.pss_bytes == 100 * 2**20 and process.rss_bytes == 70 * os.sysconf("SC_PAGE_SIZE")
    clock.now += 1.0
    assert sampler.sample([role])[1][0].pss_bytes == 300 * 2**20


def test_this_process_reads_for_real():
    sampler = HostSampler()
    host, (me,) = sampler.sample([ProcessRole(os.getpid(), "front end")])
    assert me.rss_bytes > 10 * 2**20 and me.pss_bytes and host.memory_total_bytes > 0
    sum(range(2_000_000))  # some CPU time between the samples
    host, (me,) = sampler.sample([ProcessRole(os.getpid(), "front end")])
    assert me.cpu_percent is not None and host.cpu_percent is not None


def test_figures_read_earlier_are_shown_under_the_roles_of_now():
    """A version that became READY while /proc was read is listed on its
    worker; a worker started meanwhile appears without figures; one that
    stopped is left out."""
    from framewire.service.status_sampler import with_roles

    front = ProcessRole(1, "front end")
    before = ProcessRole(2, "worker", "tiny", 1, 0, models=("tiny:1",))
    now = ProcessRole(2, "worker", "tiny", 1, 0, models=("tiny:1", "other:1"))
    gone, started = ProcessRole(3, "worker", "old", 1, 1, models=("old:1",)), ProcessRole(4, "worker", "new", 1, 1)
    read = [ProcessFigures(front, cpu_percent=5.0), ProcessFigures(before, cpu_percent=50.0, rss_bytes=100),
            ProcessFigures(gone, cpu_percent=1.0)]
    shown = with_roles(read, [front, now, started])
    assert [p.role for p in shown] == [front, now, started]
    assert shown[1].cpu_percent == 50.0 and shown[1].rss_bytes == 100 and shown[1].role.models == ("tiny:1", "other:1")
    assert shown[2] == ProcessFigures(started)
