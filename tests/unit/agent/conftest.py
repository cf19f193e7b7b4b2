"""Fixtures for agent tests: ``fake_host``, a ``HostSystem`` with fixed readings."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from agent.sources.host import (
    Battery,
    CpuTimes,
    DiskIO,
    DiskUsage,
    LoadAverage,
    Memory,
    NetIO,
    NicStats,
    Partition,
    Swap,
    Temperature,
)

__all__ = ["FakeHost"]

BOOT = 1_700_000_000.0


def _net(n: int) -> NetIO:
    return NetIO(
        bytes_sent=n * 10,
        bytes_recv=n * 20,
        packets_sent=n,
        packets_recv=n * 2,
        errin=1,
        errout=2,
        dropin=3,
        dropout=4,
    )


@dataclass
class FakeHost:
    """Fixed readings; the tests change fields, and name methods in ``failing`` to make them
    raise OSError."""

    failing: set[str] = field(default_factory=set)
    boot: float = BOOT
    cpu: CpuTimes | None = field(
        default_factory=lambda: CpuTimes({"user": 100.0, "system": 50.0, "idle": 1000.0})
    )
    cpus: int | None = 4
    load: LoadAverage | None = field(default_factory=lambda: LoadAverage(0.5, 0.25, 0.125))
    mem: Memory | None = field(default_factory=lambda: Memory(8000, 6000, 2000))
    swp: Swap | None = field(default_factory=lambda: Swap(1000, 100))
    parts: list[Partition] = field(
        default_factory=lambda: [
            Partition("/dev/sda1", "/", "ext4"),
            Partition("tmpfs", "/run", "tmpfs"),
            Partition("proc", "/proc", "proc"),
            Partition("/dev/sda1", "/var/lib/bind", "ext4"),
            Partition("/dev/sdb1", "/data", "xfs"),
        ]
    )
    usage: dict[str, DiskUsage | None] = field(
        default_factory=lambda: {
            "/": DiskUsage(total=1000, free=400, avail=300),
            "/run": DiskUsage(total=10, free=10, avail=10),
            "/proc": DiskUsage(total=0, free=0, avail=0),
            "/var/lib/bind": DiskUsage(total=1000, free=400, avail=300),
            "/data": DiskUsage(total=5000, free=2500, avail=2500),
        }
    )
    disks: dict[str, DiskIO] = field(
        default_factory=lambda: {
            "sda": DiskIO(4096, 8192, 10, 20, busy_time_ms=1500),
            "loop0": DiskIO(1, 1, 1, 1),
            "sdb": DiskIO(1, 2, 3, 4),
        }
    )
    nets: dict[str, NetIO] = field(
        default_factory=lambda: {
            "lo": _net(1),
            "eth0": _net(100),
            "veth1234": _net(2),
            "wlan0": _net(50),
        }
    )
    stats: dict[str, NicStats] = field(
        default_factory=lambda: {
            "lo": NicStats(True, 0),
            "eth0": NicStats(True, 1000),
            "veth1234": NicStats(True, 10000),
            "wlan0": NicStats(False, 0),
        }
    )
    procs: int | None = 123
    batt: Battery | None = None
    temps: list[Temperature] = field(
        default_factory=lambda: [
            Temperature("coretemp", "Package id 0", 45.0),
            Temperature("acpitz", "", 40.0),
            Temperature("acpitz", "", 41.0),
        ]
    )

    def _check(self, method: str) -> None:
        if method in self.failing:
            raise OSError(f"fake {method} failure")

    def boot_time(self) -> float:
        self._check("boot_time")
        return self.boot

    def cpu_times(self) -> CpuTimes | None:
        self._check("cpu_times")
        return self.cpu

    def cpu_count(self) -> int | None:
        self._check("cpu_count")
        return self.cpus

    def load_average(self) -> LoadAverage | None:
        self._check("load_average")
        return self.load

    def memory(self) -> Memory | None:
        self._check("memory")
        return self.mem

    def swap(self) -> Swap | None:
        self._check("swap")
        return self.swp

    def partitions(self) -> list[Partition]:
        self._check("partitions")
        return self.parts

    def disk_usage(self, mountpoint: str) -> DiskUsage | None:
        self._check("disk_usage")
        self._check(f"disk_usage:{mountpoint}")
        return self.usage.get(mountpoint)

    def disk_io(self) -> dict[str, DiskIO]:
        self._check("disk_io")
        return self.disks

    def net_io(self) -> dict[str, NetIO]:
        self._check("net_io")
        return self.nets

    def nic_stats(self) -> dict[str, NicStats]:
        self._check("nic_stats")
        return self.stats

    def process_count(self) -> int | None:
        self._check("process_count")
        return self.procs

    def battery(self) -> Battery | None:
        self._check("battery")
        return self.batt

    def temperatures(self) -> list[Temperature]:
        self._check("temperatures")
        return self.temps


@pytest.fixture
def fake_host() -> FakeHost:
    return FakeHost()
