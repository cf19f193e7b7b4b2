"""Decoding a metrics batch: outpost.wire (msgspec, typed, fully validated) against the
standard library's json.loads (untyped, validating nothing), on the same payloads.

    python bench/decode.py --rounds 20000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from outpost import wire


def payload(samples: int) -> bytes:
    rx = "outpost_network_receive_bytes_total"
    items = [wire.Sample(rx, float(i * 1000), {"interface": f"eth{i}"}) for i in range(samples)]
    batch = wire.Batch(v=1, site="s1", host="h1", agent_id="a" * 32, boot_id="b" * 36,
                       seq=42, ts=1_700_000_000_000, outbox_low=40, interval=15.0,
                       samples=items)  # fmt: skip
    return wire.encode(batch)


def best_of(fn: object, rounds: int, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(rounds):
            fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return best / rounds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20_000)
    ap.add_argument("--samples", type=int, default=50)
    args = ap.parse_args()
    data = payload(args.samples)
    parts = wire.TopicParts("s1", "h1", "metrics")
    limits = wire.Limits()
    ours = best_of(lambda: wire.decode_batch(data, parts, limits), args.rounds)
    anchor = best_of(lambda: json.loads(data), args.rounds)
    print(json.dumps({
        "payload_bytes": len(data),
        "samples": args.samples,
        "anchor_json_loads_us": round(anchor * 1e6, 2),
        "wire_decode_batch_validated_us": round(ours * 1e6, 2),
        "ratio_validated_to_anchor": round(ours / anchor, 3),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
