"""grafana/: every dashboard's PromQL against a live Prometheus over a real fleet.

The dashboards are checked for structure (unique uids and panel ids, the provisioned
datasource uid everywhere, every variable a query uses defined), then every expression (panel
targets and variable queries) is run, with the variables filled in as Grafana would, against
Debian's Prometheus scraping a real collector. The fleet:

- site-a: agent srv1 with probes (TCP uplink and gateway, HTTP), an auth log the test writes
  failed logins to (failures, a brute force), and snmpd polled as the device core-switch
  (restarted once: a device_rebooted event); ups1, a shell agent (mosquitto_pub, as in
  docs/protocol.md) that reports a battery and an outage;
- site-b: agent srv2, and nas1 that sites.yaml expects and that never reports (a host down,
  a degraded site, a firing alert);
- site-c, in another county: nothing reports (coverage unknown).

Every query must parse and return data, with each variable at a fleet value and at All.
Every outpost_* name must be in docs/metrics.md, every recording rule in deploy/prometheus.
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from harness import Agent, Collector, Mosquitto, Procs, wait_for
from prometheus import RULES, Prometheus, available
from test_snmp import Snmpd

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not available(), reason="no prometheus (scripts/install --test)"),
]

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCE_UID = "outpost-prometheus"

COUNTY = "青山县"
SITE, HOST, DEVICE = "site-a", "srv1", "core-switch"
# The value each variable gets in the first pass (the second selects All).
VALUES = {"county": COUNTY, "site": SITE, "host": HOST, "device": DEVICE}
# Grafana's built-in variables, as a 1 h dashboard with a 1 m minimum interval has them.
BUILTIN = {
    "__rate_interval": "4m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

SITES = {
    "sites": [
        {"id": "site-a", "name": "城关镇人民政府", "county": COUNTY, "township": "城关镇",
         "latitude": 30.6571, "longitude": 104.0658, "hosts": [HOST, DEVICE]},
        {"id": "site-b", "name": "小山乡人民政府", "county": COUNTY, "township": "小山乡",
         "latitude": 30.7012, "longitude": 104.1523, "hosts": ["srv2", "nas1"]},
        {"id": "site-c", "name": "白水镇卫生院", "county": "白水县", "township": "白水镇",
         "latitude": 30.8011, "longitude": 104.3012, "hosts": ["pc1"]},
    ]
}  # fmt: skip


# --- the dashboards, statically ------------------------------------------------------------


def load(path: Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows (collapsed or not) included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def variable_query(variable: dict[str, Any]) -> str:
    query = variable.get("query", "")
    return str(query.get("query", "") if isinstance(query, dict) else query)


@dataclass
class Expr:
    where: str  # dashboard file, panel title and refId, or variable name
    expr: str
    variable: str | None = None  # the variable's name, for a variable query


def expressions(path: Path) -> list[Expr]:
    dashboard = load(path)
    out = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("hide"):
                continue
            where = f"{path.name}: {panel['title']!r} {target['refId']}"
            out.append(Expr(where, target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            out.append(Expr(f"{path.name}: variable {variable['name']}",
                            variable_query(variable), variable["name"]))  # fmt: skip
    return out


def documented_metrics() -> set[str]:
    text = (ROOT / "docs" / "metrics.md").read_text(encoding="utf-8")
    return set(re.findall(r"^\| `(outpost_[a-z0-9_]+)`", text, re.M))


def recording_rules() -> set[str]:
    names = set()
    for path in RULES.glob("*.yml"):
        for group in yaml.safe_load(path.read_text(encoding="utf-8"))["groups"]:
            names |= {rule["record"] for rule in group["rules"] if "record" in rule}
    return names


STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
NAMES = re.compile(r"(?<![\w:$])[a-zA-Z_:][a-zA-Z0-9_:]*")


def series_names(expr: str) -> set[str]:
    """The names in an expression that are series: outpost_* and recording rules (a:b:c),
    string literals (label values) left out."""
    bare = STRINGS.sub('""', expr)
    return {n for n in NAMES.findall(bare) if n.startswith("outpost_") or ":" in n}


def test_the_dashboards_are_well_formed() -> None:
    assert len(DASHBOARDS) == 6, DASHBOARDS
    uids: dict[str, str] = {}
    for path in DASHBOARDS:
        dashboard = load(path)
        uid = dashboard["uid"]
        assert uid not in uids, f"{path.name} and {uids[uid]} share the uid {uid}"
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", uid), uid
        uids[uid] = path.name
        assert dashboard.get("id") is None, path.name  # provisioned: Grafana assigns it
        assert dashboard["schemaVersion"] >= 38, path.name
        assert re.search(r"\(.*[\u4e00-\u9fff].*\)$", dashboard["title"]), dashboard["title"]
        assert "outpost" in dashboard["tags"], path.name

        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        for variable in variables.values():
            if variable["type"] == "query":
                assert variable["datasource"]["uid"] == DATASOURCE_UID, variable["name"]
                assert variable_query(variable).startswith(("label_values(", "query_result("))
            if variable.get("includeAll") and "allValue" in variable:
                assert variable["allValue"] == ".*", variable["name"]
        # The chain: sites of the selected counties, hosts of the selected sites.
        for name, parent in (("site", "$county"), ("host", "$site"), ("device", "$site")):
            if name in variables:
                assert parent in variable_query(variables[name]), f"{path.name}: {name}"

        ids, titles = set(), set()
        for panel in panels(dashboard):
            where = f"{path.name}: {panel.get('title')!r}"
            assert panel["id"] not in ids, f"{where}: id {panel['id']} twice"
            assert panel["title"] not in titles, f"{where}: title twice"
            ids.add(panel["id"])
            titles.add(panel["title"])
            assert {"x", "y", "w", "h"} <= panel["gridPos"].keys(), where
            if panel["type"] in ("row", "text"):
                continue
            assert re.search(r"\(.*[\u4e00-\u9fff].*\)", panel["title"]), where
            assert panel["datasource"] == {"type": "prometheus", "uid": DATASOURCE_UID}, where
            assert panel["targets"], where
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(set(ref_ids)) == len(ref_ids), where
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == DATASOURCE_UID, where
                assert target["expr"].strip(), where

        # Every $variable an expression uses is one of the dashboard's, or Grafana's own.
        for e in expressions(path):
            for name in re.findall(r"\$\{?(\w+)", e.expr):
                assert name in variables or name in BUILTIN, f"{e.where}: ${name} undefined"
            if e.variable:
                # A variable's query uses only the variables defined before it.
                before = list(variables)[: list(variables).index(e.variable)]
                for name in re.findall(r"\$\{?(\w+)", e.expr):
                    assert name in before, f"{e.where}: ${name} is not defined before it"


def test_the_overview_maps_the_sites() -> None:
    overview = load(GRAFANA / "dashboards" / "county-overview.json")
    [geomap] = [p for p in panels(overview) if p["type"] == "geomap"]
    [layer] = geomap["options"]["layers"]
    assert layer["location"] == {"mode": "coords", "latitude": "latitude",
                                 "longitude": "longitude"}  # fmt: skip
    [target] = geomap["targets"]
    assert "outpost_site_info" in target["expr"] and "outpost_site_coverage" in target["expr"]
    assert target["format"] == "table" and target["instant"]
    # Prometheus' label values are strings: the panel makes numbers of the coordinates.
    [convert] = [t for t in geomap["transformations"] if t["id"] == "convertFieldType"]
    assert {(c["targetField"], c["destinationType"]) for c in convert["options"]["conversions"]} \
        == {("latitude", "number"), ("longitude", "number")}  # fmt: skip


def test_every_series_is_documented() -> None:
    documented, rules = documented_metrics(), recording_rules()
    assert "outpost_site_info" in documented and rules
    for path in DASHBOARDS:
        for e in expressions(path):
            for name in series_names(e.expr):
                if ":" in name:
                    assert name in rules, f"{e.where}: {name} is no recording rule"
                else:
                    assert name in documented, f"{e.where}: {name} not in docs/metrics.md"


def test_the_provisioning_files() -> None:
    datasources = yaml.safe_load(
        (GRAFANA / "provisioning" / "datasources" / "outpost.yml").read_text(encoding="utf-8")
    )
    [source] = datasources["datasources"]
    assert source["uid"] == DATASOURCE_UID and source["type"] == "prometheus"
    providers = yaml.safe_load(
        (GRAFANA / "provisioning" / "dashboards" / "outpost.yml").read_text(encoding="utf-8")
    )
    [provider] = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]


# --- the fleet ------------------------------------------------------------------------------


def start_collector(procs: Procs, broker: Mosquitto, root: Path) -> Collector:
    config = {
        "alerting": {
            "engine": {"evaluate_every_seconds": 1},
            "rules": {"host_never_reported": {"for_seconds": 0}},
        }
    }
    (root / "collector.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    (root / "sites.yaml").write_text(yaml.safe_dump(SITES, allow_unicode=True), "utf-8")
    extra = ("--config", str(root / "collector.yaml"), "--sites", str(root / "sites.yaml"))
    return Collector(procs, broker, root, *extra).start()


def start_srv1(
    procs: Procs, broker: Mosquitto, collector: Collector, snmpd: Snmpd, root: Path
) -> Path:
    """srv1 of site-a: probes, SNMP and an auth log of the test's; returns the log."""
    auth_log = root / "auth.log"
    auth_log.write_text("", encoding="utf-8")
    watched = root / "sshd_config"
    watched.write_text("PermitRootLogin no\n", encoding="utf-8")
    local = {"address": "127.0.0.1", "timeout_seconds": 1.0}
    config = {
        "sources": {
            "probes": {
                "targets": [
                    {"name": "county-dc", "kind": "tcp", "role": "uplink",
                     "port": collector.port, **local},
                    {"name": "gateway", "kind": "tcp", "role": "gateway",
                     "port": broker.port, **local},
                    {"name": "county-web", "kind": "http", "role": "county-dc",
                     "url": f"{collector.base}/healthz", "timeout_seconds": 1.0},
                ]
            },
            "snmp": {
                "timeout_seconds": 0.3, "retries": 0,
                "devices": [{"name": DEVICE, "address": "127.0.0.1", "port": snmpd.port,
                             "community": "outpost-ro"}],
            },
            "security": {
                "auth_log": {"path": str(auth_log),
                             "bruteforce": {"threshold": 5, "window_seconds": 3600}},
                "files": {"paths": [str(watched)]},
            },
        }
    }  # fmt: skip
    path = root / "agent-srv1.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    Agent(procs, broker, root, SITE, HOST, 0.5, "--config", str(path)).start()
    return auth_log


