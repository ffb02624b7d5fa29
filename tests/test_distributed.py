"""torchrun on CPU (gloo): 2 ranks train like 1 process on the same global batches, survive a killed rank,
and shard evaluation without changing a single rank."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import torch

from patchrec.checkpoints import latest_checkpoint
from patchrec.config import EvalConfig, LaunchConfig, ModelConfig, TrainConfig
from patchrec.distributed import Dist
from patchrec.launch import EvalJob, LaunchError, TrainJob, run_job
from patchrec.runtime import RunSpec

pytestmark = pytest.mark.slow  # each launch starts 2 Python processes with torch

TWO = LaunchConfig(nproc_per_node=2)


def _spec(**kw) -> RunSpec:
    # batch 5 over 2 ranks = shards of 3 and 2; 41 windows -> a last batch of 1 leaves one rank empty
    base = dict(stage="pft", layout="item", head="scoring", context=6, stride=5, batch_size=5, grad_accum=2, lr=3e-3,
                epochs=1, checkpoint_every=2, lora_dropout=0.0, bf16=False)
    return RunSpec(train=TrainConfig(**{**base, **kw}), model=ModelConfig(base="tiny", tiny_hidden=32, tiny_layers=2))


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return torch.load(folder / "trainable.pt", weights_only=True)


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_dist_shards_cover_every_item_once():
    items = np.arange(7)
    parts = [Dist(rank=r, world=3).shard(items) for r in range(3)]
    assert np.concatenate(parts).tolist() == items.tolist()
    assert [len(p) for p in parts] == [3, 2, 2]
    assert [len(Dist(rank=r, world=2).shard(np.arange(1))) for r in range(2)] == [1, 0]


GENERATIVE_FULL = {"head": "generative", "layout": "session", "group": 3, "max_history": 12, "finetune": "full",
                   "batch_size": 3, "grad_accum": 1, "max_samples": 13, "lr": 1e-3}


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
@pytest.mark.parametrize("kw", [{"head": "scoring", "finetune": "lora"}, GENERATIVE_FULL],
                         ids=["scoring-lora", "generative-full"])
def test_two_gloo_ranks_train_like_one_process(data, tmp_path, kw, sharding):
    """DDP and FSDP (weights, gradients and optimizer state sharded over the 2 ranks) make the same updates as
    one process with the same global batches."""
    spec = _spec(**kw)
    one = run_job(TrainJob(data_dir=data, out_dir=tmp_path / "one", spec=spec))
    two = run_job(TrainJob(data_dir=data, out_dir=tmp_path / "two", spec=spec),
                  LaunchConfig(nproc_per_node=2, sharding=sharding))
    assert two.metrics["samples"] == one.metrics["samples"] and two.metrics["steps"] == one.metrics["steps"]
    assert two.metrics["final_loss"] == pytest.approx(one.metrics["final_loss"], rel=1e-4)
    _assert_same(_weights(tmp_path / "one"), _weights(tmp_path / "two"))


def test_a_killed_rank_is_restarted_and_the_run_resumes(data, tmp_path):
    spec = _spec(epochs=6, checkpoint_every=1)
    out = tmp_path / "two"
    killed: list[int] = []

    def kill_rank_1_after_a_checkpoint() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            ck = latest_checkpoint(out / "checkpoints")
            if ck is not None and int(ck.name.split("_")[1]) >= 3:
                for p in psutil.process_iter(["cmdline", "environ"]):
                    cmd = p.info["cmdline"] or []
                    if "patchrec.launch" in cmd and "torch.distributed.run" not in cmd and \
                            (p.info["environ"] or {}).get("RANK") == "1":
                        p.kill()
                        killed.append(p.pid)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_rank_1_after_a_checkpoint)
    killer.start()
    run_job(TrainJob(data_dir=data, out_dir=out, spec=spec), LaunchConfig(nproc_per_node=2, max_restarts=1))
    killer.join()
    assert killed, "rank 1 finished before it could be killed"
    one = run_job(TrainJob(data_dir=data, out_dir=tmp_path / "one", spec=spec))
    _assert_same(_weights(tmp_path / "one"), _weights(out))
    assert one.metrics["steps"] == len(pd.read_json(out / "training.json", typ="series")["losses"])


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_a_two_rank_run_killed_whole_resumes_in_one_process(data, tmp_path, sharding):
    """A run may resume at another world size: DDP checkpoints hold full state; FSDP ones hold whole weights and
    the optimizer state in shards (torch.distributed.checkpoint), resharded for the resuming world."""
    spec = _spec(epochs=6, checkpoint_every=1)
    out = tmp_path / "run"

    def kill_the_launch_after_a_checkpoint() -> None:
        deadline = time.time() + 300
        while time.time() < deadline:
            ck = latest_checkpoint(out / "checkpoints")
            if ck is not None and int(ck.name.split("_")[1]) >= 3:
                for p in psutil.process_iter(["cmdline"]):
                    if "torch.distributed.run" in (p.info["cmdline"] or []):
                        for q in [*p.children(recursive=True), p]:
                            q.kill()
                return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_the_launch_after_a_checkpoint)
    killer.start()
    with pytest.raises(LaunchError):
        run_job(TrainJob(data_dir=data, out_dir=out, spec=spec), LaunchConfig(nproc_per_node=2, sharding=sharding))
    killer.join()
    assert not (out / "trainable.pt").exists() and (ck := latest_checkpoint(out / "checkpoints")) is not None
    assert (ck / "optimizer" / ".metadata").is_file() == (sharding == "fsdp")
    run_job(TrainJob(data_dir=data, out_dir=out, spec=spec))  # world size 1 picks up the 2-rank checkpoint
    run_job(TrainJob(data_dir=data, out_dir=tmp_path / "one", spec=spec))
    _assert_same(_weights(tmp_path / "one"), _weights(out))


def test_fsdp_refuses_to_resume_a_ddp_checkpoint_with_a_clear_error(data, tmp_path):
    from patchrec.checkpoints import load_checkpoint

    spec = _spec(epochs=1)
    run_job(TrainJob(data_dir=data, out_dir=tmp_path / "run", spec=spec))
    ck = latest_checkpoint(tmp_path / "run" / "checkpoints")
    model = torch.nn.Linear(2, 2)
    with pytest.raises(RuntimeError, match=r"step_\d+ was written by DDP or one process: .*sharding=ddp"):
        load_checkpoint(ck, model, torch.optim.AdamW(model.parameters()), Dist(rank=0, world=2, sharding="fsdp"))


def test_a_failing_rank_fails_the_stage_with_its_error(data, tmp_path):
    job = TrainJob(data_dir=data, out_dir=tmp_path / "bad", spec=_spec(), init_from=tmp_path / "missing")
    with pytest.raises(LaunchError, match=r"rank \d failed: .*missing"):
        run_job(job, TWO)


def _in_every_rank(tmp_path: Path, monkeypatch, code: str) -> None:
    """Run `code` at the start of every rank's interpreter (a `sitecustomize` on PYTHONPATH; torchrun's agent has
    no LOCAL_RANK and is left alone)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import atexit, os\nif 'LOCAL_RANK' in os.environ:\n    {code}\n")
    monkeypatch.setenv("PYTHONPATH", str(site))


