"""Agent footprint: steady-state RSS and CPU per collection cycle, against
prometheus-node-exporter measured in the same run.

The agent runs as its systemd unit runs it (deploy/systemd/outpost-agent.service): the
``outpost`` command next to this Python, ``agent run --config FILE --log-format json``, with
the unit's ``Environment=`` (none at present) and its Python code compiled to bytecode first,
as installing the package does. It reports to a real mosquitto and collector on loopback, so
every cycle is collected, encoded, written to the outbox, published and acknowledged.

Fast cycles (``--interval``, 0.25 s) measure the work of a cycle, twice, one run after the
other: with the default sources (system, security, and probes and snmp with nothing
configured) and without the security source. The security checks that run every 60 s at the
default 15 s cycle (listening ports, watched files) run every 4th cycle here too. Then, unless
``--slow-cycles 0``, 4 cycles at the default 15 s with the default sources: the work of a
cycle plus what the agent costs while it waits for the next one.

Each process is measured over whole cycles, from half an interval after one cycle to half an
interval after the last: RSS is read at each of those midpoints (the median is the steady
state; the peak is shown too), CPU time from /proc/PID/task/*/schedstat (nanoseconds) of the
process and of the children it keeps (journalctl, where the auth log is the journal). The
children's RSS is shown apart.

prometheus-node-exporter (Debian's package, default collectors) runs alone afterwards and is
scraped once per interval, as many times as the agent ran cycles, and read the same way: its
RSS after as many scrapes as the agent's cycles, its CPU per scrape. Without it the anchors
are None and the output says so. Also measured, for the floor under any Python agent: the
interpreter alone, with and without its site start-up; a Python that imports psutil, paho and
yaml and collects once; and one with psutil, paho, msgspec, yaml and sqlite3 loaded and a
database open.

    python bench/agent.py                       # 40 fast cycles, then 4 of 15 s (~4 minutes)
    python bench/agent.py --slow-cycles 0       # the fast cycles only (~1 minute)
    python bench/agent.py --smoke --json        # 12 fast cycles, default sources only (~20 s)

Exit codes: 0 measured (a missed target is shown, not an error), 1 a process would not start.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import free_port, mosquitto_conf, row, rss_mb, stop, wait_port

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "deploy" / "systemd" / "outpost-agent.service"

DEFAULT_INTERVAL = 15.0  # the agent's default cycle; the 60 s security checks scale with it
CPU_TARGET_MS = 2.0
CPU_TARGET = "< 2 ms and < ¼ of node-exporter"
AGENT_ARGS = "agent run --config FILE --log-format json"  # as ExecStart= in the unit


# --- /proc readings ---------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The live child processes of ``pid`` (of any of its threads)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            out += [int(c) for c in task.read_text().split()]
        except OSError:
            continue
    return out


def task_cpu_ns(pid: int) -> int:
    """CPU time of every live thread of ``pid``, in nanoseconds (schedstat: user and system)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            total += int(task.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def tree_cpu_ns(pid: int) -> int:
    """CPU of ``pid`` and of the children it keeps, in nanoseconds."""
    return task_cpu_ns(pid) + sum(task_cpu_ns(c) for c in children(pid))


def tick_cpu_s(pid: int) -> float:
    """User and system CPU of the whole process from /proc/PID/stat (clock ticks): a check on
    the schedstat sum, which cannot see threads that have ended."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:13]) / os.sysconf("SC_CLK_TCK")


def memory_mb(pid: int) -> dict[str, float]:
    """Rss, Pss, anonymous and file-backed resident memory in MB, and the thread count."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        if key in ("Rss", "Pss", "Pss_Anon", "Pss_File"):
            out[key.lower()] = round(int(rest.split()[0]) / 1024, 1)
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            out[key.lower()] = round(int(rest.split()[0]) / 1024, 1)
        elif key == "Threads":
            out["threads"] = int(rest.split()[0])
    return out


def _rss_or_0(pid: int) -> float:
    try:
        return rss_mb(pid)
    except OSError:  # it has just exited
        return 0.0


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


# --- one measured process ---------------------------------------------------------------------


def measure(
    pid: int,
    first: float,
    warmup: int,
    cycles: int,
    interval: float,
    tick: Callable[[], None] | None,
    progress: Progress,
    label: str,
) -> dict[str, Any]:
    """Measure ``pid``, whose cycles come at ``first + k * interval`` (``tick``, when given,
    is called at those times: a scrape). The window runs from half an interval after cycle
    ``warmup`` to half an interval after cycle ``warmup + cycles``: exactly ``cycles`` cycles.
    RSS is read at each midpoint in it."""
    task = progress.add_task(label, total=warmup + cycles + 1)
    points = [(first + k * interval, "tick") for k in range(1, warmup + cycles + 1)]
    points += [(first + (k + 0.5) * interval, "mid") for k in range(warmup, warmup + cycles + 1)]
    rss: list[float] = []
    kids: list[float] = []
    cpu0, tick0 = 0, 0.0
    for at, what in sorted(points):
        time.sleep(max(0.0, at - time.monotonic()))
        if what == "tick":
            if tick is not None:
                tick()
            progress.advance(task)
            continue
        if not rss:
            cpu0, tick0 = tree_cpu_ns(pid), tick_cpu_s(pid)
        rss.append(rss_mb(pid))
        kids.append(sum(_rss_or_0(c) for c in children(pid)))
    cpu = tree_cpu_ns(pid) - cpu0
    ticks = tick_cpu_s(pid) - tick0
    progress.remove_task(task)
    return {
        "rss_mb": round(statistics.median(rss), 1),
        "rss_last_mb": round(rss[-1], 1),
        "rss_peak_mb": round(max(rss), 1),
        "rss_readings": len(rss),
        "cycles": cycles,
        "interval_seconds": interval,
        "cpu_ms_per_cycle": round(cpu / 1e6 / cycles, 3),
        "cpu_ms_per_cycle_from_ticks": round(ticks * 1000 / cycles, 2),
        "children": [_comm(c) for c in children(pid)],
        "children_rss_mb": round(statistics.median(kids), 1),
        "memory_mb": memory_mb(pid),
    }


# --- the agent --------------------------------------------------------------------------------


def unit_environment() -> dict[str, str]:
    """The ``Environment=`` assignments of the agent's unit."""
    env: dict[str, str] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line.strip().startswith("Environment="):
            for item in shlex.split(line.split("=", 1)[1]):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def agent_env(tmp: Path) -> dict[str, str]:
    """The agent's environment: the unit's, and bytecode from ``tmp`` (see prime_bytecode)."""
    env = {**os.environ, **unit_environment(), "PYTHONPYCACHEPREFIX": str(tmp / "pycache")}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def prime_bytecode(env: dict[str, str], config: Path) -> None:
    """Compile what the agent loads to bytecode, as installing the package does: without it
    every start compiles the project's modules again, and keeps about 1 MB more."""
    code = "import agent.service, agent.runner, agent.publisher, agent.config, agent.sources"
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    subprocess.run([*outpost_command(), "agent", "once", "--config", str(config)], env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)  # fmt: skip


def outpost_command() -> list[str]:
    """The ``outpost`` console script next to this Python (what the unit runs), else
    ``python -m outpost``."""
    script = Path(sys.executable).parent / "outpost"
    return [str(script)] if script.exists() else [sys.executable, "-m", "outpost"]


def agent_config(
    path: Path, host: str, url: str, state: Path, interval: float, security: bool
) -> Path:
    every = 60.0 * interval / DEFAULT_INTERVAL
    lines = [
        "site: bench",
        f"host: {host}",
        f"interval_seconds: {interval}",
        f"state_dir: {state}",
        "broker:",
        f"  url: {url}",
        "sources:",
        "  security:",
        f"    enabled: {'true' if security else 'false'}",
        f"    ports: {{interval_seconds: {every}}}",
        f"    files: {{interval_seconds: {every}}}",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def seen_by_collector(metrics_url: str, host: str) -> bool:
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as r:
            text = r.read().decode()
    except OSError:
        return False
    return any(
        line.startswith("outpost_host_last_seen_timestamp_seconds{") and f'host="{host}"' in line
        for line in text.splitlines()
    )


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"error: {what} within {timeout:.0f} s")
        time.sleep(0.02)


class Run:
    """What one run shares: the processes it started (stopped by PID), the broker and
    collector, a temporary directory, the progress display."""

    def __init__(self, tmp: Path, args: argparse.Namespace, progress: Progress) -> None:
        self.tmp = tmp
        self.args = args
        self.progress = progress
        self.procs: list[subprocess.Popen[bytes]] = []
        self.url = ""
        self.metrics = ""
        self.env = agent_env(tmp)

    def start(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        self.procs.append(proc)
        return proc

    def end(self, proc: subprocess.Popen[bytes]) -> None:
        stop(proc)
        self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)
        self.procs.clear()

    def start_servers(self) -> None:
        port, hport = free_port(), free_port()
        conf = mosquitto_conf(self.tmp / "m.conf", port)
        self.start([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)])
        wait_port(port)
        self.url = f"mqtt://127.0.0.1:{port}"
        listen = f"127.0.0.1:{hport}"
        self.start([sys.executable, "-m", "outpost", "collector", "run", "--broker", self.url,
                    "--listen", listen, "--state-dir", str(self.tmp / "c")])  # fmt: skip
        wait_port(hport)
        self.metrics = f"http://127.0.0.1:{hport}/metrics"

    def agent(self, host: str, interval: float, security: bool, warmup: int, cycles: int) -> Any:
        conf = agent_config(
            self.tmp / f"{host}.yaml", host, self.url, self.tmp / host, interval, security
        )
        argv = AGENT_ARGS.replace("FILE", str(conf)).split()
        agent = self.start([*outpost_command(), *argv], self.env)
        try:
            wait_until(
                f"the agent ({host}) reporting to the collector",
                lambda: agent.poll() is None and seen_by_collector(self.metrics, host),
                timeout=60,
            )
            first = time.monotonic()  # its first cycle, give or take the time to report it
            label = f"agent ({host}), {cycles} cycles of {interval:g} s"
            out = measure(agent.pid, first, warmup, cycles, interval, None, self.progress, label)
            if agent.poll() is not None:
                raise SystemExit(f"error: the agent ({host}) exited with {agent.returncode}")
            return out
        finally:
            self.end(agent)

    def node_exporter(self, exe: str, interval: float, warmup: int, cycles: int) -> Any:
        port = free_port()
        proc = self.start([exe, f"--web.listen-address=127.0.0.1:{port}"])
        url = f"http://127.0.0.1:{port}/metrics"
        sizes: list[int] = []

        def scrape() -> None:
            with urllib.request.urlopen(url, timeout=10) as r:
                sizes.append(len(r.read()))

        try:
            wait_port(port)
            first = time.monotonic()
            scrape()
            label = f"node-exporter, {cycles} scrapes, one per {interval:g} s"
            out = measure(proc.pid, first, warmup, cycles, interval, scrape, self.progress, label)
            out["scrape_bytes"] = sizes[-1]
            return out
        finally:
            self.end(proc)


