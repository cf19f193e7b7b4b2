"""Late samples to a Prometheus remote-write endpoint, with their original timestamps.

The exporter shows only each series' latest value, so a batch that arrives late (the backlog an
agent sends once its link is back) leaves a hole in Prometheus' history. When configured, the
collector offers every late batch's samples to a ``LateSampleForwarder``: ``offer`` only puts
them on a bounded queue (it never blocks ingest; what does not fit is counted and dropped) and
a worker thread sends them in requests of at most ``max_samples_per_request`` samples.

Protocol: Prometheus remote write 1.0. An HTTP POST whose body is a ``prometheus.WriteRequest``
protobuf (encoded here by hand) compressed with snappy's block format (also here). A 2xx answer
means sent; 429, 5xx and connection errors are retried with exponential backoff, for as long as
it takes (meanwhile the queue fills up to its bound); any other answer (a 400 for samples
outside the endpoint's out-of-order window, say) drops the request's samples, counted.

Counters (``stats()``; docs/metrics.md): ``outpost_remote_write_samples_total{result}`` with
``result`` ``sent``, ``failed`` (refused by the endpoint), ``dropped`` (queue full, a reserved
label, or still queued at stop); ``outpost_remote_write_retries_total`` (requests sent again);
``outpost_remote_write_queue_samples`` (samples waiting).
"""

from __future__ import annotations

import base64
import logging
import struct
import threading
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Annotated

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collector.catalogue import (
    ALERTING_FAMILIES,
    CATALOGUE,
    COLLECTOR_FAMILIES,
    REMOTE_WRITE_FAMILIES,
)
from outpost.wire import Sample

__all__ = [
    "BasicAuth",
    "ForwarderStats",
    "LateSampleForwarder",
    "RemoteWriteConfig",
    "RemoteWriteError",
    "encode_write_request",
    "http_sender",
    "snappy_compress",
]

log = logging.getLogger(__name__)

HEADERS = {
    "Content-Encoding": "snappy",
    "Content-Type": "application/x-protobuf",
    "User-Agent": "outpost-collector",
    "X-Prometheus-Remote-Write-Version": "0.1.0",
}
# Labels the collector sets itself; a sample carrying one is not forwarded.
RESERVED_LABELS = frozenset({"__name__", "site", "host"})

# (sorted labels including __name__, timestamp ms, value)
Series = tuple[tuple[str, str], ...]
Point = tuple[Series, int, float]
# POSTs a body; returns the HTTP status, raises OSError when the endpoint cannot be reached.
Sender = Callable[[bytes], int]


class RemoteWriteError(Exception):
    """A remote-write setting that cannot be used (a credentials file that cannot be read)."""


