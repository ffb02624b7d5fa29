"""full-pipeline on the `tiny` profile: stages, reuse, MLflow runs/metrics/artifacts, registry and promotion."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.slow  # whole pipelines with MLflow


def _client(state):
    from mlflow import MlflowClient

    from patchrec import tracking

    tracking.tracking_uri(state)
    return MlflowClient()


def test_first_run_trains_everything_and_registers_a_champion(tiny_state):
    state, res = tiny_state
    assert res["reused"] == {"prepare-data": False, "baseline-popularity": False, "baseline-sasrec": False,
                             "catalog": False, "ppt": False, "pft": False, "eval-val": False, "eval-test": False}
    reg = res["registry"]
    assert reg["registered"] and reg["version"] == 1 and reg["promoted"] and reg["reason"].startswith("first version")
    client = _client(state)
    labels = client.get_registered_model("patchrec-tiny").aliases
    assert labels == {"champion": 1, "challenger": 1}
    version = client.get_model_version("patchrec-tiny", "1")
    assert not any(k.startswith(("val_", "test_")) for k in version.tags)  # metrics live on the run and the model
    run = client.get_run(version.run_id)
    assert run.data.metrics["val_ndcg_10"] == pytest.approx(res["metrics"]["val_ndcg_10"], abs=1e-6)
    (model,) = [m for m in client.search_logged_models([run.info.experiment_id]) if m.source_run_id == run.info.run_id]
    assert {m.key: m.value for m in model.metrics}["test_hr_10"] == pytest.approx(res["metrics"]["test_hr_10"])
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_mlflow_parent_and_nested_stage_runs(tiny_state):
    state, res = tiny_state
    client = _client(state)
    parent = client.get_run(res["mlflow_run"])
    assert parent.info.status == "FINISHED" and parent.data.params["pft.layout"] == "session"
    assert parent.data.metrics["test_ndcg_10"] == pytest.approx(res["metrics"]["test_ndcg_10"])
    assert all("@" not in k for k in parent.data.metrics)
    children = client.search_runs([parent.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    by_name = {r.info.run_name: r for r in children}
    assert set(by_name) == {"prepare-data", "baseline-popularity", "baseline-sasrec", "catalog", "ppt", "pft",
                            "evaluate-val", "evaluate-test", "register"}
    assert [m.step for m in client.get_metric_history(by_name["baseline-sasrec"].info.run_id, "loss")] == [1, 2, 3]
    assert "popularity_test_hr_10" in res["metrics"] and "sasrec_test_masked_ndcg_20" in res["metrics"]
    pft = by_name["pft"]
    steps = int(pft.data.metrics["steps"])
    for key in ("loss", "lr", "samples_per_s"):
        history = client.get_metric_history(pft.info.run_id, key)
        assert [m.step for m in history] == list(range(steps))
    assert by_name["prepare-data"].inputs.dataset_inputs[0].dataset.name == "tiny"
    arts = {a.path for a in client.list_artifacts(by_name["prepare-data"].info.run_id)}
    assert {"validation", "prepare_summary.json"} <= arts
    for name, png in (("pft", "plots/training_pft.png"), ("evaluate-val", "plots/hr_by_history_val.png"),
                      ("catalog", "plots/tokens_per_prompt.png")):
        paths = {a.path for a in client.list_artifacts(by_name[name].info.run_id, "plots")}
        assert png in paths
        local = client.download_artifacts(by_name[name].info.run_id, png)
        assert open(local, "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_rerun_reuses_stages_and_registers_nothing(tiny_state):
    from flows.pipeline import full_pipeline_flow as full_pipeline

    state, first = tiny_state
    again = full_pipeline("tiny", state_dir=str(state))
    assert all(again["reused"].values()) and again["metrics"] == first["metrics"]
    assert not again["registry"]["registered"] and again["registry"]["version"] == 1


def test_guarded_promotion_and_rollback(tiny_state):
    from flows.pipeline import full_pipeline_flow as full_pipeline
    from patchrec import registry

    state, _ = tiny_state
    never = full_pipeline("tiny", {"registry.margin": 1.0}, state_dir=str(state))  # needs +1.0 NDCG: impossible
    assert never["registry"]["registered"] and not never["registry"]["promoted"]
    v_never = never["registry"]["version"]
    client = _client(state)
    assert client.get_registered_model("patchrec-tiny").aliases == {"champion": 1, "challenger": v_never}
    always = full_pipeline("tiny", {"registry.margin": -1.0}, state_dir=str(state))
    v_new = always["registry"]["version"]
    assert always["registry"]["promoted"] and v_new == v_never + 1
    assert client.get_model_version("patchrec-tiny", str(v_new)).tags["previous_champion"] == "1"
    assert registry.rollback("patchrec-tiny") == (v_new, 1)
    assert client.get_registered_model("patchrec-tiny").aliases["champion"] == 1
    with pytest.raises(ValueError, match="no previous champion"):
        registry.rollback("patchrec-tiny")


def test_the_registered_model_is_code_not_a_pickle_and_loads_in_a_fresh_process(tiny_state):
    """Logged as a model from code (MLflow 3): the model holds the code file, no pickled object; a new Python
    process that only knows the registry URI loads the champion and scores a history."""
    import subprocess
    import sys

    import mlflow

    state, _ = tiny_state
    _client(state)
    local = Path(mlflow.artifacts.download_artifacts("models:/patchrec-tiny@champion"))
    files = {p.name for p in local.rglob("*") if p.is_file()}
    assert "mlflow_model.py" in files and not any(n.endswith((".pkl", ".cloudpickle")) for n in files), files
    assert "loader_module: mlflow.pyfunc.loaders.code_model" in (local / "MLmodel").read_text()
    code = ("import json, sys, mlflow.pyfunc, pandas as pd; mlflow.set_tracking_uri(sys.argv[1]); "
            "mlflow.set_registry_uri(sys.argv[1]); m = mlflow.pyfunc.load_model('models:/patchrec-tiny@champion'); "
            "out = m.predict(pd.DataFrame({'history': [['m01', 'm02']]}), params={'top_k': 3}); "
            "print(json.dumps({'keys': list(out.item_keys[0]), 'scores': [float(x) for x in out.scores[0]]}))")
    run = subprocess.run([sys.executable, "-c", code, mlflow.get_tracking_uri()], capture_output=True, text=True,
                         timeout=600, cwd=state)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(got["keys"]) == 3 and got["scores"] == sorted(got["scores"], reverse=True)
    assert "pickle" not in run.stderr.lower()


def test_pyfunc_model_recommends_and_rejects_bad_input(tiny_state):
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    state, _ = tiny_state
    _client(state)
    model = mlflow.pyfunc.load_model("models:/patchrec-tiny@champion")
    out = model.predict(pd.DataFrame({"history": [["m01", "m02", "m03"], ["m10"]]}), params={"top_k": 4})
    assert list(out.columns) == ["item_keys", "titles", "scores"] and len(out) == 2
    items = pd.read_csv("examples/tiny/raw/items.csv", dtype=str).set_index("id").title
    for keys, titles, scores in out.itertuples(index=False):
        assert len(keys) == 4 and [items[k] for k in keys] == list(titles)
        assert list(scores) == sorted(scores, reverse=True)
    by_title = model.predict(pd.DataFrame({"history": [[items["m01"], items["m02"], items["m03"]]]}),
                             params={"top_k": 4, "id_type": "title"})
    assert list(by_title.item_keys[0]) == list(out.item_keys[0])
    for history, message in (([], "history is empty"), (["m01", "zzz"], r"unknown item key\(s\) \['zzz'\]"),
                             (["m01"] * 51, "more than this model accepts")):
        with pytest.raises(MlflowException, match=message):
            model.predict(pd.DataFrame({"history": [history]}))


def test_failed_stage_keeps_earlier_outputs(tiny_state, monkeypatch):
    from flows.pipeline import full_pipeline_flow as full_pipeline
    from patchrec import registry

    def broken(*args, **kwargs):
        raise OSError("disk full while logging the model")

    state, first = tiny_state
    monkeypatch.setattr(registry, "log_model", broken)
    with pytest.raises(OSError, match="disk full"):
        full_pipeline("tiny", {"registry.margin": 0.25}, state_dir=str(state))  # a new register fingerprint
    monkeypatch.undo()
    client = _client(state)
    exp = client.get_experiment_by_name("patchrec-tiny").experiment_id
    failed = client.search_runs([exp], filter_string="attributes.status = 'FAILED'")
    assert sorted(r.info.run_name for r in failed) == ["full-pipeline (tiny)", "register"]
    again = full_pipeline("tiny", state_dir=str(state))
    assert all(again["reused"].values()) and again["run_dir"] == first["run_dir"]


def test_scoring_head_through_the_whole_lifecycle(prefect_server, tmp_path):
    """The catalog scoring head: trained, evaluated, registered and served like the generative head."""
    import mlflow.pyfunc

    from flows.pipeline import full_pipeline_flow as full_pipeline
    from patchrec.contract import read_manifest

    res = full_pipeline("tiny-scoring", state_dir=str(tmp_path))
    assert res["reused"] == {"prepare-data": False, "baseline-popularity": False, "catalog": False, "pft": False,
                             "eval-val": False, "eval-test": False}
    assert read_manifest(res["run_dir"], "pft").config["train"]["head"] == "scoring"
    assert res["registry"]["registered"] and res["registry"]["version"] == 1
    assert "popularity_test_hr_10" in res["metrics"] and 0 <= res["metrics"]["test_hr_10"] <= 1
    _client(tmp_path)
    model = mlflow.pyfunc.load_model("models:/patchrec-tiny@champion")
    out = model.predict(pd.DataFrame({"history": [["m01", "m02", "m03"], ["m10"]]}), params={"top_k": 5})
    n_items = len(pd.read_csv("examples/tiny/raw/items.csv"))
    for keys, _, scores in out.itertuples(index=False):
        assert len(keys) == 5 and len(set(keys)) == 5 and list(scores) == sorted(scores, reverse=True)
    everything = model.predict(pd.DataFrame({"history": [["m01"]]}), params={"top_k": n_items})
    assert len(everything.item_keys[0]) == n_items  # exact ranking over the whole catalog, by item id
    again = full_pipeline("tiny-scoring", state_dir=str(tmp_path))
    assert all(again["reused"].values()) and not again["registry"]["registered"]


@pytest.mark.parametrize("profile", ["tiny", "tiny-scoring"])
def test_training_and_evaluation_through_torchrun_from_the_flow(prefect_server, tmp_path, profile):
    """`launch.nproc_per_node: 2`: every train stage (PPT and PFT on `tiny`) and eval task runs 2 gloo ranks
    under torchrun and the pipeline finishes as with one process (launch settings are not fingerprinted: same
    stage folders). `tiny-scoring` is deterministic: same weights and metrics as one process; `tiny` draws
    LoRA dropout and PPT's patch curriculum per rank (same distribution, other draws; docs/scale-out.md)."""
    from flows.pipeline import full_pipeline_flow as full_pipeline
    from patchrec.io import read_json

    stages = ["ppt", "pft", "test", "val"] if profile == "tiny" else ["pft", "test", "val"]
    overrides = {"launch.nproc_per_node": 2, **{f"{s}.bf16": False for s in stages}}
    two = full_pipeline(profile, overrides, state_dir=str(tmp_path / "two"))
    run = Path(two["run_dir"])
    assert read_json(run / ".launch" / "job.json")["kind"] == "train"
    assert read_json(run / ".launch" / "rank0_output.json")["metrics"]["steps"] > 0
    launched = {read_json(j)["kind"] for j in (tmp_path / "two").rglob(".launch/job.json")}
    assert launched == {"train", "eval"}
    if profile == "tiny":  # PPT ran under torchrun too, and PFT started from its weights
        (ppt,) = [p for p in (tmp_path / "two").rglob(".launch/job.json") if p.parent.parent.name.startswith("ppt-")]
        assert read_json(ppt.parent / "rank0_output.json")["metrics"]["steps"] > 0
    assert two["registry"]["registered"]
    one = full_pipeline(profile, {k: v for k, v in overrides.items() if k != "launch.nproc_per_node"},
                        state_dir=str(tmp_path / "one"))
    assert Path(one["run_dir"]).name == run.name and not (Path(one["run_dir"]) / ".launch").exists()
    a = torch.load(Path(one["run_dir"]) / "trainable.pt", weights_only=True)
    b = torch.load(run / "trainable.pt", weights_only=True)
    assert a.keys() == b.keys() and two["metrics"].keys() == one["metrics"].keys()
    if profile == "tiny-scoring":
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)
        assert two["metrics"] == pytest.approx(one["metrics"], abs=1e-6)


