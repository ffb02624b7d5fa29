"""PPT -> PFT-S -> evaluate as Prefect flows, on the tiny model: run folders, resume-skip, metrics."""

from __future__ import annotations

import json

from patchrec.config import DataConfig, EvalConfig, ModelConfig, TrainConfig


def test_patch_pipeline_tiny(prefect_server, ml100k_dir, tmp_path):
    from flows.patch_training import patch_pipeline
    from patchrec.data.prepare import prepare_data

    data = tmp_path / "data"
    prepare_data(DataConfig(format="movielens-100k", raw=ml100k_dir, out=data, protocol="loo", min_history=2))
    ppt = TrainConfig(stage="ppt", layout="mixed", max_history=10, batch_size=4, checkpoint_every=2)
    pft = TrainConfig(stage="pft", layout="session", group=2, max_history=10, batch_size=4)
    ecfg = EvalConfig(max_samples=4, num_beams=8, top_k=8)
    mcfg = ModelConfig(base="tiny", tiny_hidden=16)
    res = patch_pipeline(data, tmp_path / "runs", ppt, pft, ecfg, mcfg)
    assert res["samples"] == 4 and res["layout"] == "session"
    assert {"hr_5", "ndcg_5", "hr_20", "ndcg_20", "user_hr_20"} <= set(res["metrics"])
    pft_cfg = json.loads((tmp_path / "runs" / "pft" / "config.json").read_text())
    assert pft_cfg["init_from"].endswith("ppt") and pft_cfg["train"]["group"] == 2
    assert (tmp_path / "runs" / "ppt" / "trainable.pt").is_file()
    ranks = __import__("pandas").read_parquet(tmp_path / "runs" / "eval" / "ranks.parquet")
    assert len(ranks) == 4 and all(len(r) == 8 for r in ranks.ranked)
