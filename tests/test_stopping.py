"""SIGTERM (what a Prefect cancel or Kubernetes sends) and SIGINT stop a run within seconds, with one line
that says what is kept; a stopped training run resumes from the checkpoint it wrote on the way out."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patchrec.profiles import PROJECT_ROOT
from tests.conftest import SHARED

pytestmark = pytest.mark.slow  # real processes, trained until they are stopped


def _prepare(raw: Path, out: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "patchrec.cli", "data", "prepare", "--raw", str(raw), "--out", str(out),
                    "--json", *args], check=True, capture_output=True, timeout=300)


def _stop(proc: subprocess.Popen, sig: int, ready, timeout: float = 240) -> tuple[int, str, float]:
    """Wait until `ready()`, send `sig`, return (exit code, stderr, seconds from the signal to the exit)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "the run never got going"
        time.sleep(0.2)
    t0 = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return proc.returncode, proc.stderr.read(), time.monotonic() - t0


def _steps(run: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("step_")) for p in (run / "checkpoints").glob("step_*"))


def test_training_stops_on_sigterm_and_sigint_with_a_checkpoint_and_resumes(tmp_path):
    from patchrec.config import DataConfig, load_source
    from patchrec.data.prepare import prepare_data

    data, run = tmp_path / "data", tmp_path / "run"
    tiny = PROJECT_ROOT / "examples" / "tiny"
    prepare_data(DataConfig(format="generic", raw=tiny / "raw", out=data, source=load_source(tiny / "source.yaml"),
                            protocol="loo", min_history=2, max_future_days=3650.0))
    cmd = [sys.executable, "-m", "patchrec.cli", "train", "--data", str(data), "--out", str(run), "--stage", "pft",
           "--layout", "item", "--head", "scoring", "--base", "tiny", "--epochs", "100000", "--batch-size", "4",
           "--model-cache", str(tmp_path / "models")]
    last = 0
    for sig, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        rc, err, took = _stop(proc, sig, lambda: bool(_steps(run)) and max(_steps(run)) > last)
        lines = [ln for ln in err.splitlines() if ln.startswith("patchrec:")]
        assert rc == code and took < 20, (rc, took, err[-2000:])
        assert len(lines) == 1 and f"stopped by {signal.Signals(sig).name} after step" in lines[0], err[-2000:]
        assert "run again to resume" in lines[0] and "Traceback" not in err
        step = int(lines[0].split("after step ")[1].split()[0])
        assert step in _steps(run) and step > last  # the second run resumed from the first one's checkpoint
        last = step
    assert not (run / "manifest.json").exists()  # stopped, not finished


@pytest.mark.skipif(not (SHARED / "ml-100k" / "u.data").is_file(), reason="needs ../shared/data/ml-100k")
def test_sasrec_stops_on_sigterm_within_seconds(tmp_path):
    """Audit: SIGTERM did not stop a bench.quality process during SASRec training (SIGINT did after ~60 s)."""
    data = tmp_path / "data"
    _prepare(SHARED / "ml-100k", data, "--format", "movielens-100k", "--min-rating", "4")
    proc = subprocess.Popen([sys.executable, "-m", "patchrec.cli", "baseline", "--kind", "sasrec", "--data", str(data),
                             "--out", str(tmp_path / "sasrec"), "--max-epochs", "100000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    rc, err, took = _stop(proc, signal.SIGTERM, lambda: time.monotonic() - started > 20)
    assert rc == 143 and took < 15, (rc, took, err[-2000:])
    assert "patchrec: SASRec stopped by SIGTERM in epoch" in err and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "sasrec" / "manifest.json").exists()