def test_a_finished_rank_leaves_before_the_interpreters_teardown(data, tmp_path, monkeypatch):
    """Once a rank has done its job and left the group, nothing in the interpreter's teardown can fail the run
    (CI saw a finished FSDP rank abort there). Here every rank's teardown aborts: the run must still succeed."""
    _in_every_rank(tmp_path, monkeypatch, "atexit.register(os.abort)")
    out = run_job(TrainJob(data_dir=data, out_dir=tmp_path / "two", spec=_spec(epochs=1)), TWO)
    assert out.metrics["steps"] > 0


def test_a_rank_killed_by_a_signal_is_named_with_its_signal(data, tmp_path, monkeypatch):
    """A rank that dies without a Python exception leaves no error file; the stage's error still names the rank
    and the signal (torchrun's root-cause report), not only torchrun's exit code."""
    _in_every_rank(tmp_path, monkeypatch, "os.abort() if os.environ['RANK'] == '1' else None")
    with pytest.raises(LaunchError, match=r"rank 1 failed: Signal 6 \(SIGABRT\)"):
        run_job(TrainJob(data_dir=data, out_dir=tmp_path / "two", spec=_spec(epochs=1)), TWO)


@pytest.mark.parametrize("head", ["scoring", "generative"])
def test_sharded_evaluation_gives_the_ranks_of_one_process(data, tmp_path, head):
    kw = {"head": "scoring"} if head == "scoring" else {"head": "generative", "layout": "session", "group": 3,
                                                        "max_history": 12, "max_samples": 10}
    spec = _spec(**kw, epochs=1)
    run_job(TrainJob(data_dir=data, out_dir=tmp_path / "run", spec=spec))
    _write_manifest_for(tmp_path / "run", spec)
    ecfg = EvalConfig(split="test", max_samples=None if head == "scoring" else 9, num_beams=4, top_k=10,
                      batch_size=7, bf16=False)
    one = run_job(EvalJob(data_dir=data, run_dir=tmp_path / "run", out_dir=tmp_path / "one", eval=ecfg))
    two = run_job(EvalJob(data_dir=data, run_dir=tmp_path / "run", out_dir=tmp_path / "two", eval=ecfg), TWO)
    a, b = pd.read_parquet(tmp_path / "one" / "ranks.parquet"), pd.read_parquet(tmp_path / "two" / "ranks.parquet")
    assert len(a) == one.info["samples"] > 7  # more than one batch, so both ranks ranked some
    assert a["rank"].tolist() == b["rank"].tolist() and a["sample"].tolist() == b["sample"].tolist()
    assert [list(x) for x in a["ranked"]] == [list(x) for x in b["ranked"]]
    assert two.metrics == one.metrics and two.info["world_size"] == 2


def _write_manifest_for(folder: Path, spec: RunSpec) -> None:
    """A finished training folder's manifest (what the stage contract writes after `train_run`)."""
    from patchrec.contract import StageOutput, write_manifest

    write_manifest(folder, "pft", "test", StageOutput(), spec.model_dump(mode="json"))
