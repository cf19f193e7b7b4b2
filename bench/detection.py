"""How fast a lost agent becomes an alert at a webhook: Outpost's collector against Prometheus
``up == 0`` with ``for: 1m`` through Alertmanager.

Outpost, with real processes on loopback: a mosquitto, a collector whose alerting posts to a
webhook that this script serves in-process, and per round two agents. One agent reaches the
broker through a TCP proxy that is switched to a silent partition (nothing passes either way,
not even a close: only the MQTT keepalive can tell); the clock runs from the switch to the
``host_down`` notification at the webhook. The other agent is killed with SIGKILL (its kernel
closes the socket, the broker publishes its Last Will at once); the clock runs from the kill to
the webhook. Each round uses new sites and hosts, and each fault comes at a random moment (0 to
5 s, 0 to 1 s after the agents are online) so that rounds are not in step with the broker's
keepalive sweeps or the collector's evaluations. The figure is the slowest round; the output
also splits each round into fault → the broker's Last Will → the alert fired → the webhook.

The broker declares a silent agent lost once it has heard nothing from it for 1.5 x keepalive,
at its next keepalive sweep: mosquitto 2.0.11 (Debian 12) sweeps every 5 s or so, which puts
its Last Will anywhere from 1.5 x keepalive to about 1.5 x keepalive + 6 s after the agent's
last packet. That part is the broker's, not the collector's; the split shows both.

The anchor, in the same run and at the same time: Debian's Prometheus scrapes two tiny
exporters (``python -m http.server`` serving a /metrics file), one directly and one through a
second proxy. The first is killed with SIGKILL and the second partitioned at the same moment;
the rule ``up{job="exporter"} == 0`` with ``for: 1m`` (scrape and evaluation every 15 s, scrape
timeout 10 s, the defaults of deploy/prometheus) fires into Alertmanager (group_wait 30 s, its
default; grouped by instance), which posts to the same webhook. Expect 90 to 120 s for the
kill, and 100 to 130 s for the partition (the scrape has to time out first).

Settings used on the Outpost side (printed with the result): agent keepalive 10 s (the
default), agent interval 1 s, collector evaluation every 10 s (the default: the Last Will's
status wakes the evaluation, so the tick does not count), grouping wait 1 s, ``host_down`` with
``for_seconds: 0``, ``site_unreachable`` off (each site has one agent, and its site alert would
cover ``host_down``). That is a collector set to page at once. With the defaults
(``group_wait_seconds`` 30, ``host_down`` ``for_seconds`` 120, chosen so that a village link
that drops for a minute pages nobody) every figure grows by those two waits, to about 150 s:
the same order as the anchor, which also waits (``for: 1m``, group_wait 30 s).

With a keepalive of 5 s (``--keepalive 5``) the partition target (12 s) is missed in some
rounds by up to about 1.5 s: the broker's sweep, not the collector, takes the time.

Targets: a silent partition reaches the webhook within 2 x keepalive + 2 s, a kill -9 within
3 s. ``--smoke`` shortens everything (keepalive 2 s; the anchor at 1/6 of its time scale: for
10 s, scrape and evaluation every 2.5 s, group_wait 5 s) and says so; the Outpost targets are
still judged.

    python bench/detection.py                   # 5 rounds; about 2 minutes (the anchor's)
    python bench/detection.py --smoke           # 1 round, the anchor shortened; about 30 s
    python bench/detection.py --json            # {"rows": [...], ...details}
    python bench/detection.py --rounds 10 --keepalive 10 --no-anchor
    python bench/detection.py --workdir /tmp/det  # keep every process's log there
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))

from common import row
from harness import MOSQUITTO, Collector, Mosquitto, Proc, Procs, free_port, wait_for
from netproxy import BLACKHOLE, NetProxy
from prometheus import PROMETHEUS, Prometheus
from webhook import Receiver

ALERTMANAGER = shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager"
ANCHOR_ALERT = "TargetDown"
ANCHOR_JOB = "exporter"
PARTITION = "silent partition of an agent → alert at the webhook"
KILL = "kill -9 of an agent → alert at the webhook"
PHASE = {"partition": 5.0, "kill": 1.0}  # seconds of random delay before each fault


@dataclass(frozen=True)
class Settings:
    keepalive: int  # the agents' broker.keepalive_seconds
    agent_interval: float  # the agents' interval_seconds
    evaluate_every: float  # alerting.engine.evaluate_every_seconds
    group_wait: float  # alerting.dispatch.group_wait_seconds
    host_down_for: float  # alerting.rules.host_down.for_seconds
    rounds: int
    scrape: float  # the anchor's scrape_interval and evaluation_interval
    scrape_timeout: float
    anchor_for: float
    anchor_group_wait: float


FULL = Settings(10, 1.0, 10, 1, 0, 5, 15, 10, 60, 30)
SMOKE = Settings(2, 0.5, 10, 1, 0, 1, 2.5, 2.5, 10, 5)


def duration(seconds: float) -> str:
    """Prometheus' duration syntax: 15s, 2500ms."""
    return f"{seconds:g}s" if seconds == int(seconds) else f"{round(seconds * 1000)}ms"


def rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# --- what both sides post to --------------------------------------------------------------


class Hook(Receiver):
    """The webhook both alerting paths post to (tests/integration/webhook.py), serving from
    the start."""

    def __init__(self) -> None:
        super().__init__()
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def first(
        self, path: str, match: Callable[[dict[str, Any]], bool]
    ) -> tuple[float, dict[str, Any]] | None:
        """The first firing alert posted to ``path`` that ``match`` accepts: (arrival, alert)."""
        with self.lock:
            got = list(self.got)
        for p, doc, arrived in got:
            if p != path or doc.get("status") != "firing":
                continue
            for alert in doc.get("alerts") or []:
                if match(alert):
                    return arrived, alert
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Wills:
    """When the broker published each agent's Last Will (status offline, reason lost): a
    subscriber to the agents' status topic."""

    def __init__(self, port: int) -> None:
        self.lost: dict[tuple[str, str], float] = {}
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-wills",
                                  protocol=MQTTProtocolVersion.MQTTv5)  # fmt: skip
        self.client.on_connect = lambda c, *a: c.subscribe("outpost/v1/+/+/status", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        if doc.get("status") == "offline" and doc.get("reason") == "lost":
            self.lost.setdefault((doc.get("site", ""), doc.get("host", "")), now)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# --- Outpost --------------------------------------------------------------------------------


def collector_config(s: Settings, hook: Hook) -> dict[str, Any]:
    return {
        "alerting": {
            "engine": {"evaluate_every_seconds": s.evaluate_every},
            "dispatch": {"group_wait_seconds": s.group_wait, "repeat_every_seconds": 0},
            "rules": {
                "host_down": {"for_seconds": s.host_down_for},
                # One agent per site: its site alert would cover (inhibit) host_down.
                "site_unreachable": {"enabled": False},
            },
            "notifiers": [{"type": "webhook", "name": "bench", "url": hook.url("/outpost")}],
            "routing": {"routes": [{"name": "all", "steps": [{"notify": ["notifier:bench"]}]}]},
        }
    }


def start_agent(procs: Procs, root: Path, url: str, site: str, host: str, s: Settings) -> Proc:
    config = root / "agent.yaml"
    if not config.exists():
        config.write_text(yaml.safe_dump({"broker": {"keepalive_seconds": s.keepalive}}))
    return procs.outpost(
        f"agent-{site}-{host}", "agent", "run", "-c", str(config), "--broker", url,
        "--site", site, "--host", host, "--state-dir", str(root / f"agent-{site}-{host}"),
        "--interval", str(s.agent_interval),
    )  # fmt: skip


def host_down(site: str, host: str) -> Callable[[dict[str, Any]], bool]:
    def match(alert: dict[str, Any]) -> bool:
        labels = alert.get("labels") or {}
        return bool(
            alert.get("rule") == "host_down"
            and labels.get("site") == site
            and labels.get("host") == host
        )

    return match


def wait_event(what: str, check: Callable[[], Any], timeout: float) -> Any:
    """Poll ``check`` every 20 ms until it returns something; SystemExit at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.02)
    raise SystemExit(f"detection: timed out after {timeout:.0f} s waiting for {what}")


def outpost_rounds(
    procs: Procs, root: Path, s: Settings, hook: Hook, proxies: list[NetProxy], progress: Progress
) -> dict[str, Any]:
    task = progress.add_task("outpost: starting mosquitto and the collector", total=None)
    broker = Mosquitto(procs, root / "broker").start()
    (root / "collector.yaml").write_text(yaml.safe_dump(collector_config(s, hook)))
    collector = Collector(procs, broker, root, "--config", str(root / "collector.yaml")).start()
    wills = Wills(broker.port)
    rounds: list[dict[str, Any]] = []
    try:
        for i in range(1, s.rounds + 1):
            say = f"outpost round {i}/{s.rounds}"
            proxy = NetProxy(broker.port).start()
            proxies.append(proxy)
            held = start_agent(procs, root, proxy.url, f"partition-{i}", "pc1", s)
            killed = start_agent(procs, root, broker.url, f"kill-{i}", "pc1", s)
            progress.update(task, description=f"{say}: agents connecting")
            for site in (f"partition-{i}", f"kill-{i}"):
                wait_for(
                    f"{site}/pc1 online",
                    lambda site=site: collector.hosts()[(site, "pc1")]["state"] == "online",
                    60,
                )
            progress.update(task, description=f"{say}: silent partition, waiting for host_down")
            rounds.append({})
            for case, site in (("partition", f"partition-{i}"), ("kill", f"kill-{i}")):
                # A fault at a random moment, not in step with the collector's evaluations
                # (every second) nor the broker's keepalive sweep (every 5 s in mosquitto 2.0).
                time.sleep(random.uniform(0, PHASE[case]))
                start = time.time()
                if case == "partition":
                    proxy.set_mode(BLACKHOLE)
                else:
                    progress.update(task, description=f"{say}: kill -9, waiting for host_down")
                    assert killed.popen is not None
                    killed.popen.send_signal(signal.SIGKILL)
                budget = 4 * s.keepalive + 30 if case == "partition" else 30
                arrived, alert = wait_event(
                    f"host_down of {site} at the webhook",
                    lambda site=site: hook.first("/outpost", host_down(site, "pc1")),
                    budget,
                )
                will = wills.lost.get((site, "pc1"))
                rounds[-1][case] = {
                    "seconds": arrived - start,
                    "last_will": None if will is None else will - start,
                    "seen": float(alert["started"]) - start,
                }
            # Its alert is in; the agent could not say goodbye through the partition anyway.
            held.kill9()
            killed.kill9()
    finally:
        wills.close()
        progress.remove_task(task)
    return {"rounds": rounds}


# --- the anchor -----------------------------------------------------------------------------


def version(binary: str, flag: str = "--version") -> str:
    try:
        out = subprocess.run([binary, flag], capture_output=True, text=True, timeout=10)
    except OSError:
        return "not installed"
    found = re.search(r"version (\S+)", out.stdout + out.stderr)
    return found.group(1) if found else "?"


def start_alertmanager(procs: Procs, root: Path, s: Settings, hook: Hook) -> int:
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "alertmanager.yml"
    config = {
        "route": {
            "receiver": "hook",
            "group_by": ["alertname", "instance"],
            "group_wait": duration(s.anchor_group_wait),
        },
        "receivers": [
            {"name": "hook", "webhook_configs": [{"url": hook.url("/anchor")}]},
        ],
    }
    conf.write_text(yaml.safe_dump(config))
    am = procs.start(
        "alertmanager",
        [ALERTMANAGER, f"--config.file={conf}", f"--storage.path={root / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
    )  # fmt: skip

    def ready() -> bool:
        assert am.running(), f"alertmanager exited:\n{am.output()[-2000:]}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2) as resp:
            return bool(resp.status == 200)

    wait_for("Alertmanager's /-/ready", ready, 60)
    return port


def anchor(
    procs: Procs,
    root: Path,
    s: Settings,
    hook: Hook,
    proxies: list[NetProxy],
    progress: Progress,
    stopping: threading.Event,
) -> dict[str, Any]:
    task = progress.add_task("anchor: starting two exporters, Alertmanager, Prometheus", total=None)
    try:
        site = root / "exporter"
        site.mkdir(parents=True, exist_ok=True)
        (site / "metrics").write_text("# TYPE bench_exporter_ready gauge\nbench_exporter_ready 1\n")
        ports = {"kill": free_port(), "partition": free_port()}
        exporters = {
            case: procs.start(f"exporter-{case}", [sys.executable, "-m", "http.server",
                              str(port), "--bind", "127.0.0.1", "--directory", str(site)])
            for case, port in ports.items()
        }  # fmt: skip
        proxy = NetProxy(ports["partition"]).start()
        proxies.append(proxy)
        targets = {"kill": f"127.0.0.1:{ports['kill']}", "partition": f"127.0.0.1:{proxy.port}"}
        am_port = start_alertmanager(procs, root / "alertmanager", s, hook)
        rules = root / "anchor-rules.yml"
        rule = {
            "alert": ANCHOR_ALERT,
            "expr": f'up{{job="{ANCHOR_JOB}"}} == 0',
            "for": duration(s.anchor_for),
        }
        rules.write_text(yaml.safe_dump({"groups": [{"name": "bench", "rules": [rule]}]}))
        prom = Prometheus(procs, root / "prometheus", list(targets.values()),
                          interval=duration(s.scrape), rule_files=[rules],
                          alertmanager=f"127.0.0.1:{am_port}")  # fmt: skip
        job = prom.config["scrape_configs"][0]
        job["job_name"] = ANCHOR_JOB
        job["scrape_timeout"] = prom.config["global"]["scrape_timeout"] = duration(s.scrape_timeout)
        if stopping.is_set():
            raise SystemExit(143)
        prom.start(timeout=60)
        progress.update(task, description="anchor: waiting for both targets to be scraped")
        wait_for("both exporters scraped", prom.targets_up, 4 * s.scrape + 30, 0.2)
        wait_for(
            "Prometheus to know its Alertmanager",
            lambda: prom.api("alertmanagers")["activeAlertmanagers"],
            30,
            0.2,
        )
        progress.update(task, description=f"anchor: faults in, for: {s.anchor_for:g}s")
        start = time.time()
        exporters["kill"].kill9()
        proxy.set_mode(BLACKHOLE)
        down: dict[str, float] = {}
        arrived: dict[str, tuple[float, dict[str, Any]]] = {}
        deadline = time.monotonic() + 2 * (2 * s.scrape + s.scrape_timeout + s.anchor_for
                                           + s.anchor_group_wait) + 60  # fmt: skip
        while len(arrived) < 2:
            if stopping.is_set():
                raise SystemExit(143)
            if time.monotonic() > deadline:
                raise SystemExit("detection: the anchor's alerts never reached the webhook")
            for t in prom.targets():
                killed = t["scrapeUrl"].endswith(f":{ports['kill']}/metrics")
                case = "kill" if killed else "partition"
                if t["health"] == "down" and case not in down:
                    scraped = rfc3339(t["lastScrape"]) + float(t["lastScrapeDuration"])
                    down[case] = scraped - start
            for case, target in targets.items():
                if case not in arrived:
                    got = hook.first("/anchor", lambda a, target=target: anchor_match(a, target))
                    if got:
                        arrived[case] = got
            time.sleep(0.5)
        return {
            case: {
                "seconds": at - start,
                "scrape_failed": down.get(case),
                "fired": rfc3339(alert["startsAt"]) - start,
            }
            for case, (at, alert) in arrived.items()
        }
    finally:
        progress.remove_task(task)


def anchor_match(alert: dict[str, Any], instance: str) -> bool:
    labels = alert.get("labels") or {}
    return labels.get("alertname") == ANCHOR_ALERT and labels.get("instance") == instance


# --- the run --------------------------------------------------------------------------------


@dataclass
class AnchorRun:
    thread: threading.Thread | None = None
    result: dict[str, Any] | None = None
    error: str = ""


def measure(s: Settings, root: Path, run_anchor: bool) -> dict[str, Any]:
    """Run the Outpost rounds and, at the same time in a thread, the anchor."""
    procs = Procs(root)
    hook = Hook()
    proxies: list[NetProxy] = []
    stopping = threading.Event()
    side = AnchorRun()
    ok = False
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                        console=Console(stderr=True), transient=True)  # fmt: skip
    try:
        with progress:
            if run_anchor:

                def work() -> None:
                    try:
                        side.result = anchor(procs, root, s, hook, proxies, progress, stopping)
                    except BaseException as exc:  # reported by the main thread
                        side.error = f"{type(exc).__name__}: {exc}"

                side.thread = threading.Thread(target=work, name="anchor", daemon=True)
                side.thread.start()
            outpost = outpost_rounds(procs, root, s, hook, proxies, progress)
            if side.thread is not None:
                task = progress.add_task("anchor: still waiting for Alertmanager", total=None)
                while side.thread.is_alive():
                    side.thread.join(0.2)
                progress.remove_task(task)
        if side.error:
            raise SystemExit(f"detection: the anchor failed: {side.error}")
        ok = True
        return {"outpost": outpost, "anchor": side.result}
    finally:
        stopping.set()
        for proxy in proxies:
            proxy.stop()
        procs.stop_all()
        if side.thread is not None:
            side.thread.join(10)
            procs.stop_all()  # anything the anchor started meanwhile
        hook.close()
        if not ok:
            for proc in procs.all:
                sys.stderr.write(f"--- {proc.name} (pid {proc.pid}) ---\n{proc.output()[-1500:]}\n")


def summarise(s: Settings, smoke: bool, got: dict[str, Any]) -> dict[str, Any]:
    rounds = got["outpost"]["rounds"]
    anchor_runs = got["anchor"]
    part_target = 2 * s.keepalive + 2
    facts: dict[str, Any] = {
        "smoke": smoke,
        "outpost_settings": {
            "mosquitto": version(MOSQUITTO, "-h"),
            "agent keepalive_seconds": s.keepalive,
            "agent interval_seconds": s.agent_interval,
            "engine.evaluate_every_seconds": s.evaluate_every,
            "dispatch.group_wait_seconds": s.group_wait,
            "rules.host_down.for_seconds": s.host_down_for,
            "rules.site_unreachable.enabled": False,
        },
        "outpost_defaults_differ": (
            "the collector's defaults are evaluate_every_seconds 10, group_wait_seconds 30 and "
            "host_down for_seconds 120: with them each figure grows by the rule's wait and the "
            "grouping wait, each rounded up to the next evaluation"
        ),
        "anchor_settings": {
            "rule": f'up{{job="{ANCHOR_JOB}"}} == 0, for: {duration(s.anchor_for)}',
            "scrape_interval and evaluation_interval": duration(s.scrape),
            "scrape_timeout": duration(s.scrape_timeout),
            "alertmanager group_wait": duration(s.anchor_group_wait),
            "prometheus": version(PROMETHEUS),
            "alertmanager": version(ALERTMANAGER),
        },
        "anchor_shortened": smoke,
        "rounds": rounds,
        "anchor": anchor_runs,
    }
    out: list[dict[str, Any]] = []
    for case, what, target, limit in (
        ("partition", PARTITION, f"≤ 2 × keepalive + 2 s = {part_target:g} s", part_target),
        ("kill", KILL, "≤ 3 s", 3.0),
    ):
        times = [r[case]["seconds"] for r in rounds]
        worst = max(times)
        facts[f"{case}_seconds"] = spread(times)
        # Where the time goes: the broker's verdict (its Last Will), then the collector.
        wills = [r[case]["last_will"] for r in rounds if r[case]["last_will"] is not None]
        after = [r[case]["seconds"] - r[case]["last_will"] for r in rounds
                 if r[case]["last_will"] is not None]  # fmt: skip
        facts[f"{case}_split"] = {
            "fault_to_last_will": spread(wills) if wills else None,
            "last_will_to_webhook": spread(after) if after else None,
        }
        base = None if anchor_runs is None else anchor_runs[case]["seconds"]
        name = f"Prometheus up == 0 for {duration(s.anchor_for)}, Alertmanager group_wait " + (
            f"{duration(s.anchor_group_wait)}" + (" (shortened: smoke)" if smoke else "")
        )
        out.append(row(what, worst, "s", anchor_name=name, anchor=base, target=target,
                       met=worst <= limit))  # fmt: skip
    facts["rows"] = out
    return facts


def spread(values: list[float]) -> dict[str, float]:
    return {
        "slowest": round(max(values), 3),
        "median": round(statistics.median(values), 3),
        "fastest": round(min(values), 3),
    }


def breakdown(case: str, r: dict[str, Any]) -> str:
    def at(key: str) -> str:
        v = r.get(key)
        return "?" if v is None else f"{v:.2f} s"

    if case == "anchor":
        return (f"failed scrape recorded {at('scrape_failed')}, Prometheus fired "
                f"{at('fired')}, webhook {at('seconds')}")  # fmt: skip
    return (
        f"Last Will {at('last_will')}, seen by an evaluation {at('seen')}, webhook {at('seconds')}"
    )


def print_table(s: Settings, result: dict[str, Any]) -> None:
    smoke = result["smoke"]
    title = "detection: from losing an agent to its alert at a webhook"
    print(title + (" (smoke)" if smoke else ""))
    print(f"outpost: mosquitto {result['outpost_settings']['mosquitto']}, "
          f"agent keepalive {s.keepalive} s, agent interval {s.agent_interval:g} s; "
          f"collector evaluation every {s.evaluate_every:g} s, group_wait {s.group_wait:g} s, "
          f"host_down for_seconds {s.host_down_for:g}, site_unreachable off")  # fmt: skip
    print("  (defaults: evaluation every 10 s, group_wait 30 s, host_down for_seconds 120; "
          "with them add the last two)")  # fmt: skip
    a = result["anchor_settings"]
    if result["anchor"] is None:
        print("anchor: not measured")
    else:
        print(f"anchor: Prometheus {a['prometheus']} {a['rule']}, scrape and evaluation every "
              f"{duration(s.scrape)}, scrape_timeout {duration(s.scrape_timeout)}; "
              f"Alertmanager {a['alertmanager']} group_wait {duration(s.anchor_group_wait)}"
              + (" (SHORTENED for the smoke run)" if smoke else ""))  # fmt: skip
    print(f"\n{'case':<18} {'outpost s':>10} {'median':>7} {'anchor s':>9} {'ratio':>7}  "
          f"{'target':<28} met")  # fmt: skip
    for case, r in zip(("partition", "kill"), result["rows"], strict=True):
        label = "silent partition" if case == "partition" else "kill -9"
        med = result[f"{case}_seconds"]["median"]
        anchor = "—" if r["anchor"] is None else f"{r['anchor']:.1f}"
        ratio = "—" if r["ratio"] is None else f"{r['ratio']:.3f}"
        met = {True: "yes", False: "NO", None: "—"}[r["met"]]
        print(f"{label:<18} {r['figure']:>10.2f} {med:>7.2f} {anchor:>9} {ratio:>7}  "
              f"{r['target']:<28} {met}")  # fmt: skip
    print(f"\noutpost figure: the slowest of {len(result['rounds'])} round(s); "
          "the time since the fault at each step:")  # fmt: skip
    for i, rnd in enumerate(result["rounds"], 1):
        for case in ("partition", "kill"):
            print(f"  round {i} {case:<9}  {breakdown(case, rnd[case])}")
    if result["anchor"]:
        for case in ("partition", "kill"):
            print(f"  anchor  {case:<9}  {breakdown('anchor', result['anchor'][case])}")
    print("\nwhere the time goes (fastest to slowest round):")
    for case in ("partition", "kill"):
        split = result[f"{case}_split"]
        if split["fault_to_last_will"] is None:
            continue
        will, rest = split["fault_to_last_will"], split["last_will_to_webhook"]
        print(f"  {case:<9}  fault → the broker's Last Will {will['fastest']:.2f} to "
              f"{will['slowest']:.2f} s; Last Will → webhook {rest['fastest']:.2f} to "
              f"{rest['slowest']:.2f} s")  # fmt: skip
    print("  (a silent agent is declared lost by the broker after 1.5 × keepalive of silence, "
          "at its next keepalive sweep; mosquitto 2.0.11 sweeps every 5 s or so)")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny settings, the anchor shortened")
    ap.add_argument("--json", action="store_true", help="print JSON instead of the table")
    ap.add_argument("--rounds", type=int, default=0, help="Outpost rounds (default 5; smoke 1)")
    ap.add_argument("--keepalive", type=int, default=0,
                    help="the agents' MQTT keepalive in seconds (default 5; smoke 2)")  # fmt: skip
    ap.add_argument("--no-anchor", action="store_true", help="measure Outpost only")
    ap.add_argument("--workdir", type=Path, help="keep the logs and state here (default: a "
                    "temporary directory, removed at the end)")  # fmt: skip
    args = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every process started here is stopped by its PID.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    s = SMOKE if args.smoke else FULL
    if args.rounds:
        s = replace(s, rounds=args.rounds)
    if args.keepalive:
        s = replace(s, keepalive=args.keepalive)
    if s.keepalive < 2 or s.rounds < 1:
        ap.error("--keepalive must be at least 2 and --rounds at least 1")
    run_anchor = not args.no_anchor
    if run_anchor and not (os.access(PROMETHEUS, os.X_OK) and os.access(ALERTMANAGER, os.X_OK)):
        print(f"detection: {PROMETHEUS} or {ALERTMANAGER} is missing (scripts/install --test "
              "installs both); measuring Outpost only", file=sys.stderr)  # fmt: skip
        run_anchor = False
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        got = measure(s, args.workdir, run_anchor)
    else:
        with tempfile.TemporaryDirectory(prefix="outpost-detection-") as tmp:
            got = measure(s, Path(tmp), run_anchor)
    result = summarise(s, args.smoke, got)
    result["settings"] = asdict(s)
    if args.json:
        print(json.dumps(result, indent=2, ensure_ascii=False))
    else:
        print_table(s, result)


if __name__ == "__main__":
    main()