def failed_logins(host: str, source: str, n: int, start: int = 0) -> str:
    stamp = time.strftime("%b %e %H:%M:%S")
    return "".join(
        f"{stamp} {host} sshd[{4000 + i}]: Failed password for root from {source} "
        f"port {50000 + i} ssh2\n"
        for i in range(start, start + n)
    )


def publish_ups(broker: Mosquitto, site: str, host: str) -> None:
    """A shell agent (docs/protocol.md): online, a battery, and an outage it lived through."""
    topic = f"outpost/v1/{site}/{host}"
    now = int(time.time() * 1000)
    envelope = {"v": 1, "site": site, "host": host, "agent_id": f"{host}-sh", "boot_id": "b1"}
    metrics = {
        **envelope, "seq": 1, "ts": now,
        "samples": [{"name": "outpost_battery_power_plugged", "value": 1},
                    {"name": "outpost_battery_percent", "value": 87}],
    }  # fmt: skip
    outage = {
        "kind": "outage", "severity": "warning", "ts": now,
        "message": "power was off for 95 s",
        "attrs": {"started_ms": str(now - 95_000), "ended_ms": str(now),
                  "duration_seconds": "95", "rebooted": "true", "agent_down": "false",
                  "gateway": "silent", "uplink": "silent"},
    }  # fmt: skip
    events = {**envelope, "seq": 2, "ts": now, "events": [outage]}
    status = {"v": 1, "status": "online", "site": site, "host": host}
    pub = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1"]
    subprocess.run([*pub, "-r", "-t", f"{topic}/status", "-m", json.dumps(status)], check=True)
    subprocess.run([*pub, "-t", f"{topic}/metrics", "-m", json.dumps(metrics)], check=True)
    subprocess.run([*pub, "-t", f"{topic}/events", "-m", json.dumps(events)], check=True)


