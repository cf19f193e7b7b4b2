"""deploy/prometheus: promtool accepts the config and the rules, the rule unit tests in
deploy/prometheus/tests pass, and the alert rules stay in step with the collector's built-in
rules (names, `for`, severities, thresholds) and with docs/metrics.md (series names).
A real Prometheus runs them in tests/integration/test_prometheus.py."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector.alerting.engine import BROKER_RULE, INHIBITED_BY_SITE, SITE_RULE, EngineConfig
from collector.alerting.model import SEVERITIES
from collector.alerting.rules import BUILTIN_RULES, FOR_SECONDS, RulesConfig
from collector.catalogue import CATALOGUE

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "prometheus"
CONFIG = DEPLOY / "prometheus.yml"
ALERTS = DEPLOY / "rules" / "outpost-alerts.yml"
RECORDING = DEPLOY / "rules" / "outpost-recording.yml"
RULE_TESTS = sorted((DEPLOY / "tests").glob("*.yml"))
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"
OPERATIONS_MD = ROOT / "docs" / "operations.md"

# Alerts here that are not built-in rules of the collector.
EXTRA_ALERTS = {"collector_down"}
# Built-in rules that read events or a counter: instant in the collector, a 1 h window here.
INSTANT = {"gear_rebooted", "ssh_bruteforce", "new_listening_port", "file_changed",
           "collector_losing"}  # fmt: skip

needs_promtool = pytest.mark.skipif(
    not Path(PROMTOOL).exists(), reason="promtool is not installed (scripts/install --test)"
)


def _promtool(*args: str) -> str:
    run = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
    out = run.stdout + run.stderr
    assert run.returncode == 0, f"promtool {' '.join(args)} failed:\n{out}"
    return out


@needs_promtool
def test_promtool_check_config() -> None:
    """The config and the rule files it names (relative to it)."""
    out = _promtool("check", "config", str(CONFIG))
    assert "2 rule files found" in out, out


@needs_promtool
def test_promtool_check_rules() -> None:
    _promtool("check", "rules", str(RECORDING), str(ALERTS))


@needs_promtool
def test_promtool_test_rules() -> None:
    assert RULE_TESTS
    out = _promtool("test", "rules", *map(str, RULE_TESTS))
    assert out.count("SUCCESS") == len(RULE_TESTS), out


def _rules(path: Path) -> list[dict[str, Any]]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def _seconds(duration: str | None) -> float:
    if duration is None:
        return 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    parts = re.findall(r"(\d+)(ms|s|m|h|d)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def _builtin(name: str) -> list[dict[str, Any]]:
    """The alert rules for a built-in rule, without clock_skew's clock_jump event rule."""
    return [
        r for r in _rules(ALERTS)
        if r.get("alert") == name and "event" not in r.get("labels", {})
    ]  # fmt: skip


def test_every_builtin_rule_is_there_with_its_defaults() -> None:
    alerts = {r["alert"] for r in _rules(ALERTS)}
    assert alerts == set(BUILTIN_RULES) | EXTRA_ALERTS
    defaults = RulesConfig()
    for name in BUILTIN_RULES:
        [rule] = _builtin(name)
        builtin = defaults.rule(name)
        assert rule["labels"]["severity"] == builtin.severity, name
        want_for = 0.0 if name in INSTANT else FOR_SECONDS[name]
        assert _seconds(rule.get("for")) == want_for, name
        if builtin.threshold is not None:
            numbers = {float(n) for n in re.findall(r"(?<![\w.])\d+(?:\.\d+)?", rule["expr"])}
            assert builtin.threshold in numbers, (name, builtin.threshold, rule["expr"])


def test_state_rules_resolve_like_the_collector() -> None:
    """keep_firing_for is the engine's resolve_after_seconds; event and counter rules look
    back over its instant_hold_seconds instead."""
    engine = EngineConfig()
    for rule in _rules(ALERTS):
        name = rule["alert"]
        if name in EXTRA_ALERTS:
            continue
        if name in INSTANT or "event" in rule.get("labels", {}):
            assert "keep_firing_for" not in rule, name
            hold = f"[{int(engine.instant_hold_seconds // 3600)}h]"
            assert hold in rule["expr"], name
        else:
            assert _seconds(rule["keep_firing_for"]) == engine.resolve_after_seconds, name


