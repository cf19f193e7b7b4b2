"""Log output: quiet by default, one JSON object per line when asked."""

from __future__ import annotations

import json
import logging

import pytest

from outpost.logs import setup_logging


@pytest.fixture(autouse=True)
def _restore_root() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("warning", "json")
    log = logging.getLogger("collector.ingest")
    log.warning("refused a message from %s", "站点/h1")
    log.info("not shown at warning")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["level"] == "warning" and first["logger"] == "collector.ingest"
    assert first["msg"] == "refused a message from 站点/h1" and first["ts"].endswith("Z")
    assert "ValueError: boom" in second["exc"]


@pytest.mark.parametrize(("verbose", "shown"), [(0, False), (1, True)])
def test_verbose_shows_info(capsys: pytest.CaptureFixture[str], verbose: int, shown: bool) -> None:
    setup_logging("warning", "text", verbose)
    logging.getLogger("agent.runner").info("starting")
    assert ("starting" in capsys.readouterr().err) is shown
