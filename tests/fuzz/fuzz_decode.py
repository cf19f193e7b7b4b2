"""Coverage-guided fuzzing of the collector's decode path: one MQTT message (topic and payload)
through the wire decoders and ``Ingest.handle``, as collector/mqtt.py hands it over.

An input is ``<topic>\\n<payload>``: the topic up to the first newline (UTF-8, or the name
collector/mqtt.py gives a topic that is not), the payload after it. A finding is any exception
other than ``DecodeFailure`` from a decoder, any exception at all from ``Ingest.handle``, an
accepted message that breaks the contract (docs/protocol.md), or a /metrics rendering that fails
on what was accepted.

    python tests/fuzz/fuzz_decode.py -max_total_time=60

With no corpus directory on the command line, the seed corpus (tests/fuzz/corpus) is read and
new inputs and crash files go to a temporary directory (named on stderr), never into the
repository; tests/fuzz/wire.dict is the default dictionary. Any other libFuzzer flag may be
given (``-runs=``, ``-jobs=``, ``-print_final_stats=1``...).
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
from pathlib import Path

import atheris

REPO = Path(__file__).resolve().parents[2]
SEEDS = Path(__file__).resolve().parent / "corpus"
DICT = Path(__file__).resolve().parent / "wire.dict"
sys.path.insert(0, str(REPO))

with atheris.instrument_imports(include=["outpost.wire", "collector.ingest", "collector.state",
                                         "collector.seqtrack", "collector.exporter"]):  # fmt: skip
    from prometheus_client import CollectorRegistry, generate_latest

    from collector.exporter import FleetCollector
    from collector.ingest import RESULTS, Ingest
    from collector.state import FleetState
    from outpost import wire

PREFIX = "outpost"
LIMITS = wire.Limits(max_payload_bytes=64 * 1024)
T0 = 1_700_000_000.0
RESET_EVERY = 2000  # inputs per collector state, so memory stays bounded


class _Discard(logging.Handler):
    """Formats every record (formatting is part of what runs on bad input), keeps none."""

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


class Harness:
    def __init__(self) -> None:
        self.runs = 0
        self.ingest = Ingest(FleetState(stale_after=60), LIMITS, PREFIX)

    def one(self, data: bytes) -> None:
        self.runs += 1
        if self.runs % RESET_EVERY == 0:
            self.ingest = Ingest(FleetState(stale_after=60), LIMITS, PREFIX)
        raw_topic, _, payload = data.partition(b"\n")
        try:
            topic = raw_topic.decode("utf-8")
        except UnicodeDecodeError:
            topic = "(not UTF-8)"
        parts = wire.parse_topic(PREFIX, topic)
        if parts is not None:
            assert wire.topic(PREFIX, parts.site, parts.host, parts.kind) == topic
        decoded = self.decode(parts, payload)
        now = T0 + self.runs  # a second apart: no sender goes over its rate
        result = self.ingest.handle(topic, payload, now)
        assert result in RESULTS, result
        if result == "accepted" and parts is not None and parts.kind != wire.STATUS:
            assert isinstance(decoded, wire.Batch), "the collector accepted what wire refuses"
            registry = CollectorRegistry()
            registry.register(FleetCollector(self.ingest, clock=lambda: now))
            generate_latest(registry)

    @staticmethod
    def decode(parts: wire.TopicParts | None, payload: bytes) -> object:
        try:
            if parts is not None and parts.kind == wire.STATUS:
                status = wire.decode_status(payload, parts, LIMITS)
                assert status.status in ("online", "offline")
                return status
            if parts is not None and parts.kind == wire.ACK:
                ack = wire.decode_ack(payload, LIMITS)
                assert ack.upto >= 0
                return ack
            batch = wire.decode_batch(payload, parts, LIMITS)
        except wire.DecodeFailure as exc:
            assert exc.reason and exc.reason.isidentifier(), exc.reason
            return exc
        assert wire.is_slug(batch.site) and wire.is_slug(batch.host)
        if parts is not None:
            assert (batch.site, batch.host) == (parts.site, parts.host)
        assert batch.seq >= 1 and 0 <= batch.outbox_low <= batch.seq
        for sample in batch.samples:
            assert math.isfinite(sample.value), sample
            assert len(sample.labels) <= LIMITS.max_labels
            for value in sample.labels.values():
                value.encode("utf-8")  # no lone surrogates get through
        return batch


def main(argv: list[str]) -> None:
    args = list(argv)
    workdir = None
    if not any(not a.startswith("-") for a in args[1:]):  # no corpus directory given
        workdir = tempfile.mkdtemp(prefix="outpost-fuzz-")
        args += [workdir, str(SEEDS)]  # new inputs go to the first one only
    if not any(a.startswith("-artifact_prefix=") for a in args):
        workdir = workdir or tempfile.mkdtemp(prefix="outpost-fuzz-")
        args.append(f"-artifact_prefix={workdir}/")
    if not any(a.startswith("-dict=") for a in args):
        args.append(f"-dict={DICT}")
    if workdir:
        print(f"fuzz_decode: new inputs and crash files go to {workdir}", file=sys.stderr)
    logging.basicConfig(level=logging.DEBUG, handlers=[_Discard()])
    harness = Harness()
    atheris.Setup(args, harness.one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
