"""A catalogue of broken agent.yaml, collector.yaml and sites.yaml files: each is refused by the
real loader and by the real check commands with a message that names the file, the key path
and what was expected; the commands exit 2 and print no traceback.

config/*.yaml are the working examples (tests/unit/test_examples.py); these are the mistakes
people make with them.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from typer.testing import CliRunner

from agent.config import AgentConfig
from collector.config import CollectorConfig
from collector.inventory import Inventory
from outpost.cli import app
from outpost.config import ConfigError, load

TYPES: dict[str, type[msgspec.Struct]] = {
    "agent": AgentConfig,
    "collector": CollectorConfig,
    "sites": Inventory,
}
A = "site: town-a\nhost: srv1\n"
S = "sites:\n  - id: town-a\n    hosts: [srv1]\n"
SLUG = "a slug: 1 to 63 lower-case letters, digits or '-'"
NOT_ROOT = os.geteuid() != 0

# Contents that are not text: made by ``_write``.
DIRECTORY, LOOP, NOTHING, NO_PERMISSION = "<directory>", "<symlink loop>", "<none>", "<0000>"


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # agent | collector | sites
    content: str | bytes
    path: str  # the key path the message names ("" for the file as a whole)
    expected: str  # a fragment of what the message says was expected (or what is wrong)
    loader: bool = True  # the loader refuses it (else only the check command does)


CASES = [
    # agent.yaml: types, keys, values
    Case("wrong-type", "agent", A + "interval_seconds: fast\n", "interval_seconds",
         "found 'fast' (str), expected a number >= 0.1"),
    Case("bool-for-int", "agent", A + "outbox:\n  max_inflight: true\n", "outbox.max_inflight",
         "found true (bool), expected an integer >= 1"),
    Case("null-for-slug", "agent", "site: town-a\nhost: null\n", "host",
         f"found null, expected {SLUG}"),
    Case("unknown-key", "agent", A + "intervall_seconds: 5\n", "intervall_seconds",
         "did you mean 'interval_seconds'?"),
    Case("unknown-nested-key", "agent", A + "broker:\n  tls:\n    cafile: /x\n",
         "broker.tls.cafile", "did you mean 'ca_file'?"),
    Case("bad-slug", "agent", "site: Town Hall\nhost: srv1\n", "site", SLUG),
    Case("slug-with-slash", "agent", "site: town-a\nhost: a/b\n", "host", SLUG),
    Case("slug-with-newline", "agent", 'site: "town-a\\n"\nhost: srv1\n', "site", SLUG),
    Case("negative-interval", "agent", A + "interval_seconds: -5\n", "interval_seconds",
         "found -5 (int), expected a number >= 0.1"),
    Case("infinite-interval", "agent", A + "interval_seconds: .inf\n", "interval_seconds",
         "<= 86400"),
    Case("nan-interval", "agent", A + "interval_seconds: .nan\n", "interval_seconds",
         "found nan (float)"),
    Case("missing-required-key", "agent", "site: town-a\n", "host",
         f"found missing, expected {SLUG}"),
    Case("bad-url", "agent", A + "broker:\n  url: http://broker:1883\n", "broker.url",
         "expected mqtt://HOST:PORT, or mqtts://HOST:PORT for TLS"),
    Case("url-with-path", "agent", A + "broker:\n  url: mqtt://broker:1883/outpost\n", "broker.url",
         "mqtt://HOST:PORT"),
    Case("bad-enum", "agent", A + "broker:\n  protocol: '4'\n", "broker.protocol",
         "expected one of '3.1.1', '5'"),
    Case("enum-as-number", "agent", A + "broker:\n  protocol: 5\n", "broker.protocol",
         "found 5 (int), expected one of '3.1.1', '5'"),
    Case("bad-log-level", "agent", A + "log:\n  level: verbose\n", "log.level",
         "expected one of 'debug', 'error', 'info', 'warning'"),
    Case("outbox-too-small", "agent", A + "outbox:\n  max_bytes: 1000\n", "outbox.max_bytes",
         "expected an integer >= 65536"),
    Case("keepalive-too-short", "agent", A + "broker:\n  keepalive_seconds: 1\n",
         "broker.keepalive_seconds", "expected an integer >= 2"),
    Case("list-for-mapping", "agent", A + "sources: []\n", "sources",
         "found a list, expected a mapping"),
    Case("bad-probe-kind", "agent",
         A + "sources:\n  probes:\n    targets:\n      - {name: gw, kind: ping, address: 10.0.0.1}"
         "\n",
         "sources.probes.targets[0].kind", "expected one of 'dns', 'http', 'icmp', 'tcp'"),
    Case("probe-lacks-port", "agent",
         A + "sources:\n  probes:\n    targets:\n      - {name: gw, kind: tcp, address: 10.0.0.1}"
         "\n",
         "sources.probes.targets[0]", "tcp target 'gw' needs port"),
    Case("snmp-device-named-as-host", "agent",
         A + "sources:\n  snmp:\n    devices:\n"
         "      - {name: srv1, address: 10.0.0.1, community: public}\n",
         "", "SNMP device 'srv1' has the agent's own host name"),
    # the file itself
    Case("top-level-list", "agent", "- site\n- host\n", "", "found a list, expected a mapping"),
    Case("top-level-scalar", "agent", "just some text\n", "", "expected a mapping"),
    Case("invalid-yaml", "agent", "site: [town-a\nhost: srv1\n", "",
         "found invalid YAML at line 2, column 5"),
    Case("tab-indent", "agent", "site: town-a\n\thost: srv1\n", "",
         "found invalid YAML at line 2, column 1"),
    Case("duplicate-key", "agent", A + "site: town-b\n", "", "found duplicate key 'site'"),
    Case("empty-file", "agent", "", "site", "found missing"),
    Case("comments-only", "agent", "# site: town-a\n", "host", "found missing"),
    Case("non-utf8", "agent", b"site: town-\xe9\nhost: srv1\n", "",
         "found bytes that are not UTF-8 at offset 11, expected a UTF-8 text file"),
    Case("utf16", "agent", A.encode("utf-16"), "", "expected a UTF-8 text file"),
    Case("directory", "agent", DIRECTORY, "", "an unreadable file (Is a directory)"),
    Case("symlink-loop", "agent", LOOP, "", "an unreadable file (Too many levels of symbolic"),
    Case("no-such-file", "agent", NOTHING, "", "found no such file, expected a readable YAML file"),
    Case("no-permission", "agent", NO_PERMISSION, "", "an unreadable file (Permission denied)"),
    # collector.yaml
    Case("listen-as-number", "collector", "listen: 9468\n", "listen", "found 9468 (int)"),
    Case("stale-too-short", "collector", "stale_after_seconds: 1\n", "stale_after_seconds",
         "expected a number >= 5"),
    Case("ack-interval-zero", "collector", "ack_interval_seconds: 0\n", "ack_interval_seconds",
         "expected a number > 0"),
    Case("too-many-labels", "collector", "limits:\n  max_labels: 100\n", "limits.max_labels",
         "<= 64"),
    Case("bad-log-format", "collector", "log:\n  format: xml\n", "log.format",
         "expected one of 'json', 'text'"),
    Case("bad-notifier-type", "collector",
         "alerting:\n  notifiers:\n    - {name: n1, type: pager, url: 'http://x'}\n",
         "alerting.notifiers[0].type", "expected one of 'webhook', 'alertmanager', 'smtp'"),
    Case("duplicate-notifier", "collector",
         "alerting:\n  notifiers:\n    - {name: n1, type: webhook, url: 'http://x'}\n"
         "    - {name: n1, type: webhook, url: 'http://y'}\n",
         "alerting", "the name 'n1' is used more than once"),
    Case("bad-public-url", "collector", "alerting:\n  public_url: 'ftp://x'\n",
         "alerting.public_url", "found 'ftp://x' (str), expected a string matching"),
    Case("alerting-not-a-mapping", "collector", "alerting: true\n", "alerting",
         "found true (bool), expected a mapping"),
    Case("token-file-missing", "collector", "alerting:\n  api_token_file: /nonexistent/token\n",
         "alerting", "cannot read the API token from /nonexistent/token", loader=False),
    # sites.yaml (checked with `outpost collector check` through a collector.yaml naming it)
    Case("bad-time-zone", "sites", "sites:\n  - id: town-a\n    timezone: Mars/Olympus\n",
         "sites[0]", "unknown time zone 'Mars/Olympus'"),
    Case("duplicate-site", "sites", S + "  - id: town-b\n  - id: town-a\n", "",
         "sites[2].id: 'town-a' is already the id of sites[0]"),
    Case("bad-site-id", "sites", "sites:\n  - id: Town A\n", "sites[0].id", SLUG),
    Case("missing-site-id", "sites", "sites:\n  - name: 城关镇\n", "sites[0].id", "found missing"),
    Case("bad-host-slug", "sites", "sites:\n  - id: town-a\n    hosts: [srv1, 'Srv 2']\n",
         "sites[0].hosts[1]", SLUG),
    Case("latitude-out-of-range", "sites", "sites:\n  - id: town-a\n    latitude: 200\n",
         "sites[0].latitude", "expected a number >= -90 and <= 90 or null"),
    Case("sites-as-mapping", "sites", "sites:\n  town-a: {}\n", "sites",
         "found a mapping, expected a list of mappings"),
    Case("unknown-site-key", "sites", "sites:\n  - id: town-a\n    hostz: [srv1]\n",
         "sites[0].hostz", "did you mean 'hosts'?"),
    Case("bad-staffed-hours", "sites",
         "sites:\n  - id: town-a\n    staffing:\n      hours:\n"
         "        - {days: workdays, start: '25:00', end: '17:00'}\n",
         "sites[0].staffing.hours[0]", "start: '25:00' is not a time of day"),
    Case("sites-non-utf8", "sites", b"sites:\n  - id: town-a\n    name: \xb3\xc7\xb9\xd8\n", "",
         "bytes that are not UTF-8"),
]  # fmt: skip


def _write(case: Case, tmp_path: Path) -> Path:
    target = tmp_path / f"{case.kind}.yaml"
    if case.content == DIRECTORY:
        target.mkdir()
    elif case.content == LOOP:
        target.symlink_to(target)
    elif case.content == NOTHING:
        pass
    elif case.content == NO_PERMISSION:
        target.write_text(A)
        target.chmod(0)
    elif isinstance(case.content, bytes):
        target.write_bytes(case.content)
    else:
        target.write_text(case.content, encoding="utf-8")
    return target


def _check_args(case: Case, file: Path, tmp_path: Path) -> list[str]:
    if case.kind == "sites":
        collector = tmp_path / "collector.yaml"
        collector.write_text(f"sites_file: {file}\n")
        return ["collector", "check", "--config", str(collector)]
    return [case.kind, "check", "--config", str(file)]


def _names_it(text: str, case: Case, file: Path) -> None:
    """The message names the file, then the key path, and says what was expected."""
    where = f"{file}: {case.path}: " if case.path else f"{file}: "
    assert where in text, f"{where!r} not in:\n{text}"
    assert case.expected in text, f"{case.expected!r} not in:\n{text}"


def _params(only_loader: bool = False) -> list[object]:
    out = []
    for case in CASES:
        if only_loader and not case.loader:
            continue
        marks = []
        if case.content == NO_PERMISSION:
            marks.append(pytest.mark.skipif(not NOT_ROOT, reason="root reads every file"))
        out.append(pytest.param(case, id=f"{case.kind}-{case.id}", marks=marks))
    return out


def test_the_catalogue_is_broad() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)
    assert {c.kind for c in CASES} == set(TYPES)


@pytest.mark.parametrize("case", _params(only_loader=True))
def test_the_loader_refuses_it(case: Case, tmp_path: Path) -> None:
    file = _write(case, tmp_path)
    with pytest.raises(ConfigError) as info:
        load(file, TYPES[case.kind])
    assert all(p.file == str(file) for p in info.value.problems)
    _names_it(str(info.value), case, file)


runner = CliRunner()


@pytest.mark.parametrize("case", _params())
def test_the_check_command_refuses_it(case: Case, tmp_path: Path) -> None:
    file = _write(case, tmp_path)
    result = runner.invoke(app, _check_args(case, file, tmp_path))
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not a crash
    assert result.stdout == ""  # all of it on stderr
    assert "Traceback" not in result.stderr
    _names_it(result.stderr, case, file)


BY_ID = {c.id: c for c in CASES}


@pytest.mark.parametrize("case_id", ["non-utf8", "directory", "duplicate-site"])
def test_a_real_process_exits_2_without_a_traceback(case_id: str, tmp_path: Path) -> None:
    """The same through ``python -m outpost``: no stray output, no traceback."""
    case = BY_ID[case_id]
    file = _write(case, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "outpost", *_check_args(case, file, tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr
    _names_it(done.stderr, case, file)


# Gaps: the message does not (yet) name the file the mistake is in.


@pytest.mark.xfail(
    reason="`outpost agent check` reports an unreadable password file without naming the "
    "agent.yaml that points to it (`outpost collector check` names its file)",
    strict=True,
)
def test_agent_check_names_its_file_for_a_missing_password_file(tmp_path: Path) -> None:
    file = tmp_path / "agent.yaml"
    file.write_text(A + "broker:\n  password_file: /nonexistent/password\n")
    result = runner.invoke(app, ["agent", "check", "--config", str(file)])
    assert result.exit_code == 2 and "broker.password_file" in result.stderr
    assert f"{file}: broker.password_file" in result.stderr


@pytest.mark.xfail(
    reason="a site contact naming an unknown notifier is reported against collector.yaml "
    "('alerting: routing config'), not the sites.yaml it is written in",
    strict=True,
)
def test_a_contact_naming_an_unknown_notifier_names_the_sites_file(tmp_path: Path) -> None:
    sites = tmp_path / "sites.yaml"
    sites.write_text(
        "sites:\n  - id: town-a\n    contact:\n      notify: [{notifier: nope, to: x}]\n"
    )
    collector = tmp_path / "collector.yaml"
    collector.write_text(f"sites_file: {sites}\n")
    result = runner.invoke(app, ["collector", "check", "--config", str(collector)])
    assert result.exit_code == 2 and "no notifier named 'nope'" in result.stderr
    assert f"{sites}: sites[0].contact.notify[0]" in result.stderr
