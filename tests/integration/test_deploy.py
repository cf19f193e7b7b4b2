"""deploy/: the systemd units verify clean and carry their hardening, and deploy/install.sh
installs the agent, does nothing on a second run, starts it once systemd is there and removes
it again, all inside tmp_path: no user is created and a fake systemctl stands in for systemd.

The venv is made with --system-site-packages from the Python the tests run on, and Outpost is
installed into it with --no-deps when that Python already has Outpost's dependencies: no
download and a few seconds. Otherwise pip fetches them from the package index, as
scripts/install did. Either way pip fetches the build backend (setuptools) for the source
tree from the index, unless pip's cache or a mirror has it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ROLES = ("agent", "collector")
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
EXEC = "/opt/outpost/venv/bin/outpost"

# Every key a unit must set, and to what (each once, unless listed in MULTI).
COMMON = {
    "Type": "notify",
    "NotifyAccess": "main",
    "WatchdogSec": "60",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "Restart": "on-failure",
    "RestartSec": "5",
    "User": "outpost",
    "Group": "outpost",
    "StateDirectoryMode": "0750",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "PrivateTmp": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
}
PER_ROLE = {
    "agent": {
        "ExecStart": f"{EXEC} agent run --config /etc/outpost/agent.yaml --log-format json",
        "StateDirectory": "outpost-agent",
        "ReadWritePaths": "/var/lib/outpost-agent",
        "SupplementaryGroups": "adm systemd-journal",
        "CapabilityBoundingSet": "CAP_NET_RAW",
        "AmbientCapabilities": "CAP_NET_RAW",
        # read-only: "yes" would make the agent report /home's disk usage wrongly.
        "ProtectHome": "read-only",
    },
    "collector": {
        "ExecStart": (
            f"{EXEC} collector run --config /etc/outpost/collector.yaml --log-format json"
        ),
        "StateDirectory": "outpost-collector",
        "ReadWritePaths": "/var/lib/outpost-collector",
        "CapabilityBoundingSet": "",
        "ProtectHome": "yes",
    },
}
MULTI = {"SystemCallFilter": ["@system-service", "~@privileged @resources"]}

FAKE_SYSTEMCTL = """#!/bin/sh
# Records its arguments and keeps enabled/active as files: systemctl for install.sh's tests.
echo "$*" >> "{log}"
verb=$1; shift; now=""; unit=""
for a in "$@"; do case $a in --now) now=1 ;; --*) ;; *) unit=$a ;; esac; done
case $verb in
    is-enabled) test -e "{state}/$unit.enabled" ;;
    is-active) test -e "{state}/$unit.active" ;;
    enable) touch "{state}/$unit.enabled"; [ -z "$now" ] || touch "{state}/$unit.active" ;;
    disable) rm -f "{state}/$unit.enabled"; [ -z "$now" ] || rm -f "{state}/$unit.active" ;;
    start|restart) touch "{state}/$unit.active" ;;
    try-restart) ;;
    stop) rm -f "{state}/$unit.active" ;;
    daemon-reload) ;;
    *) echo "fake systemctl: unexpected $verb" >&2; exit 1 ;;
