"""The ``snmp`` source: network gear polled over SNMP, each device reported as its own host.

Every cycle it asks each configured device for sysName, sysUpTime and the IF-MIB interface
table, at most ``concurrency`` devices at a time and each within a deadline, through
agent/snmpclient.py, the only module that speaks SNMP. ``device_data`` turns one device's
``Reading`` into its samples and events, under the names the ``system`` source uses, so
dashboards treat gear and servers alike. It is pure: the device's ``DeviceState`` (its last
uptime, and the wraps of its 32-bit counters) goes in and comes out, and the source keeps it
from one cycle to the next. Secret files are read at every cycle; secrets are never logged.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal, Protocol

import msgspec

from agent.sources.base import Collected, DeviceData, SourceError
from outpost.wire import MAX_LABEL_VALUE_LEN, SLUG_RE, Event, Sample

if TYPE_CHECKING:
    from agent.snmpclient import Oid, Reading, Target, Value

__all__ = [
    "COLUMNS",
    "SCALARS",
    "DeviceState",
    "SnmpConfig",
    "SnmpDevice",
    "SnmpSource",
    "device_data",
    "interface_rows",
    "interface_samples",
    "label_text",
    "uptime_change",
    "wrapped_counter",
]

log = logging.getLogger(__name__)

Slug = Annotated[str, msgspec.Meta(pattern=SLUG_RE.pattern)]
Text = Annotated[str, msgspec.Meta(min_length=1)]
Timeout = Annotated[float, msgspec.Meta(gt=0, le=60)]
Retries = Annotated[int, msgspec.Meta(ge=0, le=10)]

_V3_KEYS = ("user", "auth_password", "auth_password_file", "priv_password", "priv_password_file")


class SnmpDevice(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One device. Its ``name`` becomes its host name in this agent's site."""

    name: Slug
    address: Annotated[str, msgspec.Meta(min_length=1, max_length=253)]
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 161
    version: Literal["2c", "3"] = "2c"
    community: Text | None = None
    community_file: Text | None = None
    user: Text | None = None
    auth_protocol: Literal["sha", "sha256", "sha512", "md5"] = "sha"
    auth_password: Text | None = None
    auth_password_file: Text | None = None
    priv_protocol: Literal["aes", "aes256", "aes256c", "des"] = "aes"
    priv_password: Text | None = None
    priv_password_file: Text | None = None
    timeout_seconds: Timeout | None = None
    retries: Retries | None = None

    def __repr__(self) -> str:  # without the secrets
        return f"SnmpDevice({self.name!r}, {self.address!r}:{self.port}, v{self.version})"

    def __post_init__(self) -> None:
        if self.version == "2c":
            _one_of(self, "community")
            misplaced = [key for key in _V3_KEYS if getattr(self, key) is not None]
            if misplaced:
                raise ValueError(f'{", ".join(misplaced)}: only for version "3" (this is 2c)')
            return
        if self.community is not None or self.community_file is not None:
            raise ValueError('community and community_file are for version 2c (this is "3")')
        if self.user is None:
            raise ValueError('user is required for version "3"')
        _one_of(self, "auth_password")
        _one_of(self, "priv_password")
        for key in ("auth_password", "priv_password"):
            value = getattr(self, key)
            if value is not None and len(value) < 8:
                raise ValueError(f"{key}: SNMPv3 needs at least 8 characters")


def _one_of(device: SnmpDevice, key: str) -> None:
    given = [k for k in (key, f"{key}_file") if getattr(device, k) is not None]
    if not given:
        raise ValueError(f"{key} or {key}_file is required for version {device.version}")
    if len(given) > 1:
        raise ValueError(f"{key} and {key}_file are both set: keep one")


class SnmpConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The ``snmp`` block: polling settings and the devices to poll."""

    enabled: bool = True
    timeout_seconds: Timeout = 2.0
    retries: Retries = 1
    max_repetitions: Annotated[int, msgspec.Meta(ge=1, le=200)] = 25
    concurrency: Annotated[int, msgspec.Meta(ge=1, le=256)] = 16
    devices: list[SnmpDevice] = []

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for device in self.devices:
            if device.name in seen:
                raise ValueError(f"devices: the name {device.name!r} is used twice")
            seen.add(device.name)


# --- what is asked -----------------------------------------------------------------------

SYS_UPTIME: Oid = (1, 3, 6, 1, 2, 1, 1, 3, 0)  # hundredths of a second, 32 bits
SYS_NAME: Oid = (1, 3, 6, 1, 2, 1, 1, 5, 0)
SCALARS: tuple[Oid, ...] = (SYS_NAME, SYS_UPTIME)

_IF = (1, 3, 6, 1, 2, 1, 2, 2, 1)  # IF-MIB ifTable
_IFX = (1, 3, 6, 1, 2, 1, 31, 1, 1, 1)  # IF-MIB ifXTable
COLUMNS: dict[str, Oid] = {
    "ifIndex": (*_IF, 1),
    "ifDescr": (*_IF, 2),
    "ifSpeed": (*_IF, 5),
    "ifAdminStatus": (*_IF, 7),
    "ifOperStatus": (*_IF, 8),
    "ifInOctets": (*_IF, 10),
    "ifInUcastPkts": (*_IF, 11),
    "ifInDiscards": (*_IF, 13),
    "ifInErrors": (*_IF, 14),
    "ifOutOctets": (*_IF, 16),
    "ifOutUcastPkts": (*_IF, 17),
    "ifOutDiscards": (*_IF, 19),
    "ifOutErrors": (*_IF, 20),
    "ifName": (*_IFX, 1),
    "ifHCInOctets": (*_IFX, 6),
    "ifHCInUcastPkts": (*_IFX, 7),
    "ifHCOutOctets": (*_IFX, 10),
    "ifHCOutUcastPkts": (*_IFX, 11),
    "ifHighSpeed": (*_IFX, 15),
}

# Sample name, the 64-bit column (preferred), the 32-bit column (read with wrap handling).
COUNTERS: tuple[tuple[str, str | None, str], ...] = (
    ("outpost_network_receive_bytes_total", "ifHCInOctets", "ifInOctets"),
    ("outpost_network_transmit_bytes_total", "ifHCOutOctets", "ifOutOctets"),
    ("outpost_network_receive_packets_total", "ifHCInUcastPkts", "ifInUcastPkts"),
    ("outpost_network_transmit_packets_total", "ifHCOutUcastPkts", "ifOutUcastPkts"),
    ("outpost_network_receive_errors_total", None, "ifInErrors"),
    ("outpost_network_transmit_errors_total", None, "ifOutErrors"),
    ("outpost_network_receive_drop_total", None, "ifInDiscards"),
    ("outpost_network_transmit_drop_total", None, "ifOutDiscards"),
)

WRAP = 2**32

# --- parsing (pure) ----------------------------------------------------------------------


class DeviceState(msgspec.Struct, frozen=True):
    """What the source remembers of one device from one cycle to the next."""

    uptime_ticks: int | None = None  # the last sysUpTime read
    uptime_wraps: int = 0  # times sysUpTime passed 2**32 since the device booted
    seen_at: float = 0.0  # when uptime_ticks was read
    counters: dict[tuple[int, str], tuple[int, int]] = {}  # (ifIndex, column) -> (raw, wraps)


def label_text(value: Value | None) -> str:
    """A device's string as a label value: UTF-8 (or GB 18030, which Chinese gear may use),
    invalid bytes replaced, NULs and padding dropped, at most 256 characters."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            try:
                text = value.decode("gb18030")
            except UnicodeDecodeError:
                text = value.decode("utf-8", "replace")
    else:
        text = str(value)
    text = text.encode("utf-8", "replace").decode("utf-8")  # no lone surrogates
    return text.replace("\x00", "").strip()[:MAX_LABEL_VALUE_LEN]


def uptime_change(previous: DeviceState, ticks: int, now: float) -> str:
    """``"running"``, ``"wrapped"`` (sysUpTime passed 2**32 hundredths, every 497 days) or
    ``"rebooted"`` (it went backwards otherwise)."""
    last = previous.uptime_ticks
    if last is None or ticks >= last:
        return "running"
    elapsed = max(0.0, now - previous.seen_at) * 100
    expected = last + elapsed
    if expected >= WRAP and abs(expected - WRAP - ticks) <= max(6000.0, elapsed / 20):
        return "wrapped"
    return "rebooted"