class BasicAuth(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    username: Annotated[str, msgspec.Meta(min_length=1)]
    password_file: Annotated[str, msgspec.Meta(min_length=1)]


class RemoteWriteConfig(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``remote_write:`` in the collector's config; absent, nothing is forwarded."""

    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s]+$")]
    timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    bearer_token_file: str | None = None
    basic_auth: BasicAuth | None = None
    max_samples_per_request: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 2000
    queue_samples: Annotated[int, msgspec.Meta(ge=1, le=100_000_000)] = 200_000
    retry_min_seconds: Annotated[float, msgspec.Meta(gt=0, le=600)] = 0.5
    retry_max_seconds: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 30.0
    # A batch is late when it arrives more than this after its ``ts``; unset: twice the
    # batch's own ``interval`` (``default_late_after_seconds`` when it carries none).
    late_after_seconds: Annotated[float, msgspec.Meta(gt=0)] | None = None
    default_late_after_seconds: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    # Added to every series so that it is the scraped one: ``job`` and ``instance`` as
    # Prometheus sets them when it scrapes the collector (instance: the scrape target).
    labels: dict[str, str] = msgspec.field(default_factory=lambda: {"job": "outpost"})

    def __post_init__(self) -> None:
        if self.bearer_token_file is not None and self.basic_auth is not None:
            raise ValueError("remote_write: set bearer_token_file or basic_auth, not both")
        if self.retry_max_seconds < self.retry_min_seconds:
            raise ValueError("remote_write: retry_max_seconds is below retry_min_seconds")
        bad = sorted(set(self.labels) & RESERVED_LABELS)
        if bad:
            raise ValueError(f"remote_write.labels: {bad} are set by the collector")


class ForwarderStats(msgspec.Struct, frozen=True):
    """A snapshot of the counters, for the exporter."""

    sent: int = 0
    failed: int = 0
    dropped: int = 0
    retries: int = 0
    queued: int = 0


# --- protobuf (prometheus.WriteRequest), by hand ------------------------------------------


def _varint(n: int) -> bytes:
    """Unsigned base-128 varint; a negative int64 as its 64-bit two's complement."""
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _field_bytes(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _label(name: str, value: str) -> bytes:
    return _field_bytes(1, name.encode()) + _field_bytes(2, value.encode())


def _sample(ts_ms: int, value: float) -> bytes:
    # field 1, wire type 1 (fixed64, the double little-endian); field 2, varint
    return b"\x09" + struct.pack("<d", value) + b"\x10" + _varint(ts_ms)


def encode_write_request(series: Iterable[tuple[Series, Sequence[tuple[int, float]]]]) -> bytes:
    """A WriteRequest: for each series its labels (as given: sorted, ``__name__`` among them)
    and its (timestamp ms, value) samples."""
    out = bytearray()
    for labels, points in series:
        ts = b"".join(_field_bytes(1, _label(n, v)) for n, v in labels)
        ts += b"".join(_field_bytes(2, _sample(t, v)) for t, v in points)
        out += _field_bytes(1, ts)
    return bytes(out)


# --- snappy block format --------------------------------------------------------------------

_FRAGMENT = 1 << 16  # matches stay within 64 KiB fragments, so copy offsets fit in 2 bytes
_HASH_BITS = 14


def _literal(out: bytearray, data: bytes | memoryview) -> None:
    n = len(data) - 1
    if n < 60:
        out.append(n << 2)
    else:
        size = (n.bit_length() + 7) // 8  # 1 to 4 bytes
        out.append((59 + size) << 2)
        out += n.to_bytes(size, "little")
    out += data


def _copy(out: bytearray, offset: int, length: int) -> None:
    while length > 0:
        # Copies of 4..11 bytes with an offset below 2048 have a 2-byte form; anything else a
        # 3-byte one of at most 64 bytes (never leave a tail under 4 for the short form).
        if 4 <= length <= 11 and offset < 2048:
            out.append(1 | (length - 4) << 2 | (offset >> 8) << 5)
            out.append(offset & 0xFF)
            return
        n = min(length, 64)
        if 0 < length - n < 4:
            n = length - 4
        out.append(2 | (n - 1) << 2)
        out += offset.to_bytes(2, "little")
        length -= n


def _compress_fragment(out: bytearray, data: bytes) -> None:
    table: dict[bytes, int] = {}
    end = len(data)
    pos = lit = 0
    while pos + 4 <= end:
        key = data[pos : pos + 4]
        cand = table.get(key)
        table[key] = pos
        if cand is None:
            pos += 1
            continue
        length = 4
        while pos + length < end and data[cand + length] == data[pos + length]:
            length += 1
        if lit < pos:
            _literal(out, data[lit:pos])
        _copy(out, pos - cand, length)
        pos += length
        lit = pos
    if lit < end:
        _literal(out, data[lit:end])


def snappy_compress(data: bytes) -> bytes:
    """Snappy's block format: the uncompressed length as a varint, then literal and copy
    elements (a greedy matcher on 4-byte prefixes, each 64 KiB fragment on its own)."""
    out = bytearray(_varint(len(data)))
    for start in range(0, len(data), _FRAGMENT):
        _compress_fragment(out, data[start : start + _FRAGMENT])
    return bytes(out)


# --- transport ------------------------------------------------------------------------------


def _read_secret(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise RemoteWriteError(f"remote_write.{what} {path}: {exc.strerror or exc}") from exc


def http_sender(config: RemoteWriteConfig) -> Sender:
    """POSTs to ``config.url`` (credentials read now, once)."""
    headers = dict(HEADERS)
    if config.bearer_token_file is not None:
        token = _read_secret(config.bearer_token_file, "bearer_token_file")
        headers["Authorization"] = f"Bearer {token}"
    if config.basic_auth is not None:
        password = _read_secret(config.basic_auth.password_file, "basic_auth.password_file")
        pair = f"{config.basic_auth.username}:{password}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")

    def send(body: bytes) -> int:
        req = urllib.request.Request(config.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=config.timeout_seconds) as resp:
                resp.read()
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read(512).decode("utf-8", "replace").strip()
            log.debug("remote write: HTTP %d: %s", exc.code, detail)
            return int(exc.code)

    return send


# Names the collector exports itself (or prometheus-client does): an agent's sample with one of
# them is not exported, so it is not forwarded either.
_TAKEN = set(COLLECTOR_FAMILIES) | set(ALERTING_FAMILIES) | set(REMOTE_WRITE_FAMILIES)
_BLOCKED = frozenset({m.removesuffix("_total") for m in _TAKEN} | _TAKEN)


def forwardable(sample: Sample) -> bool:
    """Whether a sample of a late batch may go to the endpoint: what the exporter would show
    (no name of the collector's own, no label the collector sets, no negative counter)."""
    name = sample.name
    if name in _BLOCKED or name.removesuffix("_total") in _BLOCKED:
        return False
    if name.startswith(("process_", "python_")):
        return False
    if name.endswith("_total") and sample.value < 0:
        return False
    return sample.labels.keys().isdisjoint(RESERVED_LABELS)


class ForwarderMetrics:
    """The forwarder's counters for the collector's own registry (prometheus-client)."""

    def __init__(self, forwarder: LateSampleForwarder) -> None:
        self.forwarder = forwarder

    def collect(self) -> Iterator[Metric]:
        st = self.forwarder.stats()
        samples = CounterMetricFamily(
            "outpost_remote_write_samples",
            CATALOGUE["outpost_remote_write_samples_total"],
            labels=["result"],
        )
        for result in ("sent", "failed", "dropped"):
            samples.add_metric([result], float(getattr(st, result)))
        yield samples
        yield CounterMetricFamily(
            "outpost_remote_write_retries",
            CATALOGUE["outpost_remote_write_retries_total"],
            value=float(st.retries),
        )
        yield GaugeMetricFamily(
            "outpost_remote_write_queue_samples",
            CATALOGUE["outpost_remote_write_queue_samples"],
            value=float(st.queued),
        )


def _retryable(status: int) -> bool:
    return status == 429 or status >= 500


# --- the forwarder --------------------------------------------------------------------------


class LateSampleForwarder:
    """Queues late samples (``offer``, from the ingest thread) and sends them (its worker)."""

    def __init__(self, config: RemoteWriteConfig, sender: Sender | None = None) -> None:
        self.config = config
        self._sender = sender
        self._extra = tuple(sorted(config.labels.items()))
        self._queue: deque[Point] = deque()
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._sent = self._failed = self._dropped = self._retries = 0

    # Called by ingest: pure bookkeeping under a short lock, never waits for the network.
    def is_late(self, batch_ts_ms: int, received_at: float, interval: float = 0.0) -> bool:
        """Whether a batch collected at ``batch_ts_ms`` and received at ``received_at`` (Unix
        seconds) is late (see ``late_after_seconds``)."""
        after = self.config.late_after_seconds
        if after is None:
            after = 2 * interval if interval > 0 else self.config.default_late_after_seconds
        return received_at * 1000 - batch_ts_ms > after * 1000

    def offer(
        self,
        site: str,
        host: str,
        batch_ts_ms: int,
        samples: Sequence[Sample],
        received_at: float,
        interval: float = 0.0,
    ) -> int:
        """Queue a batch's samples if the batch is late; the number queued. A sample's own
        ``ts`` wins over the batch's. Samples that do not fit in the queue, or carry a label
        the collector sets, are counted as dropped."""
        if not samples or not self.is_late(batch_ts_ms, received_at, interval):
            return 0
        points: list[Point] = []
        bad = 0
        for s in samples:
            if not forwardable(s):
                bad += 1
                continue
            labels = {**self.config.labels, **s.labels, "site": site, "host": host}
            labels["__name__"] = s.name
            ts = batch_ts_ms if s.ts is None else s.ts
            points.append((tuple(sorted(labels.items())), ts, s.value))
        with self._cond:
            room = max(0, self.config.queue_samples - len(self._queue))
            taken = points[:room]
            self._queue.extend(taken)
            self._dropped += bad + len(points) - len(taken)
            if taken:
                self._cond.notify()
        if len(taken) < len(points):
            log.warning(
                "remote write: queue full (%d samples), dropped %d of %s/%s",
                self.config.queue_samples,
                len(points) - len(taken),
                site,
                host,
            )
        return len(taken)

    def stats(self) -> ForwarderStats:
        with self._cond:
            return ForwarderStats(
                sent=self._sent,
                failed=self._failed,
                dropped=self._dropped,
                retries=self._retries,
                queued=len(self._queue),
            )

    def start(self) -> LateSampleForwarder:
        """Start the worker (reads the credentials files: RemoteWriteError when it cannot)."""
        if self._sender is None:
            self._sender = http_sender(self.config)
        self._thread = threading.Thread(target=self._run, name="remote-write", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker: the request in flight ends (within ``timeout_seconds``), no more
        retries; what is still queued is counted as dropped."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        with self._cond:
            self._dropped += len(self._queue)
            self._queue.clear()

    # The worker.
    def _take(self) -> list[Point]:
        with self._cond:
            while not self._queue and not self._stopping.is_set():
                self._cond.wait()
            n = min(len(self._queue), self.config.max_samples_per_request)
            return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        while not self._stopping.is_set():
            points = self._take()
            if points:
                self._deliver(points)

    def _deliver(self, points: list[Point]) -> None:
        by_series: dict[Series, list[tuple[int, float]]] = {}
        for labels, ts, value in points:
            by_series.setdefault(labels, []).append((ts, value))
        body = snappy_compress(
            encode_write_request((k, sorted(v, key=lambda p: p[0])) for k, v in by_series.items())
        )
        assert self._sender is not None
        delay = self.config.retry_min_seconds
        while True:
            try:
                status = self._sender(body)
                reason = f"HTTP {status}"
            except OSError as exc:
                status, reason = 0, str(exc)
            if 200 <= status < 300:
                outcome = "sent"
            elif status and not _retryable(status):
                outcome = "failed"
                log.warning("remote write: %d samples refused: %s", len(points), reason)
            elif self._stopping.is_set():
                outcome = "dropped"
            else:
                with self._cond:
                    self._retries += 1
                log.info("remote write: %s; retrying in %.1f s", reason, delay)
                if not self._stopping.wait(delay):
                    delay = min(delay * 2, self.config.retry_max_seconds)
                    continue
                outcome = "dropped"
            with self._cond:
                if outcome == "sent":
                    self._sent += len(points)
                elif outcome == "failed":
                    self._failed += len(points)
                else:
                    self._dropped += len(points)
            return
