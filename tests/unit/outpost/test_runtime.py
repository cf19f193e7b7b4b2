"""Reading a config again while running: the SIGHUP flag, problems logged rather than exit,
and which keys changed."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from agent.config import AgentConfig
from outpost.runtime import Reload, SignalFlag, changed_keys, load_or_log


@pytest.fixture
def _keep_sighup() -> Iterator[None]:
    before = signal.getsignal(signal.SIGHUP)
    yield
    signal.signal(signal.SIGHUP, before)


def test_a_flag_is_taken_once_however_often_it_was_set() -> None:
    flag = SignalFlag()
    assert flag.take() is False
    flag.set()
    flag.set()
    assert flag.take() is True
    assert flag.take() is False
    flag.set()
    assert flag.take() is True


@pytest.mark.usefixtures("_keep_sighup")
def test_sighup_sets_the_flag_and_nothing_else() -> None:
    reload = Reload(None, AgentConfig, {"site": "s1", "host": "h1"}).on_sighup()
    assert reload.due() is False
    os.kill(os.getpid(), signal.SIGHUP)  # the handler runs before kill returns here
    assert reload.due() is True
    assert reload.due() is False


def test_read_uses_the_same_file_and_flags(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("site: s1\nhost: h1\ninterval_seconds: 5\n")
    reload = Reload(path, AgentConfig, {"host": "flag-host"})
    cfg = reload.read()
    assert cfg is not None and cfg.interval_seconds == 5 and cfg.host == "flag-host"
    path.write_text("site: s1\nhost: h1\ninterval_seconds: 2\n")
    cfg = reload.read()
    assert cfg is not None and cfg.interval_seconds == 2 and cfg.host == "flag-host"


def test_a_bad_config_is_logged_with_file_and_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("site: s1\nhost: h1\ninterval_seconds: -1\nbrokr: {}\n")
    with caplog.at_level(logging.ERROR, logger="outpost.runtime"):
        assert load_or_log(path, AgentConfig, {}) is None
    text = caplog.text
    assert f"{path}: interval_seconds: found -1 (int), expected a number >= 0.1" in text
    assert f"{path}: brokr: found unknown key" in text
    assert "still running with the previous config" in text


def test_changed_keys() -> None:
    a = AgentConfig(site="s1", host="h1")
    b = AgentConfig(site="s1", host="h1", interval_seconds=2.0)
    assert changed_keys(a, a) == []
    assert changed_keys(a, b) == ["interval_seconds"]
    c = AgentConfig(site="s2", host="h1", interval_seconds=2.0)
    assert changed_keys(b, c) == ["site"]
    blocks = {"sources": {"probes": {"enabled": False}}, "outbox": {"max_bytes": 70000}}
    d = msgspec.convert({"site": "s1", "host": "h1", **blocks}, AgentConfig)
    assert changed_keys(a, d) == ["outbox.max_bytes", "sources.probes"]
    assert changed_keys(d, a, depth=1) == ["outbox", "sources"]
    assert changed_keys(a, d, depth=3) == ["outbox.max_bytes", "sources.probes.enabled"]
