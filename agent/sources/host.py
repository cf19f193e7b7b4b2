"""The boundary with psutil: the only module in Outpost that imports it.

``PsutilHost`` reads the local system and converts psutil's named tuples into the plain structs
below; ``HostSystem`` is the protocol that sources depend on, so tests pass a fake instead.
Every reading except ``boot_time`` returns empty or None when the platform cannot provide it.
Counters are read with ``nowrap=True`` so they never go backwards.
"""

from __future__ import annotations

import logging
from typing import Protocol

import msgspec
import psutil

__all__ = [
    "Battery",
    "CpuTimes",
    "DiskIO",
    "DiskUsage",
    "HostSystem",
    "LoadAverage",
    "Memory",
    "NetIO",
    "NicStats",
    "Partition",
    "PsutilHost",
    "Swap",
    "Temperature",
]

logger = logging.getLogger(__name__)

# What psutil raises when a reading is unsupported or unavailable on this platform.
_UNAVAILABLE = (NotImplementedError, OSError, AttributeError, psutil.Error)

CPU_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


class CpuTimes(msgspec.Struct, frozen=True):
    """Seconds spent in each mode, summed over all CPUs; only the modes the platform has."""

    modes: dict[str, float]


class LoadAverage(msgspec.Struct, frozen=True):
    load1: float
    load5: float
    load15: float


class Memory(msgspec.Struct, frozen=True):
    total: int
    available: int
    used: int


class Swap(msgspec.Struct, frozen=True):
    total: int
    used: int


class Partition(msgspec.Struct, frozen=True):
    device: str
    mountpoint: str
    fstype: str


class DiskUsage(msgspec.Struct, frozen=True):
    """``free`` is free for root; ``avail`` is free for unprivileged users."""

    total: int
    free: int
    avail: int


class DiskIO(msgspec.Struct, frozen=True):
    read_bytes: int
    write_bytes: int
    read_count: int
    write_count: int
    busy_time_ms: int | None = None


class NetIO(msgspec.Struct, frozen=True):
    bytes_sent: int
    bytes_recv: int
    packets_sent: int
    packets_recv: int
    errin: int
    errout: int
    dropin: int
    dropout: int


class NicStats(msgspec.Struct, frozen=True):
    isup: bool
    speed_mbit: int


class Battery(msgspec.Struct, frozen=True):
    """``seconds_left`` is negative when unknown or unlimited (on mains)."""

    percent: float
    seconds_left: float
    power_plugged: bool | None


class Temperature(msgspec.Struct, frozen=True):
    chip: str
    label: str
    current: float


class HostSystem(Protocol):
    """What a system source reads. ``PsutilHost`` implements it; tests use a fake."""

    def boot_time(self) -> float: ...
    def cpu_times(self) -> CpuTimes | None: ...
    def cpu_count(self) -> int | None: ...
    def load_average(self) -> LoadAverage | None: ...
    def memory(self) -> Memory | None: ...
    def swap(self) -> Swap | None: ...
    def partitions(self) -> list[Partition]: ...
    def disk_usage(self, mountpoint: str) -> DiskUsage | None: ...
    def disk_io(self) -> dict[str, DiskIO]: ...
    def net_io(self) -> dict[str, NetIO]: ...
    def nic_stats(self) -> dict[str, NicStats]: ...
    def process_count(self) -> int | None: ...
    def battery(self) -> Battery | None: ...
    def temperatures(self) -> list[Temperature]: ...


def _unavailable(what: str, exc: BaseException) -> None:
    logger.debug("psutil %s unavailable: %r", what, exc)