def restart(snmpd: Snmpd, procs: Procs, root: Path) -> Snmpd:
    """The same snmpd again on the same port: its sysUpTime starts over, a 'reboot'."""
    assert snmpd.proc is not None
    snmpd.proc.stop()
    again = Snmpd(procs, root)
    again.port = snmpd.port
    return again.start()


def build_fleet(procs: Procs, broker: Mosquitto, root: Path) -> Prometheus:
    collector = start_collector(procs, broker, root)
    prom = Prometheus(procs, root / "prometheus", [f"127.0.0.1:{collector.port}"]).start()
    snmpd = Snmpd(procs, root / "snmpd").start()
    auth_log = start_srv1(procs, broker, collector, snmpd, root)
    Agent(procs, broker, root, "site-b", "srv2", 0.5).start()
    publish_ups(broker, SITE, "ups1")

    def value(name: str, **labels: str) -> float | None:
        return collector.value(name, **labels)

    wait_for("srv1's auth_log check",
             lambda: value("outpost_security_check_success", site=SITE, host=HOST,
                           check="auth_log") == 1.0, 20)  # fmt: skip
    # Prometheus' first scrape comes a few seconds after it starts (target discovery): the
    # failures counter must be seen moving, from 0 to 9 and on to 11.
    wait_for("Prometheus scraping the collector", prom.targets_up, 20)
    with auth_log.open("a", encoding="utf-8") as f:
        f.write(failed_logins(HOST, "192.0.2.44", 3) + failed_logins(HOST, "203.0.113.9", 6))
    failures = f'outpost_security_auth_failures_total{{site="{SITE}", host="{HOST}"}} == 9'
    wait_for("9 failed logins in Prometheus", lambda: prom.query(failures), 20)
    wait_for(f"{DEVICE} up", lambda: value("outpost_host_up", site=SITE, host=DEVICE) == 1, 20)
    time.sleep(1)  # a few polls: the uptime the agent compares with
    restart(snmpd, procs, root / "snmpd")
    rebooted = {"site": SITE, "host": DEVICE, "kind": "device_rebooted", "severity": "warning"}
    wait_for("device_rebooted", lambda: value("outpost_host_events_total", **rebooted), 20)
    with auth_log.open("a", encoding="utf-8") as f:  # the counter moves on between scrapes
        f.write(failed_logins(HOST, "192.0.2.44", 2, start=3))
    return prom


