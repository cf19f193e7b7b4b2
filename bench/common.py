"""What the benchmarks share: loopback ports, /proc readings, stopping processes by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User and system CPU of the process and of the children it has waited for (a
    ``journalctl`` the agent runs counts as the agent's)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / TICK


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def mosquitto_conf(path: Path, port: int, extra: str = "") -> Path:
    """A loopback-only anonymous broker config for a benchmark run."""
    path.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n{extra}"
        + ("user root\n" if os.geteuid() == 0 else "")
    )
    return path


def row(
    what: str,
    figure: float,
    unit: str,
    *,
    anchor_name: str,
    anchor: float | None,
    target: str,
    met: bool | None,
    ratio: float | None = None,
) -> dict[str, object]:
    """One line of the benchmark table that ``bench/run.py`` prints.

    ``figure`` is what Outpost measured, ``anchor`` what the anchor measured side by side in the
    same run (in the same ``unit``), ``ratio`` figure/anchor unless given, ``target`` the goal in
    words and ``met`` whether this run reached it (None when the run cannot tell, e.g. a smoke
    run). Every benchmark, run with ``--json``, prints ``{"rows": [row, ...], ...}``.
    """
    if ratio is None and anchor:
        ratio = figure / anchor
    return {
        "what": what,
        "figure": _sig(figure),
        "unit": unit,
        "anchor_name": anchor_name,
        "anchor": None if anchor is None else _sig(anchor),
        "ratio": None if ratio is None else _sig(ratio),
        "target": target,
        "met": met,
    }


def _sig(x: float) -> float:
    """Four significant digits (a rate of 31,234.6 stays 31,230; 0.004871 s stays so)."""
    return float(f"{x:.4g}")
