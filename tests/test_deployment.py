"""End to end: a real Prefect server and worker on loopback, `prefect deploy`, a deployment run of the tiny
profile to Completed, the model in the MLflow registry, the nightly schedule; every process stopped by PID."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patchrec.services import Services, process_alive

pytestmark = pytest.mark.slow  # a real Prefect server, worker and deployment run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_deployment_end_to_end(tmp_path):
    svc = Services(tmp_path / "state", port=_free_port())
    try:
        pids = svc.up(poll_seconds=2)
        run = subprocess.run(
            [sys.executable, "-m", "prefect", "deployment", "run", "patchrec/full-pipeline", "--param", "profile=tiny",
             "--watch", "--watch-timeout", "900"], env=svc.env(), capture_output=True, text=True, timeout=960)
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr
        sched = subprocess.run([sys.executable, "-m", "prefect", "deployment", "inspect", "patchrec/nightly-retrain"],
                               env=svc.env(), capture_output=True, text=True, timeout=120, check=True)
        assert "0 2 * * *" in sched.stdout
        from mlflow import MlflowClient

        from patchrec import tracking

        tracking.tracking_uri(tmp_path / "state")  # the deployment wrote to $PATCHREC_STATE/mlflow.db
        assert MlflowClient().get_registered_model("patchrec-tiny").aliases == {"champion": 1, "challenger": 1}
    finally:
        stopped = svc.down()
    assert len(stopped) == 2
    deadline = time.monotonic() + 20
    while any(process_alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in pids.values():
        assert not process_alive(pid), f"pid {pid} still running: {_state(pid)}"


def _state(pid: int) -> str:
    try:
        return str(Path(f"/proc/{pid}/status").read_text().splitlines()[:4])
    except OSError:
        return "gone"
