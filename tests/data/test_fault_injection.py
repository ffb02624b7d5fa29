"""kill -9 during a nightly re-prepare: the published folder is always one complete, validated generation."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import write

pytestmark = pytest.mark.slow  # kills real processes

SOURCE = {"interactions": {"path": "events-*.csv", "user": "u", "item": "i", "time": "t"},
          "items": {"path": "items.csv", "id": "id", "title": "title"}}


def _events(first_user: int, users: int) -> str:
    rows = [f"u{u},i{(u + k) % 20},{1_000_000_000 + 1000 * u + k}" for u in range(first_user, first_user + users)
            for k in range(12)]
    return "u,i,t\n" + "\n".join(rows) + "\n"


def _prepare(raw: Path, out: Path, source: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "patchrec.cli", "data", "prepare", "--format", "generic", "--raw",
                             str(raw), "--out", str(out), "--source-config", str(source), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check_published(out: Path) -> int:
    """Assert `out` is one complete, validated generation; returns its interaction count."""
    assert out.is_symlink(), "out is not a published generation"
    gen = out.resolve()
    summary = json.loads((gen / "prepare.json").read_text())
    assert all(summary["validation"].values())
    assert json.loads((gen / "validation" / "summary.json").read_text())
    inter = pd.read_parquet(gen / "interactions.parquet")
    assert len(inter) == summary["interactions"]
    assert pd.read_parquet(gen / "samples.parquet").split.value_counts().sum() == sum(summary["samples"].values())
    assert json.loads((gen / "_state" / "manifest.json").read_text())["files"]
    return len(inter)


def test_kill_during_nightly_reprepare_never_publishes_a_mix(tmp_path):
    raw, out, source = tmp_path / "raw", tmp_path / "out", tmp_path / "source.yaml"
    write(source, yaml.safe_dump(SOURCE))
    write(raw / "items.csv", "id,title\n" + "".join(f"i{k},Item {k}\n" for k in range(20)))
    write(raw / "events-1.csv", _events(0, 30))
    t0 = time.monotonic()
    first = _prepare(raw, out, source)
    assert first.wait(timeout=300) == 0, first.stderr.read()
    took = time.monotonic() - t0
    old = _check_published(out)
    assert old == 360

    write(raw / "events-2.csv", _events(30, 20))  # the nightly drop
    killed = 0
    for fraction in (0.35, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95):
        proc = _prepare(raw, out, source)
        time.sleep(took * fraction)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait(timeout=60)
        n = _check_published(out)
        assert n in (old, old + 240), n
        if n == old + 240:  # it finished before the kill: start over from the old generation
            break
    assert killed >= 3
    final = _prepare(raw, out, source)
    assert final.wait(timeout=300) == 0, final.stderr.read()
    assert _check_published(out) == old + 240
    assert len(list((tmp_path / "out.generations").glob("gen-*"))) <= 2
    assert not list((tmp_path / "out.generations").glob("build-*"))
