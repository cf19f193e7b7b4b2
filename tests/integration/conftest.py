"""Fixtures for integration tests: every process a test starts is stopped by its PID at
teardown, also when the test fails (and its log is printed then)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Collector, Mosquitto, Procs
from webhook import Receiver


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.path):
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Procs]:
    p = Procs(tmp_path)
    yield p
    p.stop_all()
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for proc in p.all:
            sys.stderr.write(f"--- {proc.name} (pid {proc.pid}) ---\n{proc.output()[-4000:]}\n")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
    return rep


@pytest.fixture
def broker(procs: Procs, tmp_path: Path) -> Mosquitto:
    return Mosquitto(procs, tmp_path / "broker").start()


@pytest.fixture
def collector(procs: Procs, broker: Mosquitto, tmp_path: Path) -> Collector:
    return Collector(procs, broker, tmp_path).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook endpoint on a free loopback port (tests/integration/webhook.py)."""
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()