def test_a_pipeline_run_publishes_its_summary_and_metrics_as_prefect_artifacts(tiny_state):
    """The flow run's Artifacts: a markdown summary (data counts, stages, metrics beside the baselines, the
    registry decision, MLflow links) and a table of the metrics, readable through the Prefect API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    state, res = tiny_state
    with get_client(sync_client=True) as client:
        def of_key(key):
            return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))

        # other tests of this session ran the tiny profile too: this run's summary names its MLflow run
        (md,) = [a for a in of_key("patchrec-full-pipeline-tiny-summary") if f"/runs/{res['mlflow_run']}" in a.data]
        (table,) = [a for a in of_key("patchrec-full-pipeline-tiny-metrics") if a.flow_run_id == md.flow_run_id]
    text = md.data
    prep = json.loads((Path(res["data_dir"]) / "prepare.json").read_text())
    assert f"| {prep['rows_read']:,} | {prep['rows_accepted']:,} | {prep['rows_quarantined']:,} |" in text
    for stage in res["reused"]:
        assert f"| {stage} | ran |" in text
    assert f"{res['metrics']['test_hr_20']:.4f}" in text and "sasrec" in text and "popularity" in text
    assert f"`patchrec-tiny` version {res['registry']['version']} — promoted to `champion`" in text
    assert f"/runs/{res['mlflow_run']}" in text and "/#/models/patchrec-tiny/versions/1" in text
    assert "Data Docs" in text
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["model"] for r in rows] == ["patchrec-tiny (this run)", "popularity", "sasrec"]
    assert rows[0]["hr_20"] == round(res["metrics"]["test_hr_20"], 4)
