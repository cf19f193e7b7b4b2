"""Probes source cost: one cycle of many TCP targets on loopback, against a sequential anchor.

Half the targets are ports that listen (served by a child process that accepts and closes, so
its CPU is not ours), half are closed ports. For each cycle of ``ProbesSource.collect`` the wall
time and this process's CPU time (``time.process_time``) are measured; the anchor, in the same
run, is the same targets probed with plain sequential blocking ``socket.create_connection``.
Loopback answers in microseconds, so the anchor is as fast as sequential probing can ever be:
the ratios show the event loop's overhead, not the gain from concurrency on real links.

    python bench/probes.py --targets 1000 --cycles 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import msgspec
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import free_port, stop

from agent.sources.probes import ProbesConfig, ProbesSource

# The child: listen on N ports, accept and close every connection, print the ports.
SERVER = """
import selectors, socket, sys
sel = selectors.DefaultSelector()
ports = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(4096); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ); ports.append(s.getsockname()[1])
print(" ".join(map(str, ports)), flush=True)
while True:
    for key, _ in sel.select():
        try:
            conn, _ = key.fileobj.accept()
            conn.close()
        except BlockingIOError:
            pass
"""


def anchor(addresses: list[tuple[str, int]], timeout: float) -> tuple[float, float, int]:
    """Sequential blocking connects: (wall seconds, CPU seconds, how many connected)."""
    import socket

    connected = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for address in addresses:
        try:
            socket.create_connection(address, timeout=timeout).close()
            connected += 1
        except OSError:
            pass
    return time.perf_counter() - wall0, time.process_time() - cpu0, connected


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--targets", type=int, default=1000)
    ap.add_argument("--cycles", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--ports", type=int, default=8, help="listening ports (and as many closed)")
    args = ap.parse_args()

    server = subprocess.Popen([sys.executable, "-c", SERVER, str(args.ports)],
                              stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert server.stdout is not None
        listening = [int(p) for p in server.stdout.readline().split()]
        closed = [free_port() for _ in range(args.ports)]
        addresses = [
            ("127.0.0.1", (listening if i % 2 == 0 else closed)[i // 2 % args.ports])
            for i in range(args.targets)
        ]
        targets = [
            {"name": f"t{i:05d}", "kind": "tcp", "address": host, "port": port}
            for i, (host, port) in enumerate(addresses)
        ]
        config = msgspec.convert(
            {"targets": targets, "concurrency": args.concurrency}, ProbesConfig
        )
        source = ProbesSource(config)
        source.collect(time.time())  # warm-up: imports, first TLS-free loop
        walls: list[float] = []
        cpus: list[float] = []
        with Progress(transient=True) as progress:
            task = progress.add_task("probe cycles", total=args.cycles)
            for _ in range(args.cycles):
                wall0, cpu0 = time.perf_counter(), time.process_time()
                samples = source.collect(time.time()).samples
                cpus.append(time.process_time() - cpu0)
                walls.append(time.perf_counter() - wall0)
                ok = sum(s.value for s in samples if s.name == "outpost_probe_success")
                reported = sum(1 for s in samples if s.name == "outpost_probe_success")
                if reported != args.targets or ok != (args.targets + 1) // 2:
                    raise SystemExit(f"cycle reported {reported} targets, {ok} up")
                progress.advance(task)
        anchor_wall, anchor_cpu, connected = anchor(addresses, config.timeout_seconds)
        if connected != (args.targets + 1) // 2:
            raise SystemExit(f"anchor connected {connected}")
    finally:
        stop(server)

    wall, cpu = statistics.median(walls), statistics.median(cpus)
    result = {
        "targets": args.targets,
        "concurrency": args.concurrency,
        "cycles": args.cycles,
        "cycle_wall_ms": round(wall * 1000, 1),
        "cycle_wall_ms_min": round(min(walls) * 1000, 1),
        "cycle_cpu_ms": round(cpu * 1000, 1),
        "cpu_us_per_target": round(cpu / args.targets * 1e6, 1),
        "anchor_sequential_wall_ms": round(anchor_wall * 1000, 1),
        "anchor_sequential_cpu_ms": round(anchor_cpu * 1000, 1),
        "ratio_wall_to_anchor": round(wall / anchor_wall, 2),
        "ratio_cpu_to_anchor": round(cpu / anchor_cpu, 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
