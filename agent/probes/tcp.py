"""TCP connect: how long the three-way handshake takes, and whether it completes.

A refused connection (the host answered with a reset) and a timeout (nothing answered) are
both failures; the reason is kept in the result's short ``error`` (``refused``, ``timeout``,
``host unreachable``), which the source logs at debug, so no label is spent on it.
"""

from __future__ import annotations

import asyncio
import socket
import time

from agent.probes.common import ProbeResult, resolve

__all__ = ["tcp_probe"]


async def tcp_probe(host: str, port: int) -> ProbeResult:
    """Connect to ``host:port`` and close at once. ``rtt_avg`` is the connect time (name
    resolution excluded). Raises ``OSError`` when the connection fails."""
    family, sockaddr = await resolve(host, port)
    loop = asyncio.get_running_loop()
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        started = time.perf_counter()
        await loop.sock_connect(sock, sockaddr)
        connect = time.perf_counter() - started
    finally:
        sock.close()
    return ProbeResult(success=True, rtt_avg=connect, loss=0.0)