# --- the dashboards against the fleet ---------------------------------------------------------

# Targets that may come back empty from this fleet (every panel must still show something).
MAY_BE_EMPTY = {
    ("host.json", "Interfaces (网卡)", "B"): "the test host's virtual NIC reports no speed",
}
ALL = None  # a variable set to All


def grafana_escape(value: str, variable: dict[str, Any]) -> str:
    """A value as Grafana's Prometheus datasource puts it into a query: regex-escaped for a
    multi-value or All variable (it lands in =~"..."), else only backslashes and quotes."""
    if not (variable.get("multi") or variable.get("includeAll")):
        return value.replace("\\", "\\\\").replace("'", "\\'")
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


class Filler:
    """Grafana's variable interpolation for one dashboard, with each variable's options
    listed by its own query against the live Prometheus."""

    def __init__(self, prom: Prometheus, dashboard: dict[str, Any], use_all: bool) -> None:
        self.prom = prom
        self.variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        self.chosen: dict[str, list[str] | None] = {}
        self.options: dict[str, list[str]] = {}
        for name, variable in self.variables.items():
            query = self.fill(variable_query(variable))
            self.options[name] = wait_for(
                f"{VALUES[name]} among the options of {query}",
                functools.partial(self.listing, query, VALUES[name]),
                20,
            )
            self.chosen[name] = ALL if use_all and variable.get("includeAll") else [VALUES[name]]

    def listing(self, query: str, wanted: str) -> list[str]:
        """The options of a variable once they include the value the test wants."""
        options = self.list(query)
        return options if wanted in options else []

    def list(self, query: str) -> list[str]:
        """What a variable query lists: label_values(selector, label) as Grafana 10 asks
        Prometheus for it (the label values API with match[]), or query_result(expr)."""
        label_values = re.fullmatch(r"label_values\((?:(.*),\s*)?(\w+)\)", query, re.S)
        if label_values:
            selector, label = label_values.groups()
            params = {"match[]": selector} if selector else {}
            params["start"] = str(time.time() - 3600)
            return sorted(self.prom.api(f"label/{label}/values", **params))
        result = re.fullmatch(r"query_result\((.*)\)", query, re.S)
        assert result, query
        return [json.dumps(r["metric"]) for r in self.prom.query(result.group(1))]

    def value(self, name: str) -> str:
        if name in BUILTIN:
            return BUILTIN[name]
        variable, chosen = self.variables[name], self.chosen[name]
        if chosen is ALL:
            if "allValue" in variable:
                return str(variable["allValue"])
            chosen = self.options[name]
        escaped = [grafana_escape(v, variable) for v in chosen]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"

    def fill(self, expr: str) -> str:
        pattern = r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]"
        return re.sub(pattern, lambda m: self.value(next(g for g in m.groups() if g)), expr)