class PsutilHost:
    """``HostSystem`` backed by psutil. Holds no state; constructing it does no I/O."""

    def boot_time(self) -> float:
        return float(psutil.boot_time())

    def cpu_times(self) -> CpuTimes | None:
        try:
            times = psutil.cpu_times()
        except _UNAVAILABLE as exc:
            _unavailable("cpu_times", exc)
            return None
        fields = times._asdict()
        return CpuTimes({m: float(fields[m]) for m in CPU_MODES if m in fields})

    def cpu_count(self) -> int | None:
        try:
            return psutil.cpu_count()
        except _UNAVAILABLE as exc:
            _unavailable("cpu_count", exc)
            return None

    def load_average(self) -> LoadAverage | None:
        try:
            load1, load5, load15 = psutil.getloadavg()
        except _UNAVAILABLE as exc:
            _unavailable("getloadavg", exc)
            return None
        return LoadAverage(load1, load5, load15)

    def memory(self) -> Memory | None:
        try:
            mem = psutil.virtual_memory()
        except _UNAVAILABLE as exc:
            _unavailable("virtual_memory", exc)
            return None
        return Memory(total=mem.total, available=mem.available, used=mem.used)

    def swap(self) -> Swap | None:
        try:
            swap = psutil.swap_memory()
        except _UNAVAILABLE as exc:
            _unavailable("swap_memory", exc)
            return None
        return Swap(total=swap.total, used=swap.used)

    def partitions(self) -> list[Partition]:
        # all=True: the source filters by file system type itself, from its config.
        try:
            parts = psutil.disk_partitions(all=True)
        except _UNAVAILABLE as exc:
            _unavailable("disk_partitions", exc)
            return []
        return [Partition(p.device, p.mountpoint, p.fstype) for p in parts]

    def disk_usage(self, mountpoint: str) -> DiskUsage | None:
        try:
            usage = psutil.disk_usage(mountpoint)
        except _UNAVAILABLE as exc:
            _unavailable(f"disk_usage({mountpoint!r})", exc)
            return None
        # psutil's ``free`` is what unprivileged users may use; root may also use the reserve.
        return DiskUsage(total=usage.total, free=usage.total - usage.used, avail=usage.free)

    def disk_io(self) -> dict[str, DiskIO]:
        try:
            counters = psutil.disk_io_counters(perdisk=True, nowrap=True)
        except _UNAVAILABLE as exc:
            _unavailable("disk_io_counters", exc)
            return {}
        return {
            name: DiskIO(
                read_bytes=c.read_bytes,
                write_bytes=c.write_bytes,
                read_count=c.read_count,
                write_count=c.write_count,
                busy_time_ms=getattr(c, "busy_time", None),
            )
            for name, c in (counters or {}).items()
        }

    def net_io(self) -> dict[str, NetIO]:
        try:
            counters = psutil.net_io_counters(pernic=True, nowrap=True)
        except _UNAVAILABLE as exc:
            _unavailable("net_io_counters", exc)
            return {}
        return {
            name: NetIO(
                bytes_sent=c.bytes_sent,
                bytes_recv=c.bytes_recv,
                packets_sent=c.packets_sent,
                packets_recv=c.packets_recv,
                errin=c.errin,
                errout=c.errout,
                dropin=c.dropin,
                dropout=c.dropout,
            )
            for name, c in counters.items()
        }

    def nic_stats(self) -> dict[str, NicStats]:
        try:
            stats = psutil.net_if_stats()
        except _UNAVAILABLE as exc:
            _unavailable("net_if_stats", exc)
            return {}
        return {name: NicStats(isup=bool(s.isup), speed_mbit=s.speed) for name, s in stats.items()}

    def process_count(self) -> int | None:
        try:
            return len(psutil.pids())
        except _UNAVAILABLE as exc:
            _unavailable("pids", exc)
            return None

    def battery(self) -> Battery | None:
        try:
            battery = psutil.sensors_battery()
        except _UNAVAILABLE as exc:
            _unavailable("sensors_battery", exc)
            return None
        if battery is None:
            return None
        plugged = battery.power_plugged
        return Battery(
            percent=float(battery.percent),
            seconds_left=float(battery.secsleft),
            power_plugged=None if plugged is None else bool(plugged),
        )

    def temperatures(self) -> list[Temperature]:
        try:
            chips = psutil.sensors_temperatures()
        except _UNAVAILABLE as exc:
            _unavailable("sensors_temperatures", exc)
            return []
        return [
            Temperature(chip=chip, label=t.label, current=float(t.current))
            for chip, readings in chips.items()
            for t in readings
        ]
