"""CPU use of a benchmark's parts, from /proc: the hub nodes, PostgreSQL, the client.

Used by ``bench/cluster.py`` to say what limits a figure: CPU seconds per
process between two samples, and how busy the machine's cores were overall (so
other work running at the same time shows).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, text

from tests.support.hub_process import HubProcess

__all__ = ["CpuSample", "CpuUse", "postgres_pids"]

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_seconds(pid: int, *, children: bool = False) -> float:
    """CPU seconds (user + system) of ``pid`` so far; 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    # After the command: state is field 3, utime 14, stime 15, cutime 16, cstime 17.
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


# PostgreSQL's own processes, shared by every database of the server.
PG_BACKGROUND = ("walwriter", "checkpointer", "background writer", "autovacuum launcher")


def postgres_pids(admin: Engine, database: str) -> list[int]:
    """The backends of ``database`` and PostgreSQL's background writers (WAL, checkpoints)."""
    with admin.connect() as conn:
        pids = conn.execute(
            text(
                "SELECT pid FROM pg_stat_activity WHERE datname = :database"
                " OR backend_type = ANY(:background)"
            ),
            {"database": database, "background": list(PG_BACKGROUND)},
        ).scalars()
        return [int(pid) for pid in pids]


def _machine_busy_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot, over all cores."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(value) for value in first[:8]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / CLOCK_TICKS


@dataclass
class CpuSample:
    """CPU counters at one instant."""

    nodes: float
    postgres: dict[int, float]
    client: float
    machine_busy: float
    at: float

    @classmethod
    def take(cls, nodes: list[HubProcess], postgres: list[int]) -> CpuSample:
        """Read the counters now (``postgres``: the PostgreSQL processes to count)."""
        times = os.times()
        return cls(
            nodes=sum(_process_seconds(node.proc.pid) for node in nodes),
            postgres={pid: _process_seconds(pid) for pid in postgres},
            client=times.user + times.system,
            machine_busy=_machine_busy_seconds(),
            at=time.perf_counter(),
        )


@dataclass
class CpuUse:
    """CPU used between two samples, in cores (CPU seconds per second of wall time)."""

    nodes: float
    postgres: float
    client: float
    busy: float
    """All processes of the machine."""
    seconds: float

    @classmethod
    def between(cls, before: CpuSample, after: CpuSample) -> CpuUse:
        """What was used from ``before`` to ``after``.

        A PostgreSQL backend first seen in ``after`` started in between: all its
        CPU counts.
        """
        seconds = max(after.at - before.at, 1e-9)
        postgres = sum(cpu - before.postgres.get(pid, 0.0) for pid, cpu in after.postgres.items())
        return cls(
            nodes=(after.nodes - before.nodes) / seconds,
            postgres=postgres / seconds,
            client=(after.client - before.client) / seconds,
            busy=(after.machine_busy - before.machine_busy) / seconds,
            seconds=seconds,
        )

    @classmethod
    def merge(cls, uses: list[CpuUse]) -> CpuUse:
        """Several windows as one (each weighted by its length)."""
        seconds = sum(use.seconds for use in uses)

        def mean(part: str) -> float:
            return sum(float(getattr(use, part)) * use.seconds for use in uses) / seconds

        return cls(
            nodes=mean("nodes"),
            postgres=mean("postgres"),
            client=mean("client"),
            busy=mean("busy"),
            seconds=seconds,
        )

    @property
    def other(self) -> float:
        """Cores used by the rest of the machine (other work running at the same time)."""
        return max(0.0, self.busy - self.nodes - self.postgres - self.client)

    def per_order_ms(self, cores: float, orders: int) -> float:
        """``cores`` over this window as CPU milliseconds per order."""
        return cores * self.seconds / orders * 1000