# --- anchors ----------------------------------------------------------------------------------


def node_exporter_path() -> str | None:
    return shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")


def _version(exe: str) -> str:
    try:
        done = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "?"


PYTHON_ANCHORS = {
    # name -> (code, interpreter flags); each prints "ready" once loaded and waits
    "python_alone": ("pass", ()),
    "python_alone_without_site": ("pass", ("-S",)),
    "python_psutil_paho_yaml_collect_once": (
        "import psutil, paho.mqtt.client, yaml\n"
        "psutil.cpu_times(); psutil.virtual_memory(); psutil.net_io_counters(pernic=True)",
        (),
    ),
    "floor_python_psutil_paho_msgspec_yaml_sqlite3": (
        "import psutil, paho.mqtt.client, yaml, msgspec, sqlite3, tempfile, os\n"
        "psutil.cpu_times(); psutil.virtual_memory(); psutil.net_io_counters(pernic=True)\n"
        "d = tempfile.mkdtemp(); db = sqlite3.connect(os.path.join(d, 'x.sqlite'))\n"
        "db.execute('PRAGMA journal_mode=WAL'); db.execute('CREATE TABLE t (b BLOB)')\n"
        "db.execute('INSERT INTO t VALUES (?)', (b'x' * 6000,)); db.commit()\n"
        "paho.mqtt.client.Client(paho.mqtt.client.CallbackAPIVersion.VERSION2)\n"
        "msgspec.json.encode({'a': [1.0] * 100})",
        (),
    ),
}


