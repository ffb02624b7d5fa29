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
    assert not quiet["trained"] and quiet["reason"].startswith("champion v1 was trained on this data")
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


def test_a_failed_nightly_leaves_its_data_for_the_next_and_a_corrupt_champion_download_is_refused(
        prefect_server, tmp_path):
    """Audit: a nightly that failed after publishing its generation used that night's data up ("no new data"
    the next night), and a corrupted champion download was cached as a finished stage for good."""
    from flows.pipeline import nightly_retrain_flow as nightly_retrain

    raw = tmp_path / "raw"
    shutil.copytree(PROJECT_ROOT / "examples" / "tiny" / "raw", raw)
    over = {"data.raw": str(raw), "registry.margin": -1.0}
    state = tmp_path / "state"
    assert nightly_retrain("tiny", over, str(state))["registry"]["version"] == 1

    shutil.copyfile(PROJECT_ROOT / "examples" / "tiny" / "events-next-night.csv", raw / "events-2026-11-02.csv")
    (artifact,) = [p for p in (state / "mlartifacts").rglob("trainable.pt") if p.parent.name.startswith("bundle")]
    good = artifact.read_bytes()
    artifact.write_bytes(good[: len(good) // 2])  # the registry's copy of v1 is damaged
    with pytest.raises(RuntimeError, match="registered as .*corrupted"):
        nightly_retrain("tiny", over, str(state))  # fails after the new generation was published
    assert not list((state / "champions" / "patchrec-tiny").glob("v1-*/manifest.json"))  # nothing cached

    artifact.write_bytes(good)  # repaired
    night = nightly_retrain("tiny", over, str(state))
    assert night["trained"] and "differs from champion v1" in night["reason"], night["reason"]
    assert "warm start from champion v1" in night["reason"] and night["registry"]["version"] == 2
