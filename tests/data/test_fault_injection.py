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


def test_kill_between_rename_and_link_keeps_the_generation_published_before(tmp_path):
    """Audit: the orphan (renamed, never linked) was kept as "previous" and the generation that really was
    published before it was pruned."""
    import os

    raw, out, source = tmp_path / "raw", tmp_path / "out", tmp_path / "source.yaml"
    write(source, yaml.safe_dump(SOURCE))
    write(raw / "items.csv", "id,title\n" + "".join(f"i{k},Item {k}\n" for k in range(20)))
    write(raw / "events-1.csv", _events(0, 30))
    assert _prepare(raw, out, source).wait(timeout=300) == 0
    first = out.resolve()
    write(raw / "events-2.csv", _events(30, 20))
    os.environ["PATCHREC_KILL_AT"] = "generations.renamed"
    try:
        killed = _prepare(raw, out, source)
    finally:
        del os.environ["PATCHREC_KILL_AT"]
    assert killed.wait(timeout=300) == -signal.SIGKILL
    assert out.resolve() == first and len(list((tmp_path / "out.generations").glob("gen-*"))) == 2  # an orphan
    write(raw / "events-3.csv", _events(50, 10))
    done = _prepare(raw, out, source)
    assert done.wait(timeout=300) == 0, done.stderr.read()
    gens = sorted((tmp_path / "out.generations").glob("gen-*"))
    assert first in gens and out.resolve() in gens and len(gens) == 2  # current + the one published before
    assert _check_published(out) == 360 + 240 + 120


def test_write_failure_is_one_line_naming_the_file_and_frees_the_build(tmp_path):
    """Audit: a file-size limit or a full disk while building tables gave a DuckDB traceback or a message
    without a path, and the failed build kept its disk space until the next run."""
    import resource

    raw, out, source = tmp_path / "raw", tmp_path / "out", tmp_path / "source.yaml"
    write(source, yaml.safe_dump(SOURCE))
    write(raw / "items.csv", "id,title\n" + "".join(f"i{k},Item {k}\n" for k in range(20)))
    write(raw / "events-1.csv", _events(0, 30))
    write(raw / "events-2.csv", "u,i,t\n" + "".join(f"v{u},i{u % 20},{1_000_000_000 + u}\n" for u in range(60_000)))

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))

    proc = subprocess.run([sys.executable, "-m", "patchrec.cli", "data", "prepare", "--format", "generic", "--raw",
                           str(raw), "--out", str(out), "--source-config", str(source)], capture_output=True,
                          text=True, preexec_fn=limit, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert lines[0].startswith("patchrec: error: ") and str(tmp_path) in lines[0], lines[0]
    assert "cannot write" in lines[0] and "File too large" in lines[0], lines[0]  # was "cannot read <raw file>"
    assert not list((tmp_path / "out.generations").glob("build-*")) and not out.exists()
