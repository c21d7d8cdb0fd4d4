"""This process's own peak resident memory. Not getrusage's ru_maxrss: Linux carries that across
fork and exec, so a process started by a larger one (a benchmark holding fakes) reports at least
that one's peak. VmHWM in /proc/self/status is the high-water mark of this process's own memory
since its exec."""

from __future__ import annotations


def peak_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError("/proc/self/status has no VmHWM line")
