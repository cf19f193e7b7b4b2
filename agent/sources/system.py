"""The ``system`` source: host-wide CPU, memory, file systems, disks, network, power, sensors.

It reads through a ``HostSystem`` (psutil in production, a fake in tests). ``host_samples``
turns the readings into samples; it takes ``now`` as an argument and keeps no state. Each
part (cpu, memory, filesystems...) is read on its own: one that fails is logged at debug and
left out, and only when every part fails does the source raise ``SourceError``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable

import msgspec

from agent.sources.base import Collected, SourceError
from agent.sources.host import HostSystem, PsutilHost
from outpost.wire import MAX_LABEL_VALUE_LEN, Sample

__all__ = ["SystemConfig", "SystemSource", "host_samples"]

logger = logging.getLogger(__name__)

DEFAULT_EXCLUDE_FSTYPES = [
    "autofs",
    "binfmt_misc",
    "bpf",
    "cgroup",
    "cgroup2",
    "configfs",
    "debugfs",
    "devpts",
    "devtmpfs",
    "efivarfs",
    "fuse.gvfsd-fuse",
    "fuse.lxcfs",
    "fuse.portal",
    "fusectl",
    "hugetlbfs",
    "mqueue",
    "nsfs",
    "overlay",
    "proc",
    "pstore",
    "ramfs",
    "rpc_pipefs",
    "securityfs",
    "selinuxfs",
    "squashfs",
    "sysfs",
    "tmpfs",
    "tracefs",
]


class SystemConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The ``system`` block. Interface and disk exclusions are regexes, matched with search."""

    enabled: bool = True
    exclude_fstypes: list[str] = msgspec.field(
        default_factory=lambda: list(DEFAULT_EXCLUDE_FSTYPES)
    )
    exclude_interfaces: list[str] = msgspec.field(
        default_factory=lambda: ["^lo$", "^veth", "^docker", "^br-"]
    )
    exclude_disks: list[str] = msgspec.field(
        default_factory=lambda: ["^loop", "^ram", "^zram", "^dm-", "^sr"]
    )

    def __post_init__(self) -> None:
        for key in ("exclude_interfaces", "exclude_disks"):
            for pattern in getattr(self, key):
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise ValueError(f"{key}: invalid regex {pattern!r}: {exc}") from None


def _label(value: str) -> str:
    """A label value safe for the wire: valid UTF-8 (no lone surrogates), at most 256 chars."""
    try:
        # Names psutil decoded with surrogateescape: recover the bytes, replace what is invalid.
        clean = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        clean = value.encode("utf-8", "replace").decode("utf-8")
    return clean[:MAX_LABEL_VALUE_LEN]