def wrapped_counter(raw: int, last: tuple[int, int] | None) -> tuple[int, int]:
    """A 32-bit counter read as ``raw``, given its last ``(raw, wraps)``: the new pair. A
    value below the last one has wrapped past 2**32 once. Its total is ``wraps * 2**32 + raw``."""
    if last is None:
        return raw, 0
    last_raw, wraps = last
    return raw, wraps + 1 if raw < last_raw else wraps


def interface_rows(table: Mapping[Oid, Value]) -> dict[int, dict[str, Value]]:
    """The walked columns as rows by ifIndex (column name -> value); anything else is left
    out."""
    columns = {oid: name for name, oid in COLUMNS.items()}
    rows: dict[int, dict[str, Value]] = {}
    for oid, value in table.items():
        name = columns.get(oid[:-1])
        if name is not None:
            rows.setdefault(oid[-1], {})[name] = value
    return rows


def _interface_names(rows: Mapping[int, Mapping[str, Value]]) -> dict[int, str]:
    """ifName, else ifDescr, else ``if<index>``; a name taken twice gets ``(<index>)``."""
    names: dict[int, str] = {}
    taken: set[str] = set()
    for index in sorted(rows):
        row = rows[index]
        name = label_text(row.get("ifName")) or label_text(row.get("ifDescr")) or f"if{index}"
        if name in taken:
            suffix = f" ({index})"
            name = name[: MAX_LABEL_VALUE_LEN - len(suffix)] + suffix
        taken.add(name)
        names[index] = name
    return names


def _int(row: Mapping[str, Value], column: str | None) -> int | None:
    value = row.get(column) if column else None
    return value if isinstance(value, int) else None


def interface_samples(
    rows: Mapping[int, Mapping[str, Value]], counters: Mapping[tuple[int, str], tuple[int, int]]
) -> tuple[list[Sample], dict[tuple[int, str], tuple[int, int]]]:
    """The interfaces' samples, and the 32-bit counters' new state (only interfaces present)."""
    samples: list[Sample] = []
    kept: dict[tuple[int, str], tuple[int, int]] = {}
    names = _interface_names(rows)
    for index in sorted(rows):
        row = rows[index]
        labels = {"interface": names[index]}
        for sample_name, wide, narrow in COUNTERS:
            value = _int(row, wide)
            raw = _int(row, narrow)
            if value is None and raw is not None:
                key = (index, narrow)
                raw, wraps = kept[key] = wrapped_counter(raw, counters.get(key))
                value = wraps * WRAP + raw
            if value is not None:
                samples.append(Sample(sample_name, float(value), labels))
        for sample_name, column in (
            ("outpost_network_up", "ifOperStatus"),
            ("outpost_network_admin_up", "ifAdminStatus"),
        ):
            status = _int(row, column)
            if status is not None:
                samples.append(Sample(sample_name, 1.0 if status == 1 else 0.0, labels))
        high, speed = _int(row, "ifHighSpeed"), _int(row, "ifSpeed")
        if high:
            samples.append(Sample("outpost_network_speed_bytes", high * 1_000_000 / 8, labels))
        elif speed and speed < WRAP - 1:  # ifSpeed stops at 2**32 - 1 on faster links
            samples.append(Sample("outpost_network_speed_bytes", speed / 8, labels))
    return samples, kept


def device_data(
    reading: Reading, previous: DeviceState, now: float
) -> tuple[DeviceData, DeviceState]:
    """One device's samples and events from what it answered, and its new state."""
    duration = Sample("outpost_snmp_duration_seconds", reading.duration)
    if reading.error:
        return DeviceData(up=False, samples=[duration]), previous
    samples: list[Sample] = []
    events: list[Event] = []
    state = previous
    counters = previous.counters
    ticks = reading.scalars.get(SYS_UPTIME)
    if isinstance(ticks, int):
        change = uptime_change(previous, ticks, now)
        wraps = previous.uptime_wraps
        if change == "wrapped":
            wraps += 1
        elif change == "rebooted":
            wraps, counters = 0, {}
        uptime = (wraps * WRAP + ticks) / 100
        samples.append(Sample("outpost_host_uptime_seconds", uptime))
        samples.append(Sample("outpost_host_boot_time_seconds", now - uptime))
        if change == "rebooted":
            before = (previous.uptime_wraps * WRAP + (previous.uptime_ticks or 0)) / 100
            events.append(
                Event(
                    kind="device_rebooted",
                    severity="warning",
                    ts=int(now * 1000),
                    message=f"restarted about {uptime:.0f} s ago, after {before:.0f} s up",
                    attrs={
                        "uptime_seconds": f"{uptime:.2f}",
                        "previous_uptime_seconds": f"{before:.2f}",
                    },
                )
            )
        state = DeviceState(ticks, wraps, now, counters)
    sys_name = label_text(reading.scalars.get(SYS_NAME))
    samples.append(Sample("outpost_snmp_info", 1.0, {"sys_name": sys_name}))
    samples.append(duration)
    if reading.table:
        found, counters = interface_samples(interface_rows(reading.table), counters)
        samples.extend(found)
    state = msgspec.structs.replace(state, counters=counters)
    return DeviceData(up=True, samples=samples, events=events), state