def python_anchor(code: str, flags: tuple[str, ...], env: dict[str, str]) -> float:
    """RSS of a Python process that ran ``code`` and waits, in the agent's environment."""
    full = f"{code}\nimport sys\nprint('ready', flush=True)\nsys.stdin.read()\n"
    proc = subprocess.Popen([sys.executable, *flags, "-c", full], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, env=env)  # fmt: skip
    assert proc.stdout is not None and proc.stdin is not None
    try:
        proc.stdout.readline()
        return rss_mb(proc.pid)
    finally:
        proc.stdin.close()
        proc.wait(10)


# --- the run ----------------------------------------------------------------------------------


def one_run(run: Run) -> dict[str, Any]:
    args = run.args
    result: dict[str, Any] = {}
    prime_bytecode(run.env, agent_config(run.tmp / "prime.yaml", "prime", "mqtt://127.0.0.1:9",
                                         run.tmp / "prime", 1.0, True))  # fmt: skip
    run.start_servers()
    fast = (args.interval, args.warmup, args.cycles)
    result["agent"] = run.agent("default", fast[0], True, *fast[1:])
    if not args.smoke:
        result["agent_without_security"] = run.agent("no-security", fast[0], False, *fast[1:])
    if args.slow_cycles:
        result["agent_at_default_interval"] = run.agent(
            "default-15s", DEFAULT_INTERVAL, True, 0, args.slow_cycles
        )
    run.stop_all()
    exe = node_exporter_path()
    if exe:
        result["node_exporter"] = run.node_exporter(exe, *fast)
        if args.slow_cycles:
            result["node_exporter_at_default_interval"] = run.node_exporter(
                exe, DEFAULT_INTERVAL, 0, args.slow_cycles
            )
        result["node_exporter_version"] = _version(exe)
    else:
        result["node_exporter"] = None
        result["node_exporter_note"] = "not installed (apt-get install prometheus-node-exporter)"
    result["python_anchors_rss_mb"] = {
        name: round(python_anchor(code, flags, run.env), 1)
        for name, (code, flags) in PYTHON_ANCHORS.items()
    }
    return result


