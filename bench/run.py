"""Every benchmark of Outpost, one after another, and one table: figure, anchor, ratio, target.

Each benchmark runs as its own process with ``--json`` (and ``--smoke`` with ``--smoke``) and
prints ``{"rows": [...]}`` (see ``row()`` in bench/common.py). They run one at a time: on a
small machine two of them side by side would measure each other. A benchmark that fails is
shown as failed, with the end of its output, and the others still run.

    python bench/run.py                        # everything at full size (about 15 minutes)
    python bench/run.py --smoke                # everything at tiny sizes (about 3 minutes)
    python bench/run.py --only ingest,exposition
    python bench/run.py --markdown docs/performance.md --json build/bench/last.json
                                               # the table goes between the marks in the doc

Exit codes: 0 every benchmark ran (a missed target is shown, not an error), 1 a benchmark
failed or timed out, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Bench:
    name: str
    script: str
    full: tuple[str, ...]
    smoke: tuple[str, ...]
    timeout: float  # seconds, at full size; smoke runs get a quarter of it, at least 120 s
    about: str


BENCHES = (
    Bench("agent", "agent.py", (), ("--smoke",), 600, "agent RSS and CPU per cycle"),
    Bench("ingest", "ingest.py", ("--messages", "30000", "--runs", "3"), ("--smoke",), 900,
          "collector ingest through mosquitto at QoS 1"),
    Bench("exposition", "exposition.py", ("--old",), ("--smoke", "--old"), 600,
          "/metrics for 10,000 hosts; what an alert evaluation reads"),
    Bench("detection", "detection.py", (), ("--smoke",), 900,
          "partition and kill -9 to the alert webhook"),
    Bench("backlog", "backlog.py", (), ("--smoke",), 2400, "24 h backlog drained"),
    Bench("peer", "peer.py", (), ("--smoke",), 900, "the same stream into mqtt-exporter"),
    Bench("shards", "shards.py", (), ("--smoke",), 900, "two sharded collectors on one broker"),
)  # fmt: skip


@dataclass
class Outcome:
    bench: Bench
    seconds: float
    rows: list[dict[str, Any]]
    error: str = ""


def run_one(bench: Bench, smoke: bool) -> Outcome:
    args = [
        sys.executable,
        str(HERE / bench.script),
        "--json",
        *(bench.smoke if smoke else bench.full),
    ]
    timeout = max(120.0, bench.timeout / 4) if smoke else bench.timeout
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE.parent)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the benchmark stops what it started, by PID
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        return Outcome(bench, time.monotonic() - started, [], f"timed out after {timeout:.0f} s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        tail = (err or out).decode(errors="replace").strip().splitlines()[-8:]
        return Outcome(bench, seconds, [], f"exit {proc.returncode}: " + " | ".join(tail))
    try:
        rows = json.loads(out)["rows"]
    except (ValueError, KeyError, TypeError) as exc:
        return Outcome(bench, seconds, [], f"no rows in its JSON output ({exc})")
    return Outcome(bench, seconds, list(rows))


def figure(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    text = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}"
    return f"{text} {unit}".strip()


def ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "—"}[met]


def machine() -> dict[str, str]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    debian = ""
    if Path("/etc/debian_version").exists():
        debian = "Debian " + Path("/etc/debian_version").read_text().strip()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    try:
        text = subprocess.run([mosquitto, "-h"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"version (\S+)", text)
        broker = found.group(1) if found else "?"
    except OSError:
        broker = "not installed"

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {
        "cpu": f"{cpu} ({os.cpu_count()} cores)",
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "system": f"{debian or platform.platform()}, Linux {platform.release()}",
        "python": platform.python_version(),
        "mosquitto": broker,
        "paho-mqtt": version("paho-mqtt"),
        "prometheus-client": version("prometheus-client"),
        "msgspec": version("msgspec"),
    }


def table(outcomes: list[Outcome], title: str) -> Table:
    t = Table(title=title)
    for col in ("benchmark", "what", "figure", "anchor", "ratio", "target", "met"):
        t.add_column(col, justify="right" if col in ("figure", "ratio") else "left")
    for o in outcomes:
        if o.error:
            t.add_row(o.bench.name, f"[red]failed: {o.error}[/red]", "", "", "", "", "")
            continue
        for r in o.rows:
            anchor = f"{figure(r['anchor'], r['unit'])} ({r['anchor_name']})"
            t.add_row(o.bench.name, r["what"], figure(r["figure"], r["unit"]), anchor,
                      ratio(r["ratio"]), r["target"], verdict(r["met"]))  # fmt: skip
    return t


def markdown(outcomes: list[Outcome], facts: dict[str, str], smoke: bool, when: str) -> str:
    lines = [
        f"Measured {when} with `python bench/run.py{' --smoke' if smoke else ''}`"
        + (" (smoke sizes: not the targets' sizes)" if smoke else "")
        + ".",
        "",
        *(f"- {k}: {v}" for k, v in facts.items()),
        "",
        "| benchmark | what | figure | anchor | ratio | target | met |",
        "|---|---|---:|---|---:|---|---|",
    ]
    for o in outcomes:
        if o.error:
            lines.append(f"| {o.bench.name} | failed: {o.error} | | | | | |")
            continue
        for r in o.rows:
            anchor = f"{figure(r['anchor'], r['unit'])} ({r['anchor_name']})"
            lines.append(
                f"| {o.bench.name} | {r['what']} | {figure(r['figure'], r['unit'])} | {anchor} "
                f"| {ratio(r['ratio'])} | {r['target']} | {verdict(r['met'])} |"
            )
    return "\n".join(lines) + "\n"


BEGIN, END = "<!-- bench/run.py: table -->", "<!-- bench/run.py: end of table -->"


def write_markdown(path: Path, text: str) -> None:
    """The table into ``path``: between its BEGIN and END marks if it has them (as
    docs/performance.md does), else as the whole file."""
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        text = f"{head}{BEGIN}\n{text}{END}{rest.split(END, 1)[1]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks that each one runs")
    ap.add_argument(
        "--only", default="", help="comma-separated: " + ",".join(b.name for b in BENCHES)
    )
    ap.add_argument("--markdown", type=Path, help="also write the table as markdown to this file")
    ap.add_argument("--json", type=Path, help="also write every row and the machine as JSON")
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - {b.name for b in BENCHES}
    if unknown:
        ap.error(f"no benchmark named {', '.join(sorted(unknown))}")
    chosen = [b for b in BENCHES if not names or b.name in names]
    # SIGTERM unwinds like Ctrl-C, so a running benchmark is stopped through its own handler.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    console = Console() if sys.stdout.isatty() else Console(width=180)
    outcomes: list[Outcome] = []
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as progress:
        for i, bench in enumerate(chosen, 1):
            task = progress.add_task(f"[{i}/{len(chosen)}] {bench.name}: {bench.about}")
            outcomes.append(run_one(bench, args.smoke))
            progress.remove_task(task)
            console.print(f"{bench.name}: {'failed' if outcomes[-1].error else 'done'} "
                          f"in {outcomes[-1].seconds:.0f} s")  # fmt: skip
    facts = machine()
    console.print(table(outcomes, f"Outpost benchmarks{' (smoke sizes)' if args.smoke else ''}"))
    for k, v in facts.items():
        console.print(f"{k}: {v}")
    if args.markdown:
        write_markdown(args.markdown, markdown(outcomes, facts, args.smoke, when))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        record = {
            "when": when,
            "smoke": args.smoke,
            "machine": facts,
            "benchmarks": {
                o.bench.name: {"seconds": round(o.seconds, 1), "rows": o.rows, "error": o.error}
                for o in outcomes
            },
        }
        args.json.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    return 1 if any(o.error for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