esac
"""


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file's sections and their keys, each key with all its values in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert current is not None and sep, f"not a unit line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _unit(role: str) -> Path:
    return DEPLOY / "systemd" / f"outpost-{role}.service"


def _analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args], capture_output=True, text=True, errors="replace", timeout=60
    )


@pytest.mark.parametrize("role", ROLES)
def test_unit_is_hardened(role: str) -> None:
    units = parse_unit(_unit(role).read_text(encoding="utf-8"))
    assert set(units) == {"Unit", "Service", "Install"}
    service = units["Service"]
    for key, value in {**COMMON, **PER_ROLE[role]}.items():
        assert service.get(key) == [value], f"{role}: {key}"
    for key, values in MULTI.items():
        assert service.get(key) == values, f"{role}: {key}"
    assert "DynamicUser" not in service  # the state keeps its owner across reinstalls
    if role == "collector":
        assert "AmbientCapabilities" not in service
        assert "SupplementaryGroups" not in service
    assert units["Install"] == {"WantedBy": ["multi-user.target"]}


@needs_analyze
@pytest.mark.parametrize("role", ROLES)
def test_unit_verifies_clean(role: str, tmp_path: Path) -> None:
    """systemd-analyze verify wants ExecStart's program to exist: /bin/true stands in for the
    venv's outpost; every other line is the unit's own."""
    lines = _unit(role).read_text(encoding="utf-8").splitlines(keepends=True)
    swapped = [ln.replace(f"ExecStart={EXEC} ", "ExecStart=/bin/true ") for ln in lines]
    assert sum(a != b for a, b in zip(lines, swapped, strict=True)) == 1
    copy = tmp_path / f"outpost-{role}.service"
    copy.write_text("".join(swapped), encoding="utf-8")
    result = _analyze("verify", str(copy))
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@needs_analyze
@pytest.mark.parametrize("role", ROLES)
def test_unit_security_exposure(role: str, record_property: pytest.RecordProperty) -> None:
    """The exposure score is recorded (and in the unit's header), not judged: 1.8 for the
    agent and 1.3 for the collector on systemd 252."""
    result = _analyze("security", "--offline=yes", str(_unit(role)))
    if result.returncode != 0 and "offline" in result.stderr:
        pytest.skip(f"this systemd-analyze has no --offline: {result.stderr.strip()}")
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert found, result.stdout + result.stderr
    record_property("exposure", found[1])
    print(f"outpost-{role}.service exposure {found[1]} {found[2]}")


def test_install_script_is_valid_shell() -> None:
    script = str(DEPLOY / "install.sh")
    assert subprocess.run(["bash", "-n", script]).returncode == 0
    if shutil.which("shellcheck"):
        checked = subprocess.run(["shellcheck", script], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OUTPOST_", "PYTHON"))}
    base = getattr(sys, "_base_executable", sys.executable)
    deps = "msgspec, paho.mqtt, prometheus_client, psutil, yaml, typer, rich, pysnmp"
    offline = subprocess.run([base, "-c", f"import {deps}"], capture_output=True).returncode == 0
    env.update(
        OUTPOST_PREFIX=str(tmp_path / "opt/outpost"),
        OUTPOST_ETC=str(tmp_path / "etc/outpost"),
        OUTPOST_UNIT_DIR=str(tmp_path / "etc/systemd/system"),
        OUTPOST_BIN_DIR=str(tmp_path / "usr/local/bin"),
        OUTPOST_SYSTEMD_DIR=str(tmp_path / "run/systemd/system"),
        OUTPOST_SYSTEMCTL=str(tmp_path / "bin/systemctl"),
        OUTPOST_SKIP_USER="1",
        OUTPOST_PYTHON=base,
        OUTPOST_VENV_ARGS="--system-site-packages" if offline else "",
        OUTPOST_PIP_ARGS="--no-deps" if offline else "",
    )
    return env


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    env = _env(tmp_path)
    for args in (
        [],
        ["frobnicate"],
        ["agent", "collector"],
        ["agent", "--from", str(tmp_path / "nowhere")],
        ["agent", "--config", str(tmp_path / "nowhere.yaml")],
        ["agent", "--uninstall", "--config", "x.yaml"],
        ["agent", "--prefix", "relative/path"],
    ):
        result = subprocess.run(["bash", str(DEPLOY / "install.sh"), *args], env=env,
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: "), (args, result.stderr)
    assert not (tmp_path / "opt").exists() and not (tmp_path / "etc").exists()


def test_install_twice_then_start_then_uninstall(tmp_path: Path) -> None:
    # A snapshot of the tree, so that edits to the work tree during the test cannot make the
    # second run see a new source.
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".*", "build", "*.egg-info",
                                                             "__pycache__", "state"))  # fmt: skip
    env = _env(tmp_path)
    prefix, etc = Path(env["OUTPOST_PREFIX"]), Path(env["OUTPOST_ETC"])
    venv, config = prefix / "venv", etc / "agent.yaml"
    unit = Path(env["OUTPOST_UNIT_DIR"]) / "outpost-agent.service"
    calls = tmp_path / "systemctl.log"
    fake = Path(env["OUTPOST_SYSTEMCTL"])
    fake.parent.mkdir(parents=True)
    (tmp_path / "sd").mkdir()
    fake.write_text(FAKE_SYSTEMCTL.format(log=calls, state=tmp_path / "sd"), encoding="utf-8")
    fake.chmod(0o755)

    def install(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(src / "deploy/install.sh"), *args], env=env,
                              capture_output=True, text=True, timeout=240)  # fmt: skip

    def changes() -> list[str]:
        """What systemctl was told to do since the last call (queries left out)."""
        lines = calls.read_text(encoding="utf-8").splitlines() if calls.exists() else []
        calls.unlink(missing_ok=True)
        return [ln for ln in lines if not ln.startswith(("is-enabled", "is-active"))]

    # 1. No systemd: venv, config from the example, unit; not started, as the config is the
    #    untouched example (exit 3).
    first = install("agent", "--from", str(src))
    assert first.returncode == 3, first.stdout + first.stderr
    assert "created the venv" in first.stdout and "systemd is not running" in first.stdout
    assert "still the example" in first.stdout
    example = (src / "config/agent.yaml").read_text(encoding="utf-8")
    assert config.read_text(encoding="utf-8") == example.replace("/etc/outpost", str(etc))
    assert config.stat().st_mode & 0o777 == 0o640
    template = _unit("agent").read_text(encoding="utf-8")
    rendered = template.replace("/opt/outpost", str(prefix)).replace("/etc/outpost", str(etc))
    assert unit.read_text(encoding="utf-8") == rendered
    assert f"ExecStart={venv}/bin/outpost agent run --config {config} " in rendered
    helped = subprocess.run([str(venv / "bin/outpost"), "--help"], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert helped.returncode == 0 and "agent" in helped.stdout, helped.stderr
    linked = Path(env["OUTPOST_BIN_DIR"]) / "outpost"
    assert linked.resolve() == (venv / "bin/outpost").resolve()  # on PATH as the docs call it
    code = "import outpost; print(outpost.__file__)"
    where = subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True,
                           text=True, timeout=60, cwd=tmp_path)  # fmt: skip
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    assert not (src / "build").exists() and not list(src.glob("*.egg-info"))
    if ANALYZE is not None:  # the real ExecStart exists now
        verified = _analyze("verify", str(unit))
        assert (verified.returncode, verified.stdout + verified.stderr) == (0, "")
    assert changes() == []

    # 2. The operator edits the config; the same install again changes nothing.
    edited = example.replace("/etc/outpost", str(etc)).replace("host: srv1", "host: srv9")
    config.write_text(edited + "# edited by hand\n", encoding="utf-8")
    stamps = [p.stat().st_mtime_ns for p in (config, unit, venv / "bin/outpost")]
    second = install("agent", "--from", str(src))
    assert second.returncode == 0, second.stdout + second.stderr
    assert "nothing changed" in second.stdout and "up to date" in second.stdout
    assert config.read_text(encoding="utf-8") == edited + "# edited by hand\n"
    assert [p.stat().st_mtime_ns for p in (config, unit, venv / "bin/outpost")] == stamps
    assert changes() == []

    # 3. systemd runs: enabled and started once; then nothing to do, and a different --config
    #    does not replace the existing one.
    Path(env["OUTPOST_SYSTEMD_DIR"]).mkdir(parents=True)
    third = install("agent", "--from", str(src))
    assert third.returncode == 0, third.stdout + third.stderr
    assert changes() == [
        "daemon-reload",
        "enable --quiet outpost-agent.service",
        "start outpost-agent.service",
    ]
    other = tmp_path / "other.yaml"
    other.write_text("site: elsewhere\n", encoding="utf-8")
    fourth = install("agent", "--from", str(src), "--config", str(other))
    assert fourth.returncode == 0, fourth.stdout + fourth.stderr
    assert "nothing changed" in fourth.stdout and "never overwritten" in fourth.stderr
    assert config.read_text(encoding="utf-8") == edited + "# edited by hand\n"
    assert changes() == []

    # 4. Uninstall: stopped, disabled, unit and venv gone; config and state kept and named.
    gone = install("agent", "--uninstall")
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert changes() == ["disable --now --quiet outpost-agent.service", "daemon-reload"]
    assert not unit.exists() and not venv.exists() and not prefix.exists()
    assert not (Path(env["OUTPOST_BIN_DIR"]) / "outpost").is_symlink()
    assert config.read_text(encoding="utf-8") == edited + "# edited by hand\n"
    assert str(config) in gone.stdout and "/var/lib/outpost-agent" in gone.stdout
    again = install("agent", "--uninstall")
    assert again.returncode == 0 and "nothing to remove" in again.stdout, again.stdout
    assert changes() == []
