"""The command line: help everywhere, exit codes that mean something, JSON from `agent once`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from outpost import wire
from outpost.cli import app

runner = CliRunner()


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["up"],
        ["agent"],
        ["agent", "run"],
        ["agent", "once"],
        ["agent", "check"],
        ["collector"],
        ["collector", "run"],
        ["collector", "check"],
        ["collector", "status"],
    ],
)
def test_every_command_has_help(args: list[str]) -> None:
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and len(result.output) > 100


def test_agent_once_prints_a_batch_the_collector_accepts() -> None:
    result = runner.invoke(app, ["agent", "once", "--site", "s1", "--host", "h1"])
    assert result.exit_code == 0, result.output
    parts = wire.TopicParts("s1", "h1", "metrics")
    batch = wire.decode_batch(result.output.strip().encode(), parts, wire.Limits())
    assert batch.seq == 1 and batch.outbox_low == 1
    names = {s.name for s in batch.samples}
    assert {"outpost_host_uptime_seconds", "outpost_cpu_seconds_total"} <= names


def test_agent_once_refuses_a_non_slug_identity() -> None:
    result = runner.invoke(app, ["agent", "once", "--site", "Site/A", "--host", "h1"])
    assert result.exit_code == 2
    assert "site" in result.output and "Site/A" in result.output


def test_agent_check_reports_every_mistake_with_file_and_path(tmp_path: Path) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text(
        "site: ok-site\nhost: 'h#1'\nbroker:\n  url: http://example\n  protocol: '4'\n"
        "outbox:\n  max_bytes: 10\nextra: 1\n"
    )
    result = runner.invoke(app, ["agent", "check", "--config", str(bad)])
    assert result.exit_code == 2
    out = result.output
    for path in ("host", "broker.url", "broker.protocol", "outbox.max_bytes", "extra"):
        assert f"{bad}: {path}: found" in out, out
    assert "expected" in out


def test_agent_check_accepts_the_example() -> None:
    example = Path(__file__).parents[2] / "config" / "agent.yaml"
    result = runner.invoke(app, ["agent", "check", "--config", str(example)])
    assert result.exit_code == 0, result.output


def test_collector_check_reports_a_bad_sites_file(tmp_path: Path) -> None:
    sites = tmp_path / "sites.yaml"
    sites.write_text("sites:\n  - id: Bad Site\n    name: 城关镇\n    latitude: 200\n")
    conf = tmp_path / "collector.yaml"
    conf.write_text(f"sites_file: {sites}\nlisten: 127.0.0.1:9468\n")
    result = runner.invoke(app, ["collector", "check", "--config", str(conf)])
    assert result.exit_code == 2
    assert "sites[0].id" in result.output and "sites[0].latitude" in result.output


def test_collector_check_reports_a_route_to_nowhere(tmp_path: Path) -> None:
    conf = tmp_path / "collector.yaml"
    conf.write_text(
        "alerting:\n  routing:\n    routes:\n      - name: county\n        steps:\n"
        "          - notify: ['oncall:county-it']\n"
    )
    result = runner.invoke(app, ["collector", "check", "--config", str(conf)])
    assert result.exit_code == 2
    assert "county-it" in result.output and "route 'county'" in result.output


def test_checks_refuse_a_missing_password_or_ca_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    agent = tmp_path / "agent.yaml"
    agent.write_text(
        f"site: s1\nhost: h1\nbroker:\n  username: s1--h1\n  password_file: {missing}\n"
    )
    result = runner.invoke(app, ["agent", "check", "--config", str(agent)])
    assert result.exit_code == 2 and "broker.password_file" in result.output
    collector = tmp_path / "collector.yaml"
    collector.write_text(f"broker:\n  tls:\n    ca_file: {missing}\n")
    result = runner.invoke(app, ["collector", "check", "--config", str(collector)])
    assert result.exit_code == 2 and "broker.tls.ca_file" in result.output


def test_collector_status_says_what_to_do_when_unreachable() -> None:
    result = runner.invoke(app, ["collector", "status", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "Is the collector running?" in result.output


def test_collector_events_says_what_to_do_when_unreachable() -> None:
    result = runner.invoke(app, ["collector", "events", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "Is the collector running?" in result.output


def test_the_agent_side_does_not_import_the_collector() -> None:
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from outpost.cli import app\n"
        "r = CliRunner().invoke(app, ['agent', 'once', '--site', 's', '--host', 'h'])\n"
        "assert r.exit_code == 0, r.output\n"
        "bad = [m for m in sys.modules if m == 'collector' or m.startswith('collector.')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
