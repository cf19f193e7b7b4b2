"""The boundary with pysnmp: the only module in Outpost that imports it.

``poll`` asks many devices at once for a few scalars (one GET) and a few table columns (a
GETBULK walk of all of them together), at most ``concurrency`` devices at a time and each
within its ``Target.deadline``, and returns what each device answered as plain Python: OIDs
as tuples of ints, values as ``int``, ``bytes`` or ``str``. pysnmp's objects never leave this
module. ``advance``, the bookkeeping of the walk, is pure. agent/sources/snmp.py turns the
readings into samples, and imports this module only when it has devices to poll.

Each poll runs in its own asyncio loop with fresh pysnmp engines, one per set of credentials
(pysnmp keys SNMPv3 users by name, so two devices with the same user name and different
passwords cannot share an engine). Nothing is kept from one poll to the next.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from pyasn1.type import univ
from pysnmp.hlapi.v3arch import asyncio as hlapi
from pysnmp.proto import rfc1902

from agent.errors import SourceError

__all__ = ["Oid", "Reading", "SnmpError", "Target", "Value", "advance", "poll"]

log = logging.getLogger(__name__)

Oid = tuple[int, ...]
Value = int | bytes | str

MAX_REQUESTS = 1000
"""GETBULK requests one walk may take (a table far larger than any switch's)."""

_TOO_BIG = 1  # the errorStatus tooBig: the answer would not fit in one message

_AUTH = {
    "md5": hlapi.USM_AUTH_HMAC96_MD5,
    "sha": hlapi.USM_AUTH_HMAC96_SHA,
    "sha256": hlapi.USM_AUTH_HMAC192_SHA256,
    "sha512": hlapi.USM_AUTH_HMAC384_SHA512,
}
_PRIV = {
    "des": hlapi.USM_PRIV_CBC56_DES,
    "aes": hlapi.USM_PRIV_CFB128_AES,
    # AES-256 needs a longer key than sha and md5 give, and vendors extend it two ways: the
    # draft standard's (net-snmp's AES-256) and Cisco's (AES-256C). With sha256 or sha512
    # the key is long enough and both agree.
    "aes256": hlapi.USM_PRIV_CFB256_AES_BLUMENTHAL,
    "aes256c": hlapi.USM_PRIV_CFB256_AES,
}


class SnmpError(SourceError):
    """A request to a device failed: no answer, refused credentials, or an error status."""


@dataclass(frozen=True)
class Target:
    """Where and how to ask one device. The secrets stay out of ``repr``."""

    address: str
    port: int = 161
    version: Literal["2c", "3"] = "2c"
    timeout: float = 2.0
    retries: int = 1
    community: str = field(default="", repr=False)
    user: str = ""
    auth_protocol: Literal["sha", "sha256", "sha512", "md5"] = "sha"
    auth_password: str = field(default="", repr=False)
    priv_protocol: Literal["aes", "aes256", "aes256c", "des"] = "aes"
    priv_password: str = field(default="", repr=False)

    @property
    def deadline(self) -> float:
        """Seconds the whole poll of this device (GET and walk) may take: one request that
        needs every retry, a second one as bad, and a second for the round trips of the rest."""
        return 2 * self.timeout * (self.retries + 1) + 1.0

    def credentials(self) -> tuple[str, ...]:
        """Targets with equal credentials may share a pysnmp engine."""
        if self.version == "2c":
            return ("2c",)
        return (
            "3",
            self.user,
            self.auth_protocol,
            self.auth_password,
            self.priv_protocol,
            self.priv_password,
        )


class Reading(NamedTuple):
    """What one device answered in one poll. ``error`` is empty when it answered the GET;
    ``table_error`` says why the walk failed (the table is then empty)."""

    scalars: dict[Oid, Value]
    table: dict[Oid, Value]
    error: str = ""
    table_error: str = ""
    duration: float = 0.0


def advance(
    walking: Sequence[tuple[Oid, Oid]], answer: Sequence[tuple[Oid, Value | None]]
) -> tuple[dict[Oid, Value], list[tuple[Oid, Oid]]]:
    """One GETBULK answer applied to a walk of several columns at once.

    ``walking`` lists ``(column, last OID asked for)`` in the order they were requested; the
    answer holds one OID per column per row, row after row (the last row may be cut short).
    A value of ``None`` is endOfMibView. A column ends at its first OID outside it, at the
    end of the MIB, or at an OID that does not increase. Returns the values found and the
    columns still to walk, each with its new last OID; an empty answer ends the walk.
    """
    found: dict[Oid, Value] = {}
    if not walking or not answer:
        return found, []
    last = [oid for _column, oid in walking]
    done = [False] * len(walking)
    for position, (oid, value) in enumerate(answer):
        i = position % len(walking)
        column = walking[i][0]
        if done[i]:
            continue
        if value is None or oid[: len(column)] != column or oid <= last[i]:
            done[i] = True
            continue
        found[oid] = value
        last[i] = oid
    return found, [(w[0], last[i]) for i, w in enumerate(walking) if not done[i]]


def poll(
    targets: Mapping[str, Target],
    scalars: Sequence[Oid],
    columns: Sequence[Oid],
    max_repetitions: int,
    concurrency: int,
) -> dict[str, Reading]:
    """Poll every target: GET ``scalars``, then walk ``columns`` when the device answered.

    Never raises for one device: what went wrong is in its ``Reading``. Blocks until every
    device has answered or run out of time.
    """
    if not targets:
        return {}
    return asyncio.run(_poll_all(targets, scalars, columns, max_repetitions, concurrency))


async def _poll_all(
    targets: Mapping[str, Target],
    scalars: Sequence[Oid],
    columns: Sequence[Oid],
    max_repetitions: int,
    concurrency: int,
) -> dict[str, Reading]:
    session = _Session()
    gate = asyncio.Semaphore(concurrency)

    async def one(name: str, target: Target) -> tuple[str, Reading]:
        async with gate:
            return name, await _poll_one(session, target, scalars, columns, max_repetitions)

    try:
        done = await asyncio.gather(*(one(name, target) for name, target in targets.items()))
    finally:
        session.close()
    return dict(done)


async def _poll_one(
    session: _Session,
    target: Target,
    scalars: Sequence[Oid],
    columns: Sequence[Oid],
    max_repetitions: int,
) -> Reading:
    started = time.perf_counter()
    deadline = asyncio.get_running_loop().time() + target.deadline
    where = f"{target.address}:{target.port}"
    try:
        async with asyncio.timeout_at(deadline):
            got = await session.get(target, scalars)
    except Exception as exc:
        return Reading({}, {}, _describe(exc, target), duration=time.perf_counter() - started)
    table: dict[Oid, Value] = {}
    table_error = ""
    if columns:
        try:
            async with asyncio.timeout_at(deadline):
                table = await session.walk(target, columns, max_repetitions)
        except Exception as exc:
            table_error = _describe(exc, target)
            log.debug("snmp: walk of %s failed", where, exc_info=True)
    return Reading(got, table, "", table_error, time.perf_counter() - started)


def _describe(exc: BaseException, target: Target) -> str:
    where = f"{target.address}:{target.port}"
    if isinstance(exc, TimeoutError):
        return f"{where}: no complete answer within {target.deadline:g} s"
    if isinstance(exc, SnmpError):
        return str(exc)
    log.debug("snmp: polling %s raised", where, exc_info=True)
    return f"{where}: {type(exc).__name__}: {exc}"


class _Session:
    """pysnmp engines and transport targets for one poll; ``close`` releases their sockets."""

    def __init__(self) -> None:
        self._engines: dict[tuple[str, ...], Any] = {}
        self._prepared: dict[Target, tuple[Any, Any, Any]] = {}

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close_dispatcher()
        self._engines.clear()
        self._prepared.clear()

    async def _prepare(self, target: Target) -> tuple[Any, Any, Any]:
        """The engine, credentials and transport target for ``target`` (its address is looked
        up once per poll)."""
        prepared = self._prepared.get(target)
        if prepared is None:
            prepared = self._prepared[target] = await self._build(target)
        return prepared

    async def _build(self, target: Target) -> tuple[Any, Any, Any]:
        key = target.credentials()
        engine = self._engines.get(key)
        if engine is None:
            engine = self._engines[key] = hlapi.SnmpEngine()
        if target.version == "2c":
            auth = hlapi.CommunityData(target.community, mpModel=1)
        else:
            auth = hlapi.UsmUserData(
                target.user,
                authKey=target.auth_password,
                privKey=target.priv_password,
                authProtocol=_AUTH[target.auth_protocol],
                privProtocol=_PRIV[target.priv_protocol],
            )
        kind = hlapi.Udp6TransportTarget if ":" in target.address else hlapi.UdpTransportTarget
        transport = await kind.create(
            (target.address, target.port), timeout=target.timeout, retries=target.retries
        )
        return engine, auth, transport

    async def get(self, target: Target, oids: Sequence[Oid]) -> dict[Oid, Value]:
        engine, auth, transport = await self._prepare(target)
        error, status, index, varbinds = await hlapi.get_cmd(
            engine,
            auth,
            transport,
            hlapi.ContextData(),
            *(_request(oid) for oid in oids),
            lookupMib=False,
        )
        _check(target, error, status, index)
        got: dict[Oid, Value] = {}
        for oid, value in map(_plain, varbinds):
            if value is not None:
                got[oid] = value
        return got

    async def walk(
        self, target: Target, columns: Sequence[Oid], max_repetitions: int
    ) -> dict[Oid, Value]:
        engine, auth, transport = await self._prepare(target)
        found: dict[Oid, Value] = {}
        walking = [(column, column) for column in columns]
        repetitions = max_repetitions
        requests = 0
        while walking:
            requests += 1
            if requests > MAX_REQUESTS:
                raise SnmpError(f"{target.address}:{target.port}: the walk did not end")
            error, status, index, varbinds = await hlapi.bulk_cmd(
                engine,
                auth,
                transport,
                hlapi.ContextData(),
                0,
                repetitions,
                *(_request(last) for _column, last in walking),
                lookupMib=False,
            )
            if not error and int(status) == _TOO_BIG and repetitions > 1:
                repetitions = max(1, repetitions // 2)
                continue
            _check(target, error, status, index)
            rows, walking = advance(walking, [_plain(vb) for vb in varbinds])
            found.update(rows)
        return found


def _request(oid: Oid) -> tuple[Any, Any]:
    return rfc1902.ObjectName(oid), univ.Null("")


def _check(target: Target, error: Any, status: Any, index: Any) -> None:
    where = f"{target.address}:{target.port}"
    if error:
        raise SnmpError(f"{where}: {error}")
    if int(status):
        raise SnmpError(f"{where}: error status {status.prettyPrint()} at index {int(index)}")


def _plain(varbind: Any) -> tuple[Oid, Value | None]:
    """An OID and its value as plain Python; ``None`` for noSuchObject, noSuchInstance and
    endOfMibView (all derive from Null)."""
    name, value = varbind
    oid = tuple(int(part) for part in name)
    if isinstance(value, univ.Null):
        return oid, None
    if isinstance(value, univ.Integer):  # Integer32, Counter32/64, Gauge32, TimeTicks
        return oid, int(value)
    if isinstance(value, univ.OctetString):  # strings, IpAddress, Opaque
        return oid, bytes(value.asOctets())
    if isinstance(value, univ.ObjectIdentifier):
        return oid, ".".join(str(part) for part in value)
    return oid, None