def rows(result: dict[str, Any], smoke: bool) -> list[dict[str, object]]:
    agent, ne = result["agent"], result["node_exporter"]
    name = "prometheus-node-exporter" if ne else "prometheus-node-exporter (not installed)"
    ne_rss = ne["rss_mb"] if ne else None
    out = [
        row("agent RSS (steady state)", agent["rss_mb"], "MB",
            anchor_name=f"{name} RSS", anchor=ne_rss, target="≤ node-exporter",
            met=None if smoke or ne_rss is None else agent["rss_mb"] <= ne_rss),
    ]  # fmt: skip

    def cpu_row(what: str, mine: dict[str, Any], theirs: dict[str, Any] | None) -> None:
        cpu = mine["cpu_ms_per_cycle"]
        anchor = theirs["cpu_ms_per_cycle"] if theirs else None
        met = None if smoke or anchor is None else cpu < CPU_TARGET_MS and cpu < anchor / 4
        out.append(row(what, cpu, "ms", anchor_name=f"{name} CPU per scrape", anchor=anchor,
                       target=CPU_TARGET, met=met))  # fmt: skip

    cpu_row("agent CPU per cycle", agent, ne)
    if "agent_at_default_interval" in result:
        cpu_row(
            "agent CPU per 15 s cycle (waiting included)",
            result["agent_at_default_interval"],
            result.get("node_exporter_at_default_interval"),
        )
    return out