# --- the source ----------------------------------------------------------------------------


class Poller(Protocol):
    """``agent.snmpclient.poll``, or a fake in tests."""

    def __call__(
        self,
        targets: Mapping[str, Target],
        scalars: Sequence[Oid],
        columns: Sequence[Oid],
        max_repetitions: int,
        concurrency: int,
    ) -> Mapping[str, Reading]: ...


def _secret(device: SnmpDevice, key: str) -> str:
    """The value of ``key``, or the first line of ``<key>_file``."""
    inline: str | None = getattr(device, key)
    if inline is not None:
        return inline
    path: str | None = getattr(device, f"{key}_file")
    if path is None:
        return ""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SourceError(f"{key}_file {path}: cannot read it ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise SourceError(f"{key}_file {path}: not UTF-8 text") from None
    if not lines or not lines[0]:
        raise SourceError(f"{key}_file {path}: the first line is empty")
    return lines[0]


class SnmpSource:
    """Polls the configured devices; each becomes a host of this agent's site."""

    name = "snmp"

    def __init__(self, config: SnmpConfig, poller: Poller | None = None) -> None:
        self.config = config
        self.poller = poller
        self._states: dict[str, DeviceState] = {}
        self._problems: dict[str, str] = {}

    def _target(self, device: SnmpDevice) -> Target:
        from agent.snmpclient import Target

        cfg = self.config
        timeout, retries = device.timeout_seconds, device.retries
        return Target(
            address=device.address,
            port=device.port,
            version=device.version,
            timeout=cfg.timeout_seconds if timeout is None else timeout,
            retries=cfg.retries if retries is None else retries,
            community=_secret(device, "community"),
            user=device.user or "",
            auth_protocol=device.auth_protocol,
            auth_password=_secret(device, "auth_password"),
            priv_protocol=device.priv_protocol,
            priv_password=_secret(device, "priv_password"),
        )

    def collect(self, now: float) -> Collected:
        if not self.config.devices:
            return Collected()
        # Imported here: an agent without devices never loads pysnmp (about 20 MB).
        from agent import snmpclient

        targets: dict[str, Target] = {}
        readings: dict[str, Reading] = {}
        for device in self.config.devices:
            try:
                targets[device.name] = self._target(device)
            except SourceError as exc:
                readings[device.name] = snmpclient.Reading({}, {}, str(exc))
        poller = self.poller or snmpclient.poll
        columns = tuple(COLUMNS.values())
        cfg = self.config
        readings.update(poller(targets, SCALARS, columns, cfg.max_repetitions, cfg.concurrency))
        devices: dict[str, DeviceData] = {}
        for device in self.config.devices:
            reading = readings.get(device.name) or snmpclient.Reading({}, {}, "not polled")
            self._note(device.name, reading)
            previous = self._states.get(device.name, DeviceState())
            devices[device.name], self._states[device.name] = device_data(reading, previous, now)
        return Collected(devices=devices)

    def _note(self, name: str, reading: Reading) -> None:
        """Log a device's problem when it starts or changes, and when it is over."""
        problem = reading.error or (reading.table_error and f"interfaces: {reading.table_error}")
        before = self._problems.get(name, "")
        if problem and problem != before:
            log.warning("snmp: device %s: %s", name, problem)
        elif before and not problem:
            log.info("snmp: device %s answers again", name)
        self._problems[name] = problem
