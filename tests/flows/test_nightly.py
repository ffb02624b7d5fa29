"""nightly-retrain: first night trains, a night without new data registers nothing, new data warm-starts."""

from __future__ import annotations

import shutil

import pytest

from patchrec.profiles import PROJECT_ROOT

pytestmark = pytest.mark.slow  # whole pipelines with MLflow


def test_nightly_retrain(prefect_server, tmp_path):
    from mlflow import MlflowClient

    from flows.pipeline import nightly_retrain_flow as nightly_retrain
    from patchrec import tracking
    from patchrec.contract import read_manifest
    from patchrec.io import read_json

    raw = tmp_path / "raw"
    shutil.copytree(PROJECT_ROOT / "examples" / "tiny" / "raw", raw)
    over = {"data.raw": str(raw), "registry.margin": -1.0}  # always promote: the test follows the champion
    state = str(tmp_path / "state")

    first = nightly_retrain("tiny", over, state)
    assert first["trained"] and first["reason"].startswith("no champion yet") and first["registry"]["version"] == 1

    quiet = nightly_retrain("tiny", over, state)
    assert not quiet["trained"] and quiet["reason"] == "no new data; champion v1 stays"
    tracking.tracking_uri(tmp_path / "state")
    client = MlflowClient()
    assert len(client.search_model_versions("name = 'patchrec-tiny'")) == 1
    assert client.get_run(quiet["mlflow_run"]).data.tags["nightly"] == quiet["reason"]

    shutil.copyfile(PROJECT_ROOT / "examples" / "tiny" / "events-next-night.csv", raw / "events-2026-11-02.csv")
    night = nightly_retrain("tiny", over, state)
    assert night["trained"] and "warm start from champion v1" in night["reason"]
    assert "ppt" not in night["reused"]  # warm start: fine-tuning continues from the champion, no PPT
    assert night["registry"]["version"] == 2 and night["registry"]["promoted"]
    assert "champions/patchrec-tiny/v1" in read_manifest(night["run_dir"], "pft").info["init_from"]
    assert read_json(tmp_path / "state" / "data" / "tiny" / "prepare.json")["users"] == 64
