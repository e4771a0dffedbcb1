"""What the machine was doing during a benchmark: a process's memory, the load average."""

from __future__ import annotations

from pathlib import Path


def rss_mib(pid: int) -> tuple[float, float]:
    """Resident set size now and at its peak (VmHWM), MiB, of a process on this machine."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024.0
    return fields["VmRSS"], fields["VmHWM"]


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