def print_table(result: dict[str, Any]) -> None:
    env = " ".join(f"{k}={v}" for k, v in result["agent_environment"].items()) or "none"
    print(f"agent footprint; the unit's environment: {env}")
    cols = [
        (title, result[key])
        for title, key in (
            ("agent", "agent"),
            ("agent, no security", "agent_without_security"),
            ("agent, 15 s cycles", "agent_at_default_interval"),
            ("node-exporter", "node_exporter"),
            ("node-exporter, 15 s", "node_exporter_at_default_interval"),
        )
        if result.get(key)
    ]
    print(f"{'':22}" + "".join(f"{title:>20}" for title, _ in cols))
    lines: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("cycles x interval", lambda r: f"{r['cycles']} x {r['interval_seconds']:g} s"),
        ("RSS median, MB", lambda r: f"{r['rss_mb']:.1f}"),
        ("RSS peak, MB", lambda r: f"{r['rss_peak_mb']:.1f}"),
        ("  anonymous, MB", lambda r: f"{r['memory_mb']['rssanon']:.1f}"),
        ("  Pss, MB", lambda r: f"{r['memory_mb']['pss']:.1f}"),
        ("children's RSS, MB", lambda r: f"{r['children_rss_mb']:.1f}"),
        ("CPU per cycle, ms", lambda r: f"{r['cpu_ms_per_cycle']:.3f}"),
    ]
    for title, cell in lines:
        print(f"{title:22}" + "".join(f"{cell(r):>20}" for _, r in cols))
    if result.get("node_exporter_note"):
        print(f"node-exporter: {result['node_exporter_note']}; no anchor")
    kids = result["agent"]["children"]
    if kids:
        print(f"the agent's children ({', '.join(kids)}): their CPU is counted in the agent's")
    anchors = result["python_anchors_rss_mb"]
    print("python anchors, RSS MB: " + ", ".join(f"{k} {v:.1f}" for k, v in anchors.items()))
    for r in result["rows"]:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        met = {True: "met", False: "missed", None: "not judged"}[r["met"]]
        print(f"{r['what']}: {r['figure']} {r['unit']} against {r['anchor']} "
              f"({r['anchor_name']}), ratio {ratio}; target {r['target']}: {met}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cycles", type=int, default=40, help="fast cycles measured (and scrapes)")
    ap.add_argument("--interval", type=float, default=0.25, help="seconds per fast cycle")
    ap.add_argument("--warmup", type=int, default=20, help="fast cycles before measuring")
    ap.add_argument("--slow-cycles", type=int, default=4,
                    help="cycles of 15 s measured after the fast ones (0: none)")  # fmt: skip
    smoke = "12 fast cycles after 8, default sources only, no 15 s ones (~20 s)"
    ap.add_argument("--smoke", action="store_true", help=smoke)
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every process started here is stopped by its PID.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.smoke:
        args.cycles, args.warmup, args.slow_cycles = 12, 8, 0
    if args.cycles < 1 or args.warmup < 0 or args.slow_cycles < 0 or args.interval < 0.1:
        ap.error("--cycles must be at least 1, --warmup and --slow-cycles at least 0, "
                 "--interval at least 0.1 (the agent's least)")  # fmt: skip
    progress = Progress(transient=True, console=Console(stderr=True))
    with tempfile.TemporaryDirectory() as tmp, progress:
        run = Run(Path(tmp), args, progress)
        try:
            measured = one_run(run)
        finally:
            run.stop_all()
    result: dict[str, Any] = {
        "agent_environment": unit_environment(),
        "agent_command": " ".join([*outpost_command(), AGENT_ARGS]),
        "warmup_cycles": args.warmup,
        **measured,
    }
    result["rows"] = rows(result, args.smoke)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print_table(result)


if __name__ == "__main__":
    main()
