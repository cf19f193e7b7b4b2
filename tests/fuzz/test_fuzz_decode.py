"""Runs the fuzz target for a bounded time (``OUTPOST_FUZZ_SECONDS``, default 20): it must
finish without a finding, after a meaningful number of inputs, and write nothing into the
repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "atheris", reason="atheris (the fuzzing engine) installs only on x86_64 Linux, macOS"
)

HERE = Path(__file__).resolve().parent
TARGET = HERE / "fuzz_decode.py"
SEEDS = HERE / "corpus"
MIN_INPUTS = 2000


def test_the_decode_path_survives_fuzzing(tmp_path: Path) -> None:
    seconds = int(os.environ.get("OUTPOST_FUZZ_SECONDS") or 20)
    seeds_before = sorted(p.name for p in SEEDS.iterdir())
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    done = subprocess.run(
        [sys.executable, str(TARGET), f"-max_total_time={seconds}", "-print_final_stats=1",
         "-timeout=10", f"-artifact_prefix={tmp_path}/", str(corpus), str(SEEDS)],
        cwd=tmp_path, capture_output=True, text=True, timeout=seconds + 120,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    found = re.search(r"stat::number_of_executed_units:\s*(\d+)", out)
    assert found, out[-2000:]
    runs = int(found.group(1))
    assert runs >= MIN_INPUTS, f"only {runs} inputs in {seconds} s"
    assert re.search(rf"INFO: +{len(seeds_before)} files found in {re.escape(str(SEEDS))}", out)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(("crash-", "leak-", "oom-"))]
    assert sorted(p.name for p in SEEDS.iterdir()) == seeds_before
    sys.stderr.write(f"fuzz_decode: {runs} inputs in {seconds} s\n")
