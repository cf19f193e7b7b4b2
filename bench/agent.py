"""Agent footprint: steady-state RSS and CPU per cycle, against anchors run side by side.

A real mosquitto, collector and agent run on loopback; after a warm-up, the agent's RSS and CPU
time are read from /proc over a number of cycles. Anchors, measured in the same run:
- a bare Python process that imports psutil, paho and yaml and collects once;
- prometheus-node-exporter (Debian's package), if it is installed: RSS after scrapes.

    python bench/agent.py --cycles 40 --interval 0.25
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import cpu_seconds, free_port, mosquitto_conf, rss_mb, stop, wait_port


def python_anchor() -> float:
    code = (
        "import psutil, paho.mqtt.client, yaml, sys\n"
        "psutil.cpu_times(); psutil.virtual_memory(); psutil.net_io_counters(pernic=True)\n"
        "print('ready', flush=True); sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE)  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.readline()
    rss = rss_mb(proc.pid)
    proc.stdin.close()
    proc.wait(10)
    return rss


def node_exporter_anchor(scrapes: int) -> tuple[float, float] | None:
    exe = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
    if not exe:
        return None
    port = free_port()
    proc = subprocess.Popen([exe, f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        wait_port(port)
        c0 = cpu_seconds(proc.pid)
        for _ in range(scrapes):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                r.read()
        cpu = (cpu_seconds(proc.pid) - c0) / scrapes
        return rss_mb(proc.pid), cpu
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--interval", type=float, default=0.25)
    args = ap.parse_args()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            port, hport = free_port(), free_port()
            conf = Path(tmp) / "m.conf"
            mosquitto_conf(conf, port)
            procs.append(subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL))
            wait_port(port)
            py = [sys.executable, "-m", "outpost"]
            url = f"mqtt://127.0.0.1:{port}"
            procs.append(subprocess.Popen(
                [*py, "collector", "run", "--broker", url, "--listen", f"127.0.0.1:{hport}",
                 "--state-dir", f"{tmp}/c"], stderr=subprocess.DEVNULL))  # fmt: skip
            wait_port(hport)
            agent = subprocess.Popen(
                [*py, "agent", "run", "--broker", url, "--site", "bench", "--host", "h1",
                 "--state-dir", f"{tmp}/a", "--interval", str(args.interval)],
                stderr=subprocess.DEVNULL)  # fmt: skip
            procs.append(agent)
            time.sleep(5 * args.interval + 2)  # warm-up: imports done, first cycles acked
            c0, t0 = cpu_seconds(agent.pid), time.monotonic()
            peak = 0.0
            with Progress(transient=True) as progress:
                task = progress.add_task("agent cycles", total=args.cycles)
                for i in range(args.cycles):
                    time.sleep(args.interval)
                    peak = max(peak, rss_mb(agent.pid))
                    progress.update(task, completed=i + 1)
            cycles = (time.monotonic() - t0) / args.interval
            cpu_per_cycle = (cpu_seconds(agent.pid) - c0) / cycles
            rss = rss_mb(agent.pid)
        finally:
            for p in reversed(procs):
                stop(p)
    anchor_py = python_anchor()
    ne = node_exporter_anchor(scrapes=20)
    result: dict[str, object] = {
        "agent_rss_mb": round(rss, 1),
        "agent_peak_rss_mb": round(peak, 1),
        "agent_cpu_ms_per_cycle": round(cpu_per_cycle * 1000, 2),
        "anchor_python_imports_rss_mb": round(anchor_py, 1),
        "ratio_rss_to_python_anchor": round(rss / anchor_py, 2),
    }
    if ne is not None:
        result["anchor_node_exporter_rss_mb"] = round(ne[0], 1)
        result["anchor_node_exporter_cpu_ms_per_scrape"] = round(ne[1] * 1000, 2)
        result["ratio_rss_to_node_exporter"] = round(rss / ne[0], 2)
    else:
        result["anchor_node_exporter"] = "not installed (apt-get install prometheus-node-exporter)"
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
