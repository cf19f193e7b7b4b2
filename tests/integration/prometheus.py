"""A real Prometheus for integration tests: Debian's ``prometheus`` (scripts/install --test
installs it) on a free loopback port, scraping given targets with deploy/prometheus's config,
its storage in the test's directory, stopped by its PID with the test's other processes.

    prom = Prometheus(procs, tmp_path / "prometheus", [f"127.0.0.1:{collector.port}"]).start()
    wait_for("the target up", prom.targets_up, 15)
    rows = prom.query("site_host:outpost_network_receive_bytes:rate5m")

The config is deploy/prometheus/prometheus.yml adapted for a test: the ``outpost`` job scrapes
``scrape_targets``, every other job is left out, scrapes and rule evaluations come every
``interval`` (1 s), and the rule files are deploy/prometheus/rules/*.yml (or ``rule_files``)
by absolute path. ``alertmanager`` (``host:port``) makes it send its alerts there; without
it no Alertmanager is configured.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from harness import Proc, Procs, free_port, wait_for

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
CONFIG = DEPLOY / "prometheus.yml"
RULES = DEPLOY / "rules"
JOB = "outpost"


def available() -> bool:
    return Path(PROMETHEUS).exists()


def adapted_config(
    scrape_targets: Sequence[str],
    *,
    interval: str = "1s",
    rule_files: Sequence[Path] | None = None,
    alertmanager: str | None = None,
    base: Path = CONFIG,
) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml, adapted for a test (see the module's docstring)."""
    config: dict[str, Any] = yaml.safe_load(base.read_text(encoding="utf-8"))
    glob = config.setdefault("global", {})
    glob.update(scrape_interval=interval, scrape_timeout=interval, evaluation_interval=interval)
    jobs = [job for job in config.get("scrape_configs", []) if job.get("job_name") == JOB]
    assert jobs, f"{base} has no scrape config for job {JOB!r}"
    job = jobs[0]
    job.update(scrape_interval=interval, scrape_timeout=interval)
    job["static_configs"] = [{"targets": list(scrape_targets)}]
    config["scrape_configs"] = [job]
    files = sorted(RULES.glob("*.yml")) if rule_files is None else list(rule_files)
    config["rule_files"] = [str(Path(f).resolve()) for f in files]
    if alertmanager is None:
        config.pop("alerting", None)
    else:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return config


class Prometheus:
    def __init__(
        self,
        procs: Procs,
        root: Path,
        scrape_targets: Sequence[str],
        *,
        interval: str = "1s",
        rule_files: Sequence[Path] | None = None,
        alertmanager: str | None = None,
    ) -> None:
        self.procs = procs
        self.root = root
        self.port = free_port()
        self.scrape_targets = list(scrape_targets)
        self.conf = root / "prometheus.yml"
        self.config = adapted_config(
            scrape_targets, interval=interval, rule_files=rule_files, alertmanager=alertmanager
        )
        self.proc: Proc | None = None
        self.args: list[str] = []  # more command-line flags

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> Prometheus:
        """Start it and wait until it is ready (config and rules loaded, TSDB open)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
        self.proc = self.procs.start(
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={self.conf}",
                f"--storage.tsdb.path={self.root / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=info",
                *self.args,
            ],
        )
        wait_for("Prometheus' /-/ready", self._ready, timeout)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def _ready(self) -> bool:
        assert self.proc is not None and self.proc.running(), (
            f"prometheus exited:\n{self.proc.output()[-2000:] if self.proc else ''}"
        )
        try:
            with urllib.request.urlopen(self.base + "/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except urllib.error.HTTPError:  # 503 while starting
            return False

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the ``data`` of a successful answer, else AssertionError."""
        url = f"{self.base}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as resp:
                answer = json.load(resp)
        except urllib.error.HTTPError as exc:
            with exc:
                answer = json.load(exc)
        assert answer.get("status") == "success", f"{url}: {answer}"
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query now: the result vector, each ``{"metric": {...}, "value": [ts,
        "v"]}`` (a scalar or string result comes as a one-element list)."""
        data = self.api("query", query=expr)
        result = data["result"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": result}]
        return list(result)

    def values(self, expr: str) -> dict[frozenset[tuple[str, str]], float]:
        """``query`` as {labels: value}."""
        return {frozenset(r["metric"].items()): float(r["value"][1]) for r in self.query(expr)}

    def targets(self) -> list[dict[str, Any]]:
        """The active targets (``scrapeUrl``, ``health`` up/down/unknown, ``lastError``...)."""
        return list(self.api("targets", state="active")["activeTargets"])

    def targets_up(self) -> bool:
        """Every scrape target has been scraped, and successfully."""
        targets = self.targets()
        return bool(targets) and all(t["health"] == "up" for t in targets)

    def rules(self) -> list[dict[str, Any]]:
        """Every rule of every group (``name``, ``type``, ``health``, ``lastError``...)."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing)."""
        return list(self.api("alerts")["alerts"])
