"""Two real processes at once: on a fresh MLflow store, and on one stage folder (one writer, the other reuses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real processes importing MLflow

INIT_STORE = """
import sys
from pathlib import Path
import mlflow
from patchrec import tracking
state = Path(sys.argv[1])
exp = tracking.experiment_id(state, "concurrent")
with mlflow.start_run(experiment_id=exp):
    mlflow.log_metric("x", 1.0)
"""

SAME_STAGE = """
import json, os, sys, time
from pathlib import Path
from patchrec.contract import StageOutput, run_stage
folder = Path(sys.argv[1])
def build(out):
    with open(out.parent / "builds.log", "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    time.sleep(4)
    (out / "table.txt").write_text("done")
    return StageOutput(metrics={"rows": 3.0})
rec = run_stage("demo", folder, "fp1", build)
print(json.dumps({"reused": rec.reused, "rows": rec.metrics["rows"]}))
"""


def _env() -> dict[str, str]:
    """This environment without the MLflow URI an earlier test's `mlflow.set_tracking_uri` left in it."""
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}


def _both(script: str, arg: Path) -> list[subprocess.CompletedProcess]:
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(arg)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env()) for _ in range(2)]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        out.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return out


def test_two_runs_on_a_fresh_state_initialise_the_mlflow_store_once(tmp_path):
    """Without the store lock both processes ran MLflow's migrations on one file: 'table experiments already
    exists' / 'duplicate column name', and the half-migrated store failed every later run."""
    state = tmp_path / "state"
    for res in _both(INIT_STORE, state):
        assert res.returncode == 0, res.stderr[-2000:]
    again = subprocess.run([sys.executable, "-c", INIT_STORE, str(state)], capture_output=True, text=True, timeout=300,
                           env=_env())
    assert again.returncode == 0, again.stderr[-2000:]
    from mlflow import MlflowClient

    uri = f"sqlite:///{state / 'mlflow.db'}"
    runs = MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name("concurrent").experiment_id])
    assert len(runs) == 3


def test_two_runs_of_one_stage_build_it_once_and_the_second_reuses(tmp_path):
    folder = tmp_path / "stage-fp1"
    results = _both(SAME_STAGE, folder)
    for res in results:
        assert res.returncode == 0, res.stderr[-2000:]
    outs = sorted(json.loads(r.stdout.strip().splitlines()[-1])["reused"] for r in results)
    assert outs == [False, True]  # one built it, the other waited and reused the finished folder
    assert len((tmp_path / "builds.log").read_text().split()) == 1
    assert any("waiting for stage demo" in r.stderr for r in results)
    assert (Path(folder) / "table.txt").read_text() == "done"
