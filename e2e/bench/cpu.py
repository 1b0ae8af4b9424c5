"""CPU accounting shared by the benchmarks: how much CPU each process spent on a phase.

On a saturated machine rates follow the CPU each request costs, so the benchmarks report it per
process beside their rates.
"""

from __future__ import annotations

import os
from pathlib import Path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (`/proc/<pid>/stat` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds each named process, and this one (under `own_label`), spends between
    `start()` and `stop()`; a process that is gone counts as 0."""

    def __init__(self, pids: dict[str, int], own_label: str, digits: int | None = None) -> None:
        self.pids = pids
        self.own_label = own_label
        self.digits = digits
        self.before: dict[str, float] = {}

    def _now(self) -> dict[str, float]:
        own = os.times()
        sample = {self.own_label: own.user + own.system}
        for name, pid in self.pids.items():
            try:
                sample[name] = cpu_seconds(pid)
            except (OSError, IndexError, ValueError):
                sample[name] = 0.0
        return sample

    def start(self) -> None:
        self.before = self._now()

    def stop(self) -> dict[str, float]:
        after = self._now()
        spent = {name: after[name] - self.before.get(name, 0.0) for name in after}
        if self.digits is None:
            return spent
        return {name: round(seconds, self.digits) for name, seconds in spent.items()}
