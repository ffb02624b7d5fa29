"""The stage contract: manifests are the one completion marker, and fingerprints carry every upstream input."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchrec import stages
from patchrec.contract import (
    MANIFEST,
    ManifestError,
    StageOutput,
    StageRecord,
    read_manifest,
    run_stage,
    write_manifest,
)
from patchrec.profiles import load_pipeline


def test_run_stage_builds_once_then_reuses(tmp_path):
    calls = []

    def build(out: Path) -> StageOutput:
        calls.append(out)
        (out / "table.txt").write_text("x")
        return StageOutput(metrics={"rows": 1.0}, info={"note": "built"})

    first = run_stage("demo", tmp_path / "s", "fp1", build, config={"k": 1})
    again = run_stage("demo", tmp_path / "s", "fp1", build)
    assert len(calls) == 1
    assert (first.reused, again.reused) == (False, True)
    assert again.metrics == {"rows": 1.0} and again.info == {"note": "built"}
    assert read_manifest(tmp_path / "s", "demo").config == {"k": 1}


def test_failed_build_leaves_no_manifest_and_reruns(tmp_path):
    def broken(out: Path) -> StageOutput:
        (out / "half.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage("demo", tmp_path / "s", "fp1", broken)
    assert not (tmp_path / "s" / MANIFEST).exists()
    rec = run_stage("demo", tmp_path / "s", "fp1", lambda out: StageOutput())
    assert not rec.reused


def test_missing_or_foreign_manifest_names_the_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ManifestError, match=f"{empty}.*no {MANIFEST}"):
        read_manifest(empty)
    (empty / MANIFEST).write_text('{"something": "else"}')
    with pytest.raises(ManifestError, match="is not a patchrec manifest"):
        read_manifest(empty)
    done = tmp_path / "done"
    done.mkdir()
    write_manifest(done, "pft", "fp1", StageOutput())
    with pytest.raises(ManifestError, match=f"{done} holds a 'pft' stage, not 'ppt'"):
        read_manifest(done, "ppt")
    with pytest.raises(ManifestError, match=f"{done} already holds a finished 'pft' stage for other inputs"):
        run_stage("pft", done, "fp2", lambda out: StageOutput())


def _chain(cfg, data_fp: str, tmp_path: Path, monkeypatch) -> dict[str, StageRecord]:
    """Every pipeline stage downstream of a data generation, with run_stage recording instead of building."""

    def record(stage, folder, fp, build, **_):
        return StageRecord(stage=stage, dir=folder, fingerprint=fp)

    monkeypatch.setattr(stages, "run_stage", record)
    data = StageRecord(stage="prepare", dir=tmp_path / "data", fingerprint=data_fp)
    cat = stages.build_catalog(cfg, data)
    ppt = stages.train_model(cfg, "ppt", data, cat)
    pft = stages.train_model(cfg, "pft", data, cat, ppt)
    val = stages.evaluate_model(cfg, "val", data, cat, pft)
    test = stages.evaluate_model(cfg, "test", data, cat, pft)
    out = {"catalog": cat, "ppt": ppt, "pft": pft, "val": val, "test": test,
           "register": stages.register_model(cfg, data, cat, pft, val, test)}
    out.update({f"baseline-{k}": stages.run_baseline(cfg, k, data) for k in ("popularity", "sasrec")})
    return out


def test_changing_the_data_changes_every_downstream_fingerprint(tmp_path, monkeypatch):
    cfg = load_pipeline("tiny", state_dir=tmp_path / "state")
    assert cfg.ppt is not None  # the chain covers pre-training too
    a = _chain(cfg, "data-a", tmp_path, monkeypatch)
    same = _chain(cfg, "data-a", tmp_path, monkeypatch)
    b = _chain(cfg, "data-b", tmp_path, monkeypatch)
    assert {k: r.fingerprint for k, r in a.items()} == {k: r.fingerprint for k, r in same.items()}
    for name in a:
        assert a[name].fingerprint != b[name].fingerprint, name
        assert a[name].dir != b[name].dir, name
    assert len({r.fingerprint for r in a.values()}) == len(a)  # no two stages share a folder name


def test_changing_a_config_changes_only_its_stage_and_downstream(tmp_path, monkeypatch):
    cfg = load_pipeline("tiny", state_dir=tmp_path / "state")
    other = load_pipeline("tiny", {"pft.lr": cfg.pft.lr * 2}, state_dir=tmp_path / "state")
    a = _chain(cfg, "data-a", tmp_path, monkeypatch)
    b = _chain(other, "data-a", tmp_path, monkeypatch)
    changed = {name for name in a if a[name].fingerprint != b[name].fingerprint}
    assert changed == {"pft", "val", "test", "register"}


def test_a_non_finite_metric_never_reaches_a_manifest(tmp_path):
    from patchrec.contract import StageOutput, run_stage

    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="not finite"):
            run_stage("s", tmp_path / "s", "fp", lambda out, bad=bad: StageOutput(metrics={"loss": bad}))
        assert not (tmp_path / "s" / "manifest.json").exists()
