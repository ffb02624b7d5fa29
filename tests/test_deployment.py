"""End to end: a real Prefect server and worker on loopback, `prefect deploy`, a deployment run of the tiny
profile to Completed, the model in the MLflow registry, the nightly schedule; every process stopped by PID."""

from __future__ import annotations

import os
import signal
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



@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """`prefect deploy --all` from the clone, then `prefect worker start --pool patchrec-local` the ordinary way
    (another directory, no PATCHREC_* variables) and `prefect deployment run patchrec/full-pipeline` (tiny)."""
    tmp = tmp_path_factory.mktemp("plain")
    svc = Services(tmp / "state", port=_free_port())
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    env = {"PATH": svc.env()["PATH"], "HOME": str(tmp), "PREFECT_API_URL": svc.api,
           "PREFECT_HOME": str(tmp / "worker-prefect"), "PREFECT_WORKER_QUERY_SECONDS": "2",
           "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    worker = None
    try:
        svc.start_server()
        svc.create_pool()
        svc.deploy()
        with open(tmp / "worker.log", "wb") as log:
            worker = subprocess.Popen([sys.executable, "-m", "prefect", "worker", "start", "--pool", "patchrec-local"],
                                      cwd=elsewhere, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        run = subprocess.run(
            [sys.executable, "-m", "prefect", "deployment", "run", "patchrec/full-pipeline", "--param", "profile=tiny",
             "--param", f"state_dir={tmp / 'runs'}", "--watch", "--watch-timeout", "900"],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=960)
        yield svc, tmp, run
    finally:
        if worker is not None:  # SIGTERM to the worker's group, SIGKILL if it outlives 30 s
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(worker.pid, sig)
                    worker.wait(timeout=30)
                    break
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    continue
        svc.down()


def test_a_plain_prefect_worker_runs_the_deployment_from_anywhere(plain_run):
    _, tmp, run = plain_run
    log = (tmp / "worker.log").read_text(errors="replace")[-3000:]
    assert run.returncode == 0 and "Completed" in run.stdout, run.stdout + run.stderr + log
    assert (tmp / "runs" / "mlflow.db").is_file()  # the flow ran in the clone and wrote where it was told


def test_the_run_summary_shows_in_the_prefect_ui(plain_run):
    """A real browser (headless Chromium through Playwright) opens the flow run's summary artifact on the real
    server and finds the numbers; `PATCHREC_SCREENSHOT=<png>` keeps a screenshot (docs/lifecycle.md has one)."""
    import re
    import shutil

    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install '.[browser]' (make ui-check)")
    chromium = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium: apt-get install chromium (make ui-check)")
    svc, _, run = plain_run
    assert run.returncode == 0, run.stdout + run.stderr
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with SyncPrefectClient(svc.api) as client:  # this module's own server: its one deployment run
        (summary,) = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["patchrec-full-pipeline-tiny-summary"])))
    hr = re.search(r"\| patchrec-tiny \(this run\) \| [^|]+ \| [^|]+ \| [^|]+ \| [^|]+ \| ([0-9.]+) \|",
                   summary.data).group(1)
    ui = svc.api.removesuffix("/api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1300})
        page.goto(f"{ui}/artifacts/artifact/{summary.id}", wait_until="networkidle", timeout=120_000)
        page.get_by_text("patchrec full-pipeline: tiny on tiny").wait_for(timeout=60_000)
        body = page.inner_text("body")
        if os.environ.get("PATCHREC_SCREENSHOT"):
            page.screenshot(path=os.environ["PATCHREC_SCREENSHOT"], full_page=True)
        browser.close()
    assert "Test metrics" in body and hr in body and "promoted to champion" in body.replace("`", "")
