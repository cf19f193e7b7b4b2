"""A TCP proxy for tests: it sits between clients and a server on loopback and plays the link.

Modes, switchable while connections are open (:meth:`NetProxy.set_mode`):

- ``pass``: forward both ways.
- ``drop``: reset every connection (RST both ways) and refuse new ones (the listening socket
  is closed until the mode changes; the proxy keeps its port).
- ``blackhole``: a silent partition. Open connections stay open and new ones are accepted,
  but nothing is forwarded either way, not even a close, so only a keepalive can tell. When
  the mode changes again, every connection that lived through the partition is reset: both
  ends gave up on it long ago, and what either sent into it is gone.
- ``throttle``: forward at most ``rate`` bytes/s each way and deliver each chunk ``latency``
  seconds (one way) after it was read. The proxy holds at most ``buffer_bytes`` a direction,
  so a slow link pushes back on the sender as a real one does.

The bytes delivered each way are counted (``bytes_up``: client to server, ``bytes_down``:
server to client), and so are connections accepted and reset.
"""

from __future__ import annotations

import contextlib
import errno
import random
import select
import socket
import struct
import threading
import time
from collections import deque

__all__ = ["BLACKHOLE", "DROP", "MODES", "PASS", "THROTTLE", "NetProxy"]

PASS, DROP, BLACKHOLE, THROTTLE = "pass", "drop", "blackhole", "throttle"
MODES = (PASS, DROP, BLACKHOLE, THROTTLE)
_TICK = 0.05  # how often blocked threads look at the mode and at closed connections
_LINGER_RESET = struct.pack("ii", 1, 0)  # close() then sends RST instead of FIN


class NetProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1",
                 buffer_bytes: int = 64 * 1024) -> None:  # fmt: skip
        self.target = (target_host, target_port)
        self.buffer_bytes = buffer_bytes
        self.port = 0
        self.mode = PASS
        self.rate = 0.0
        self.latency = 0.0
        self.bytes_up = 0
        self.bytes_down = 0
        self.accepted = 0
        self.resets = 0
        self.cond = threading.Condition()
        self._links: set[_Link] = set()
        self._listener: socket.socket | None = None
        self._stopped = False
        self._last_moved = 0.0
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> NetProxy:
        with self.cond:
            self._listen()
        self._thread = threading.Thread(target=self._accept_loop, name="netproxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self.cond:
            self._stopped = True
            self._close_listener()
            links = list(self._links)
            self.cond.notify_all()
        for link in links:
            link.close(reset=True)
        if self._thread is not None:
            self._thread.join(5)
        for link in links:
            link.join(5)

    def set_mode(self, mode: str, *, rate: float = 0.0, latency: float = 0.0,
                 quiet: float = 0.0, timeout: float = 30.0) -> None:  # fmt: skip
        """Switch the link; ``rate`` (bytes/s, > 0) and ``latency`` (s) are for ``throttle``.
        With ``quiet``, switch at the first moment no byte has moved either way for that
        long (so that, say, no message is caught half-way), waiting up to ``timeout``."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        if mode == THROTTLE and rate <= 0:
            raise ValueError("throttle needs a rate in bytes/s above 0")
        deadline = time.monotonic() + timeout
        with self.cond:
            while quiet and not self._quiet(quiet):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the link was never quiet for {quiet} s")
                self.cond.wait(quiet / 5)
            old, self.mode = self.mode, mode
            self.rate, self.latency = (rate, latency) if mode == THROTTLE else (0.0, 0.0)
            doomed: set[_Link] = set()
            if mode == DROP:
                self._close_listener()
                doomed |= self._links
            elif old == DROP:
                self._listen()
            if mode == BLACKHOLE:
                for link in self._links:
                    link.partitioned = True
            elif old == BLACKHOLE:
                doomed |= {link for link in self._links if link.partitioned}
            self.cond.notify_all()
        for link in doomed:
            link.close(reset=True)

    def _quiet(self, seconds: float) -> bool:
        """Nothing moved for ``seconds``, nothing waits in the proxy or unread in a socket;
        under the lock."""
        if time.monotonic() - self._last_moved < seconds:
            return False
        socks = []
        for link in self._links:
            if any(pipe.queue for pipe in link.pipes):
                return False
            socks += [s for s in (link.client, link.server) if s is not None]
        try:
            readable, _, _ = select.select(socks, [], [], 0)
        except (OSError, ValueError):
            return False  # a connection is closing: look again
        return not readable

    def open_connections(self) -> int:
        with self.cond:
            return len(self._links)

    # --- inside -----------------------------------------------------------------------------

    def _listen(self) -> None:
        """Open the listening socket (on the proxy's port once it has one); under the lock.

        The port comes from below the kernel's ephemeral range: while ``drop`` has it closed,
        no outgoing connection can be given it (nor connect to itself on it, which a client
        retrying a closed ephemeral port on loopback now and then does)."""
        ports = [self.port] if self.port else _ports_below_ephemeral()
        deadline = time.monotonic() + 5
        while True:
            port = ports[0]
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
                break
            except OSError as exc:
                sock.close()
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                if len(ports) > 1:
                    ports.pop(0)
                else:
                    time.sleep(_TICK)
        sock.listen(64)
        sock.setblocking(False)
        self.port = int(sock.getsockname()[1])
        self._listener = sock

    def _close_listener(self) -> None:
        if self._listener is not None:
            # shutdown first: the accept thread's select holds the socket open until it
            # returns, and would let connections in meanwhile (then reset, not refused).
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None

    def _accept_loop(self) -> None:
        while True:
            with self.cond:
                if self._stopped:
                    return
                listener = self._listener
                if listener is None:
                    self.cond.wait(_TICK)
                    continue
            try:
                ready, _, _ = select.select([listener], [], [], _TICK)
                if not ready:
                    continue
                client, _ = listener.accept()
            except (OSError, ValueError):
                continue  # closed meanwhile (drop mode or stop), or the peer went away
            client.setblocking(False)
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        with self.cond:
            if self._stopped or self.mode == DROP:
                _reset(client)
                return
            self.accepted += 1
            link = _Link(self, client)
            self._links.add(link)
            if self.mode == BLACKHOLE:
                link.partitioned = True  # held, never connected upstream
                return
        link.connect()

    def _forget(self, link: _Link, reset: bool) -> None:
        with self.cond:
            self._links.discard(link)
            if reset:
                self.resets += 1
            self.cond.notify_all()

    def _count(self, up: bool, n: int) -> None:
        with self.cond:
            self._last_moved = time.monotonic()
            if up:
                self.bytes_up += n
            else:
                self.bytes_down += n


def _ports_below_ephemeral(count: int = 200) -> list[int]:
    """Random candidate ports below the kernel's ephemeral range (Linux; 32768 elsewhere)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    low = max(low, 2048)
    return random.sample(range(low // 2, low), min(count, low - low // 2))


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    sock.close()


class _Link:
    """One client connection and its connection to the server."""

    def __init__(self, proxy: NetProxy, client: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server: socket.socket | None = None
        self.partitioned = False
        self.closed = False
        self._lock = threading.Lock()
        self.pipes: list[_Pipe] = []

    def connect(self) -> None:
        try:
            server = socket.create_connection(self.proxy.target, timeout=5)
        except OSError:
            self.close(reset=True)
            return
        server.setblocking(False)
        with self._lock:
            if self.closed:
                server.close()
                return
            self.server = server
            self.pipes = [_Pipe(self, self.client, server, True),
                           _Pipe(self, server, self.client, False)]  # fmt: skip
        for pipe in self.pipes:
            pipe.start()

    def close(self, reset: bool) -> None:
        """Close both sockets, with RST when ``reset``, else with a FIN."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            for sock in (self.client, self.server):
                if sock is None:
                    continue
                if reset:
                    _reset(sock)
                else:
                    sock.close()
        self.proxy._forget(self, reset)

    def join(self, timeout: float) -> None:
        for pipe in self.pipes:
            pipe.join(timeout)


class _Pipe:
    """One direction of a link: a reader that schedules chunks, a writer that delivers them."""

    def __init__(self, link: _Link, src: socket.socket, dst: socket.socket, up: bool) -> None:
        self.link = link
        self.src, self.dst, self.up = src, dst, up
        self.queue: deque[tuple[float, bytes]] = deque()  # (due, data); b"" is the end
        self.queued = 0
        self.free_at = 0.0  # when the throttled link has sent what it was given
        self._threads = [
            threading.Thread(target=self._read, name="netproxy-read", daemon=True),
            threading.Thread(target=self._write, name="netproxy-write", daemon=True),
        ]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def join(self, timeout: float) -> None:
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)

    def _read(self) -> None:
        proxy, link = self.proxy, self.link
        while not link.closed:
            with proxy.cond:
                full = self.queued >= proxy.buffer_bytes
                if proxy.mode == BLACKHOLE or full:
                    proxy.cond.wait(_TICK)
                    continue
                rate = proxy.rate
            chunk = max(256, int(rate / 20)) if rate else 64 * 1024
            try:
                ready, _, _ = select.select([self.src], [], [], _TICK)
                if not ready:
                    continue
                data = self.src.recv(chunk)
            except BlockingIOError:
                continue
            except (OSError, ValueError):
                link.close(reset=True)
                return
            now = time.monotonic()
            with proxy.cond:
                if proxy.rate:
                    start = max(now, self.free_at)
                    self.free_at = start + len(data) / proxy.rate
                    due = self.free_at + proxy.latency
                else:
                    due = now
                self.queue.append((due, data))
                self.queued += len(data)
                proxy._last_moved = now
                proxy.cond.notify_all()
            if not data:
                return  # the end: the writer closes the link once the rest is delivered

    def _write(self) -> None:
        proxy, link = self.proxy, self.link
        while True:
            with proxy.cond:
                while not link.closed and (not self.queue or proxy.mode == BLACKHOLE):
                    proxy.cond.wait(_TICK)
                if link.closed:
                    return
                due, data = self.queue[0]
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, _TICK))
                continue
            if not data:
                link.close(reset=False)
                return
            if not self._send(data):
                link.close(reset=True)
                return
            with proxy.cond:
                self.queue.popleft()
                self.queued -= len(data)
                proxy.cond.notify_all()
            proxy._count(self.up, len(data))

    def _send(self, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            if self.link.closed:
                return False
            try:
                _, ready, _ = select.select([], [self.dst], [], _TICK)
                if ready:
                    view = view[self.dst.send(view) :]
            except BlockingIOError:
                continue
            except (OSError, ValueError):
                return False
        return True

    @property
    def proxy(self) -> NetProxy:
        return self.link.proxy
