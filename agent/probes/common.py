"""What every probe shares: its result, its errors, name resolution, and the bounded runner.

``run_bounded`` runs many probes on one event loop, at most ``concurrency`` at a time, each
under its own ``asyncio.wait_for``: waiting for a slot does not count against a probe's timeout,
and a probe that hangs costs its own timeout and nothing more. Every probe holds at most one
socket while it runs, so open files stay bounded by the concurrency. ``run_loop`` runs one
cycle on a fresh event loop whose resolver threads are never waited for at the end.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple, TypeVar

import msgspec

__all__ = [
    "Job",
    "ProbeError",
    "ProbeResult",
    "resolve",
    "run_bounded",
    "run_loop",
    "short_error",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class ProbeError(Exception):
    """A probe failed for a reason it can name; the message is short (it ends up in a log)."""


class ProbeResult(msgspec.Struct, kw_only=True):
    """What one probe measured. ``None`` means "no value": its sample is left out."""

    success: bool
    duration: float = 0.0
    error: str = ""
    rtt_min: float | None = None
    rtt_avg: float | None = None
    rtt_max: float | None = None
    jitter: float | None = None
    loss: float | None = None
    http_status: int | None = None
    ttfb: float | None = None
    cert_days_left: float | None = None
    dns_answers: int | None = None


class Job(NamedTuple):
    """One probe to run: a factory of its coroutine, and how long it may take at most."""

    run: Callable[[], Awaitable[ProbeResult]]
    timeout: float


_ERRNO_TEXT = {
    errno.ECONNREFUSED: "refused",
    errno.ECONNRESET: "reset",
    errno.ETIMEDOUT: "timeout",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.EADDRNOTAVAIL: "address not available",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def short_error(exc: BaseException) -> str:
    """A few words for why a probe failed: ``refused``, ``timeout``, ``name not resolved``..."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, socket.gaierror):
        return "name not resolved"
    if isinstance(exc, ProbeError):
        return str(exc)
    if isinstance(exc, OSError):
        if exc.errno in _ERRNO_TEXT:
            return _ERRNO_TEXT[exc.errno]
        return (exc.strerror or type(exc).__name__).lower()
    return f"{type(exc).__name__}: {exc}"[:120]


async def resolve(host: str, port: int, family: int = socket.AF_UNSPEC) -> tuple[int, Any]:
    """``(family, sockaddr)`` for a host name or address; literals skip the resolver."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        fam = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        if family not in (socket.AF_UNSPEC, fam):
            raise ProbeError(f"{host} is not an IPv4 address")
        return (fam, (str(ip), port)) if fam == socket.AF_INET else (fam, (str(ip), port, 0, 0))
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    if not infos:
        raise ProbeError("name not resolved")
    fam, _, _, _, sockaddr = infos[0]
    return fam, sockaddr


async def _one(job: Job, slots: asyncio.Semaphore) -> ProbeResult:
    async with slots:
        started = time.perf_counter()
        try:
            result = await asyncio.wait_for(job.run(), job.timeout)
        except (OSError, ProbeError) as exc:  # TimeoutError is an OSError
            result = ProbeResult(success=False, error=short_error(exc))
        except Exception as exc:  # a bug in one probe must not cost the others
            logger.debug("probe raised", exc_info=True)
            result = ProbeResult(success=False, error=short_error(exc))
        result.duration = time.perf_counter() - started
        return result


async def run_bounded(jobs: Sequence[Job], concurrency: int) -> list[ProbeResult]:
    """Run every job, at most ``concurrency`` at once; results in the order of ``jobs``."""
    slots = asyncio.Semaphore(concurrency)
    return list(await asyncio.gather(*(_one(job, slots) for job in jobs)))


def run_loop(main: Coroutine[Any, Any, T], threads: int) -> T:
    """Run ``main`` on a new event loop with ``threads`` resolver threads, then close it.

    Unlike ``asyncio.run``, a name lookup stuck in a resolver thread is not waited for: the
    probe that asked has already timed out, and the thread ends on its own.
    """
    loop = asyncio.new_event_loop()
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="outpost-probes")
    loop.set_default_executor(executor)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            loop.close()