class _Out:
    """Collects samples, dropping values that are missing or not finite."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []

    def add(self, name: str, value: float | None, **labels: str) -> None:
        if value is None:
            return
        value = float(value)
        if not math.isfinite(value):
            return
        clean = {key: _label(val) for key, val in labels.items()}
        self.samples.append(Sample(name, value, clean))


def _excluded(name: str, patterns: list[re.Pattern[str]]) -> bool:
    return any(p.search(name) for p in patterns)


def _boot(host: HostSystem, config: SystemConfig, now: float, out: _Out) -> None:
    boot = host.boot_time()
    out.add("outpost_host_boot_time_seconds", boot)
    out.add("outpost_host_uptime_seconds", max(0.0, now - boot))


def _cpu(host: HostSystem, config: SystemConfig, now: float, out: _Out) -> None:
    times = host.cpu_times()
    if times is not None:
        for mode, seconds in times.modes.items():
            out.add("outpost_cpu_seconds_total", seconds, mode=mode)
    count = host.cpu_count()
    out.add("outpost_cpu_count", count)


def _load(host: HostSystem, config: SystemConfig, now: float, out: _Out) -> None:
    load = host.load_average()
    if load is not None:
        out.add("outpost_load1", load.load1)
        out.add("outpost_load5", load.load5)
        out.add("outpost_load15", load.load15)


def _memory(host: HostSystem, config: SystemConfig, now: float, out: _Out) -> None:
    mem = host.memory()
    if mem is not None:
        out.add("outpost_memory_total_bytes", mem.total)
        out.add("outpost_memory_available_bytes", mem.available)
        out.add("outpost_memory_used_bytes", mem.used)
    swap = host.swap()
    if swap is not None:
        out.add("outpost_swap_total_bytes", swap.total)
        out.add("outpost_swap_used_bytes", swap.used)


def _filesystems(host: HostSystem, config: SystemConfig, now: float, out: _Out) -> None:
    excluded = set(config.exclude_fstypes)
    seen: set[str] = set()
    for part in host.partitions():
        key = part.device or part.mountpoint
        if part.fstype in excluded or key in seen:
            continue
        try:
            usage = host.disk_usage(part.mountpoint)
        except Exception as exc:
            logger.debug("system: usage of %r failed: %r", part.mountpoint, exc)
            continue
        if usage is None:
            continue
        seen.add(key)
        labels = {"mountpoint": part.mountpoint, "device": part.device, "fstype": part.fstype}
        out.add("outpost_filesystem_size_bytes", usage.total, **labels)
        out.add("outpost_filesystem_free_bytes", usage.free, **labels)
        out.add("outpost_filesystem_avail_bytes", usage.avail, **labels)


def _disks(host: HostSystem, config: SystemConfig, now: float, out: _Out) -> None:
    patterns = [re.compile(p) for p in config.exclude_disks]
    for name, io in host.disk_io().items():
        device = _label(name)
        if _excluded(device, patterns):
            continue
        out.add("outpost_disk_read_bytes_total", io.read_bytes, device=device)
        out.add("outpost_disk_written_bytes_total", io.write_bytes, device=device)
        out.add("outpost_disk_reads_completed_total", io.read_count, device=device)
        out.add("outpost_disk_writes_completed_total", io.write_count, device=device)
        if io.busy_time_ms is not None:
            out.add("outpost_disk_io_time_seconds_total", io.busy_time_ms / 1000, device=device)


def _network(host: HostSystem, config: SystemConfig, now: float, out: _Out) -> None:
    patterns = [re.compile(p) for p in config.exclude_interfaces]
    for name, io in host.net_io().items():
        nic = _label(name)
        if _excluded(nic, patterns):
            continue
        out.add("outpost_network_receive_bytes_total", io.bytes_recv, interface=nic)
        out.add("outpost_network_transmit_bytes_total", io.bytes_sent, interface=nic)
        out.add("outpost_network_receive_packets_total", io.packets_recv, interface=nic)
        out.add("outpost_network_transmit_packets_total", io.packets_sent, interface=nic)
        out.add("outpost_network_receive_errors_total", io.errin, interface=nic)
        out.add("outpost_network_transmit_errors_total", io.errout, interface=nic)
        out.add("outpost_network_receive_drop_total", io.dropin, interface=nic)
        out.add("outpost_network_transmit_drop_total", io.dropout, interface=nic)


def _nics(host: HostSystem, config: SystemConfig, now: float, out: _Out) -> None:
    patterns = [re.compile(p) for p in config.exclude_interfaces]
    for name, stats in host.nic_stats().items():
        nic = _label(name)
        if _excluded(nic, patterns):
            continue
        out.add("outpost_network_up", 1.0 if stats.isup else 0.0, interface=nic)
        if stats.speed_mbit > 0:
            out.add("outpost_network_speed_bytes", stats.speed_mbit * 1_000_000 / 8, interface=nic)


def _processes(host: HostSystem, config: SystemConfig, now: float, out: _Out) -> None:
    out.add("outpost_processes", host.process_count())


def _battery(host: HostSystem, config: SystemConfig, now: float, out: _Out) -> None:
    battery = host.battery()
    if battery is None:
        return
    out.add("outpost_battery_percent", battery.percent)
    if battery.power_plugged is not None:
        out.add("outpost_battery_power_plugged", 1.0 if battery.power_plugged else 0.0)
    if battery.seconds_left >= 0:  # negative: unknown, or unlimited on mains
        out.add("outpost_battery_seconds_left", battery.seconds_left)


def _temperatures(host: HostSystem, config: SystemConfig, now: float, out: _Out) -> None:
    index: dict[str, int] = {}
    seen: set[tuple[str, str]] = set()
    for reading in host.temperatures():
        chip = _label(reading.chip)
        index[chip] = index.get(chip, 0) + 1
        sensor = _label(reading.label or f"temp{index[chip]}")
        # psutil merges same-named chips (two nvme drives): keep each reading distinct.
        if (chip, sensor) in seen:
            sensor = _label(f"{sensor} {index[chip]}")
        seen.add((chip, sensor))
        out.add("outpost_temperature_celsius", reading.current, chip=chip, sensor=sensor)


_Part = Callable[[HostSystem, SystemConfig, float, _Out], None]

PARTS: tuple[tuple[str, _Part], ...] = (
    ("boot", _boot),
    ("cpu", _cpu),
    ("load", _load),
    ("memory", _memory),
    ("filesystems", _filesystems),
    ("disks", _disks),
    ("network", _network),
    ("nics", _nics),
    ("processes", _processes),
    ("battery", _battery),
    ("temperatures", _temperatures),
)


def host_samples(host: HostSystem, config: SystemConfig, now: float) -> list[Sample]:
    """All system samples. A part whose reading raises is left out and logged at debug;
    ``SourceError`` only when every part fails."""
    samples: list[Sample] = []
    failed: list[str] = []
    for part_name, part in PARTS:
        out = _Out()
        try:
            part(host, config, now, out)
        except Exception as exc:
            logger.debug("system: %s failed: %r", part_name, exc)
            failed.append(part_name)
            continue
        samples.extend(out.samples)
    if len(failed) == len(PARTS):
        raise SourceError(f"system: every reading failed ({', '.join(failed)})")
    return samples


class SystemSource:
    """Host-wide resources, read through psutil unless a ``HostSystem`` is given."""

    name = "system"

    def __init__(self, config: SystemConfig, host: HostSystem | None = None) -> None:
        self.config = config
        self.host: HostSystem = host if host is not None else PsutilHost()

    def collect(self, now: float) -> Collected:
        return Collected(samples=host_samples(self.host, self.config, now))
