"""SNMP gear through the whole chain: Debian's snmpd, an agent polling it over v2c and over
SNMPv3 authPriv, mosquitto, the collector's /metrics. Then snmpd stops, and the devices turn
unreachable while the agent itself stays up."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from harness import Agent, Collector, Mosquitto, Proc, Procs, wait_for

from agent import snmpclient
from agent.sources.snmp import COLUMNS, SCALARS, SYS_NAME

pytestmark = pytest.mark.integration

SNMPD = shutil.which("snmpd") or "/usr/sbin/snmpd"
SITE = "site-snmp"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Snmpd:
    """net-snmp's agent on a free loopback UDP port, with its own config and state only (-C),
    in the foreground (-f) so that Procs stops it by its PID."""

    def __init__(self, procs: Procs, root: Path) -> None:
        self.procs = procs
        self.port = free_udp_port()
        root.mkdir(parents=True, exist_ok=True)
        (root / "state").mkdir(exist_ok=True)
        self.pidfile = root / "snmpd.pid"
        self.conf = root / "snmpd.conf"
        self.conf.write_text(
            f"[snmp] persistentDir {root / 'state'}\n"  # where createUser keeps its keys
            "[snmp] mibs :\n"  # no MIB files to parse: quiet and quick
            "sysName test-gear\n"
            "rocommunity outpost-ro 127.0.0.1\n"
            'createUser u SHA "authpassphrase" AES "privpassphrase"\n'
            'createUser u512 SHA-512 "authpassphrase" AES-256 "privpassphrase"\n'
            'createUser umd5 MD5 "authpassphrase" DES "privpassphrase"\n'
            "rouser u priv\nrouser u512 priv\nrouser umd5 priv\n"
        )
        self.proc: Proc | None = None

    def target(self, **kw: Any) -> snmpclient.Target:
        return snmpclient.Target("127.0.0.1", self.port, timeout=0.3, retries=0, **kw)

    def start(self) -> Snmpd:
        argv = [
            SNMPD,
            "-f",
            "-Lo",
            "-C",
            "-c",
            str(self.conf),
            "-p",
            str(self.pidfile),
            f"udp:127.0.0.1:{self.port}",
        ]
        self.proc = self.procs.start("snmpd", argv)
        v2c = {"gear": self.target(community="outpost-ro")}
        wait_for(
            "snmpd to answer",
            lambda: not snmpclient.poll(v2c, SCALARS, [], 10, 1)["gear"].error,
            10,
            interval=0.1,
        )
        assert int(self.pidfile.read_text()) == self.proc.pid  # -f: no fork, the PID is ours
        return self


@pytest.fixture
def snmpd(procs: Procs, tmp_path: Path) -> Snmpd:
    return Snmpd(procs, tmp_path / "snmpd").start()


def test_the_client_speaks_each_version_to_snmpd(snmpd: Snmpd) -> None:
    v3 = {"user": "u", "auth_password": "authpassphrase", "priv_password": "privpassphrase"}
    targets = {
        "v2c": snmpd.target(community="outpost-ro"),
        "v3": snmpd.target(version="3", **v3),
        "v3-sha512-aes256": snmpd.target(
            version="3", **{**v3, "user": "u512"}, auth_protocol="sha512", priv_protocol="aes256"
        ),
        "v3-md5-des": snmpd.target(
            version="3", **{**v3, "user": "umd5"}, auth_protocol="md5", priv_protocol="des"
        ),
        "wrong-password": snmpd.target(version="3", **{**v3, "auth_password": "wrongpassword"}),
        "wrong-community": snmpd.target(community="public"),
    }
    got = snmpclient.poll(targets, SCALARS, list(COLUMNS.values()), 25, 8)
    for name in ("v2c", "v3", "v3-sha512-aes256", "v3-md5-des"):
        assert not got[name].error and not got[name].table_error, (name, got[name].error)
        assert got[name].scalars[SYS_NAME] == b"test-gear"
        assert (*COLUMNS["ifDescr"], 1) in got[name].table, name  # lo, walked to the end
    assert "digest" in got["wrong-password"].error.lower()
    assert "timeout" in got["wrong-community"].error  # snmpd ignores unknown communities
    assert got["wrong-community"].duration < 2


def _up(collector: Collector, host: str) -> float | None:
    return collector.value("outpost_host_up", site=SITE, host=host)


def test_devices_report_as_hosts_and_turn_unreachable(
    procs: Procs, broker: Mosquitto, collector: Collector, snmpd: Snmpd, tmp_path: Path
) -> None:
    (tmp_path / "community").write_text("outpost-ro\n")
    (tmp_path / "priv").write_text("privpassphrase\n")
    config = tmp_path / "agent.yaml"
    config.write_text(
        "sources:\n  snmp:\n    timeout_seconds: 0.5\n    retries: 0\n    devices:\n"
        f"      - {{name: gear-v2c, address: 127.0.0.1, port: {snmpd.port},"
        f" community_file: {tmp_path / 'community'}}}\n"
        f"      - {{name: gear-v3, address: 127.0.0.1, port: {snmpd.port}, version: '3',"
        f" user: u, auth_password: authpassphrase, priv_password_file: {tmp_path / 'priv'}}}\n"
    )
    agent = Agent(procs, broker, tmp_path, SITE, "proxy1", 0.5, "--config", str(config)).start()
    devices = ("gear-v2c", "gear-v3")
    wait_for("both devices up", lambda: all(_up(collector, d) == 1.0 for d in devices), 20)
    m = collector.metrics()
    for device in devices:
        labels = {"site": SITE, "host": device}
        assert m[("outpost_host_uptime_seconds", frozenset(labels.items()))] > 0
        lo = frozenset({**labels, "interface": "lo"}.items())
        assert ("outpost_network_receive_bytes_total", lo) in m, device
        assert m[("outpost_network_up", lo)] == 1.0
        info = frozenset({**labels, "sys_name": "test-gear"}.items())
        assert m[("outpost_snmp_info", info)] == 1.0
    assert _up(collector, "proxy1") == 1.0  # the agent is a host of its own

    assert snmpd.proc is not None
    stopped = time.monotonic()
    snmpd.proc.stop()
    wait_for("both devices down", lambda: all(_up(collector, d) == 0.0 for d in devices), 10)
    print(f"snmpd stopped -> outpost_host_up 0 in {time.monotonic() - stopped:.2f}s")
    hosts = collector.hosts()
    assert [hosts[(SITE, d)]["state"] for d in devices] == ["unreachable", "unreachable"]
    assert agent.proc is not None and agent.proc.running()
    assert hosts[(SITE, "proxy1")]["state"] == "online"
    lo = frozenset({"site": SITE, "host": "gear-v2c", "interface": "lo"}.items())
    assert ("outpost_network_receive_bytes_total", lo) not in collector.metrics()