def test_alerts_are_labelled_and_annotated() -> None:
    cjk = re.compile(r"[\u4e00-\u9fff]")
    for rule in _rules(ALERTS):
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        notes = rule["annotations"]
        assert set(notes) == {"summary", "summary_zh", "description"}, name
        assert not cjk.search(notes["summary"]), name
        assert cjk.search(notes["summary_zh"]), name
        assert "\n" not in notes["summary"] and "\n" not in notes["summary_zh"], name


_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


def _series_names(text: str) -> set[str]:
    """outpost_* metric names in an expression or template (recorded names, which have
    colons, are not metric names of the collector)."""
    return {n for n in _NAME.findall(text) if n.startswith("outpost_") and ":" not in n}


def test_only_documented_series_are_used() -> None:
    used: set[str] = set()
    for rule in _rules(ALERTS) + _rules(RECORDING):
        used |= _series_names(rule["expr"])
        for text in rule.get("annotations", {}).values():
            used |= _series_names(text)
    assert used, "no outpost_ series found"
    unknown = used - set(CATALOGUE)
    assert not unknown, f"not in docs/metrics.md (collector/catalogue.py): {sorted(unknown)}"


def test_recording_rule_names_follow_the_convention() -> None:
    for rule in _rules(RECORDING):
        level, metric, ops = rule["record"].split(":")
        assert re.fullmatch(r"[a-z]+(_[a-z]+)*", level), rule["record"]
        assert metric.startswith("outpost_") and not metric.endswith("_total"), rule["record"]
        assert ops, rule["record"]
        # The level names the labels kept: `site_host_interface` keeps site, host, interface.
        by = re.search(r"\b(?:sum|avg) by \(([^)]*)\)", rule["expr"])
        assert by, rule["record"]
        kept = [label.strip() for label in by.group(1).split(",")]
        assert "_".join(kept) == level, rule["record"]


def test_every_rule_is_unit_tested() -> None:
    """Each alert has a promtool test where it fires and one where it does not; each
    recording rule is queried in one."""
    fires: set[str] = set()
    quiet: set[str] = set()
    queried = ""
    for path in RULE_TESTS:
        for test in yaml.safe_load(path.read_text(encoding="utf-8"))["tests"]:
            for case in test.get("alert_rule_test", []):
                (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
            queried += " ".join(case["expr"] for case in test.get("promql_expr_test", []))
    alerts = {r["alert"] for r in _rules(ALERTS)}
    assert alerts - fires == set(), "never seen firing"
    assert alerts - quiet == set(), "never seen not firing"
    recorded = {r["record"] for r in _rules(RECORDING)}
    assert {name for name in recorded if name not in queried} == set()


def _inhibit_snippet() -> str:
    """The inhibit_rules block of docs/operations.md's Prometheus section."""
    text = OPERATIONS_MD.read_text(encoding="utf-8")
    section = text[text.index("\n## Prometheus\n") :]
    section = section[: section.index("\n## ", 1)]
    start = section.index("```yaml\ninhibit_rules:") + len("```yaml\n")
    return section[start : section.index("```", start)]


def test_the_documented_inhibition_is_the_collectors(tmp_path: Path) -> None:
    rules = yaml.safe_load(_inhibit_snippet())["inhibit_rules"]
    by_site, blind = rules
    assert by_site["source_matchers"] == [f'alertname="{SITE_RULE}"']
    [targets] = by_site["target_matchers"]
    assert set(re.fullmatch(r'alertname=~"(.*)"', targets)[1].split("|")) == INHIBITED_BY_SITE
    assert by_site["equal"] == ["site"]
    assert blind["source_matchers"] == [f'alertname=~"{BROKER_RULE}|collector_down"']
    assert blind["target_matchers"] == ['alertname!~"collector_.*"']
    assert "equal" not in blind
    if Path(AMTOOL).exists():
        config = {"route": {"receiver": "null"}, "receivers": [{"name": "null"}],
                  "inhibit_rules": rules}  # fmt: skip
        path = tmp_path / "alertmanager.yml"
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        run = subprocess.run([AMTOOL, "check-config", str(path)],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
        assert run.returncode == 0, run.stdout + run.stderr