def test_every_query_runs_and_returns_data(procs: Procs, broker: Mosquitto, tmp_path: Path) -> None:
    started = time.monotonic()
    prom = build_fleet(procs, broker, tmp_path)

    # Every target of every panel, filled in twice: each variable at a value of the fleet,
    # then the multi-value ones at All.
    queries: dict[tuple[str, str, str, bool], str] = {}
    for path in DASHBOARDS:
        dashboard = load(path)
        for use_all in (False, True):
            filler = Filler(prom, dashboard, use_all)
            for panel in panels(dashboard):
                for target in panel.get("targets", []):
                    key = (path.name, panel["title"], target["refId"], use_all)
                    queries[key] = filler.fill(target["expr"])
    assert not [q for q in queries.values() if "$" in q or "[[" in q]

    # Each parses (Prometheus answers an error: AssertionError at once); each returns data
    # once the fleet's series have been scraped a few times (rates need two samples).
    empty = dict(queries)
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline and any(k[:3] not in MAY_BE_EMPTY for k in empty):
        for key, expr in list(empty.items()):
            try:
                rows = prom.query(expr)
            except AssertionError as exc:
                raise AssertionError(f"{key}: {expr}\n{exc}") from None
            if rows:
                del empty[key]
        if empty:
            time.sleep(0.5)

    # Graph panels ask for ranges: those parse too, over the fleet's short history.
    end = time.time()
    for key, expr in queries.items():
        try:
            prom.api("query_range", query=expr, start=str(end - 20), end=str(end), step="2")
        except AssertionError as exc:
            raise AssertionError(f"{key} as a range query: {expr}\n{exc}") from None

    missing = [f"{key}: {queries[key]}" for key in empty if key[:3] not in MAY_BE_EMPTY]
    assert not missing, "no data:\n" + "\n".join(missing)
    shown = {(name, title, use_all) for name, title, _, use_all in set(queries) - set(empty)}
    blank = {(name, title, use_all) for name, title, _, use_all in queries} - shown
    assert not blank, f"panels without any data: {blank}"
    print(
        f"{len(queries)} queries ran, {len(empty)} allowed empty; {time.monotonic() - started:.1f}s"
    )
