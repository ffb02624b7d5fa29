"""`make demo`: prepare MovieLens-100k, then PPT -> PFT-S on SmolLM2-135M-Instruct with a small budget
that fits 15 minutes on 2 CPU cores, and print HR/NDCG@{5,10,20} on a sample of the test split."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.patch_training import patch_pipeline
from flows.prepare_data import prepare_data
from patchrec.config import DataConfig, EvalConfig, ModelConfig, TrainConfig
from patchrec.data.download import ensure_ml100k

# The demo budget (samples per stage, test targets ranked); the method's settings are in TrainConfig.
DEMO_PPT = TrainConfig(stage="ppt", layout="mixed", textual_copy=False, max_history=50, max_samples=32, lr=5e-4)
DEMO_PFT = TrainConfig(stage="pft", layout="session", group=20, max_history=50, max_samples=96, lr=5e-4)
DEMO_EVAL = EvalConfig(split="test", max_samples=40)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", type=Path, required=True, help="folder for data, models and runs")
    parser.add_argument("--ml100k", type=Path, help="local ml-100k folder (downloaded when missing)")
    parser.add_argument("--base", default="smollm2", help="base model: smollm2, tiny, or a local folder")
    args = parser.parse_args()
    raw = ensure_ml100k(args.ml100k, args.state / "raw")
    cfg = DataConfig(format="movielens-100k", raw=raw, out=args.state / "data" / "ml-100k", min_rating=4.0)
    s = prepare_data(cfg)
    print(f"\nprepare-data on {raw} -> {cfg.out}")
    print(f"  rows read {s['rows_read']:,} = accepted {s['rows_accepted']:,} + quarantined {s['rows_quarantined']:,}"
          f" + deduplicated {s['rows_deduplicated']:,} + filtered {s['rows_filtered']:,}")
    for table in ("users", "items", "interactions"):
        print(f"  {table:<13}{s[table]:>9,}")
    print(f"  samples ({s['protocol']}): " + ", ".join(f"{k} {v:,}" for k, v in s["samples"].items()))
    mcfg = ModelConfig(base=args.base, cache_dir=args.state / "models")
    runs = args.state / "runs" / "ml-100k"
    res = patch_pipeline(cfg.out, runs, DEMO_PPT, DEMO_PFT, DEMO_EVAL, mcfg)
    m = res["metrics"]
    print(f"\nPPT -> PFT-S(G={DEMO_PFT.group}) on {args.base}: {res['samples']} {res['split']} targets, "
          f"{res['users_per_s']:.2f} users/s (runs in {runs})")
    for k in (5, 10, 20):
        print(f"  HR@{k} {m[f'hr_{k}']:.4f}   NDCG@{k} {m[f'ndcg_{k}']:.4f}")
    print("  (a demo budget of 32 + 96 training samples: expect numbers near zero; see docs for real runs)")


if __name__ == "__main__":
    main()
