"""`outpost up`: broker, collector and a local agent with no set-up, stopped cleanly by Ctrl-C."""

from __future__ import annotations

import json
import signal
import socket
import urllib.request
from pathlib import Path

import pytest
from harness import Procs, free_port, wait_for

pytestmark = pytest.mark.integration


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("broker", ["mosquitto", "embedded"])
def test_up_runs_everything_and_stops_on_ctrl_c(procs: Procs, tmp_path: Path, broker: str) -> None:
    bport, hport = free_port(), free_port()
    args = ["up", "--state-dir", str(tmp_path / "up"), "--broker-port", str(bport),
            "--http-port", str(hport), "--site", "demo", "--host", "this-host",
            "--interval", "0.5"]  # fmt: skip
    if broker == "embedded":
        args.append("--embedded")
    up = procs.outpost("up", *args)
    wait_for("outpost up to say it is up", lambda: "Press Ctrl-C" in up.output(), 30)
    out = up.output()
    assert f"http://127.0.0.1:{hport}/metrics" in out
    assert ("MQTT 3.1.1" if broker == "embedded" else "MQTT 5") in out

    def online() -> bool:
        url = f"http://127.0.0.1:{hport}/api/v1/hosts"
        with urllib.request.urlopen(url, timeout=2) as resp:
            hosts = json.load(resp)["hosts"]
        return any(
            h["host"] == "this-host" and h["state"] == "online" and (h["last_seq"] or 0) >= 2
            for h in hosts
        )

    wait_for("the local agent online with data", online, 30)
    assert up.popen is not None
    up.popen.send_signal(signal.SIGINT)
    assert up.popen.wait(30) == 0, up.output()
    assert "Stopped." in up.output()
    assert not _accepts(bport) and not _accepts(hport)
