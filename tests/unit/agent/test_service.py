"""``outpost agent run`` without typer (agent/service.py): its flags are read as the typer
command reads them, what it cannot read goes to the typer command, and the running agent has
neither typer, click nor pydantic loaded and stops at once on SIGTERM."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from agent import service
from agent.cli import app

RUN = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]


def typer_reads(argv: list[str]) -> tuple[Path | None, dict[str, Any], int]:
    """What the typer command makes of ``argv``: (config, overrides, verbosity)."""
    params = dict(RUN.make_context("run", list(argv)).params)
    config = params.pop("config")
    verbose = params.pop("verbose")
    return config, service.overrides(**params), verbose


def test_both_know_the_same_flags() -> None:
    typer_flags = {opt for p in RUN.params for opt in p.opts}
    assert typer_flags == {*service.RUN_FLAGS, "--config", "-c", "--verbose", "-v"}


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--config", "/etc/outpost/agent.yaml", "--log-format", "json"],
        ["-c", "a.yaml", "-vv", "--interval", "0.5", "--site", "town-a", "--host", "srv1"],
        ["--broker=mqtts://b:8883", "--protocol", "3.1.1", "--username", "u", "-v", "-v"],
        ["--state-dir", "/var/lib/x/", "--password-file", "p", "--verbose", "--interval", "1e1"],
        ["--site", "a", "--site", "b", "--interval=2"],
        ["--site="],
        *(["--interval", v] for v in ("inf", " 2 ", "1_0", "+3", "1e400", ".5")),
    ],
)
def test_flags_are_read_as_the_typer_command_reads_them(argv: list[str]) -> None:
    assert service.parse(argv) == typer_reads(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--site", "a", "--help"],
        ["--nope", "x"],
        ["--interval", "fast"],
        ["--interval", "0x10"],
        ["--interval", "\uff11"],  # a full-width 1: float() takes it, typer does not
        ["--interval", "-1"],
        ["--site"],
        ["--site", "-x"],
        ["-cfile.yaml"],
        ["-c=file.yaml"],
        ["extra"],
        ["--verbose=2"],
        ["-vx"],
    ],
)
def test_what_it_does_not_read_goes_to_the_typer_command(argv: list[str]) -> None:
    assert service.parse(argv) is None
    assert service.main(argv) is False  # nothing was run


def _outpost(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "outpost", *args], capture_output=True,
                          text=True, timeout=60, **kw)  # fmt: skip


def test_help_and_mistakes_still_get_typers_answer() -> None:
    helped = _outpost("agent", "run", "--help")
    assert helped.returncode == 0 and "Usage" in helped.stdout
    assert "--password-file" in helped.stdout
    wrong = _outpost("agent", "run", "--interval", "fast")
    assert wrong.returncode == 2 and "Invalid value for '--interval'" in wrong.stderr
    bad = _outpost("agent", "run", "--site", "Town Hall", "--host", "h1")
    assert bad.returncode == 2 and "nothing was started" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_running_agent_loads_no_cli_framework_and_stops_at_once(tmp_path: Path) -> None:
    """A real ``outpost agent run`` (a broker that is not there, a one-hour cycle): once its
    outbox is open, it lists what it imported and sends itself SIGTERM."""
    code = f"""
import os, signal, sys, threading, time
def look():
    while not os.path.exists({str(tmp_path / "outbox.sqlite")!r}):
        time.sleep(0.02)
    time.sleep(0.5)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in
                    ("typer", "click", "pydantic", "rich", "argparse"))
    print("loaded:", loaded, "runner" if "agent.runner" in sys.modules else "", flush=True)
    print("term at", time.monotonic(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=look, daemon=True).start()
sys.argv = ["outpost", "agent", "run", "--site", "s1", "--host", "h1", "--interval", "3600",
            "--state-dir", {str(tmp_path)!r}, "--broker", "mqtt://127.0.0.1:9"]
from outpost.cli import main
main()
print("stopped at", time.monotonic(), flush=True)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["loaded:"] == "[] runner", done.stdout
    # The signal woke the loop, which had nothing to do for an hour and did not look at the
    # clock in between (not a speed test: anything short of the hour shows the wake).
    stopped = float(lines["stopped"].split()[-1]) - float(lines["term"].split()[-1])
    assert stopped < 30, done.stdout
