"""Recommendation quality on the paper's protocol: LLM variants under one stated training budget, and the
ID-based baselines, on the same split and metric code. Prints JSON; writes bench/results/quality-<profile>.json
and a markdown report with plots (docs/quality-<profile>.md, docs/quality/<profile>-*.png).

    python -m bench.quality --profile ml-100k            # `make quality`; about 1 h on 2 CPU cores
    python -m bench.quality --profile ml-1m              # on a GPU (8,192 samples, 1,000 test targets)

Budget: every LLM variant gets the same number of training samples; PPT -> PFT variants spend half on PPT
and half on PFT (the PPT run is shared by the variants that start from it, but its cost counts for each).
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from patchrec.config import DataConfig, EvalConfig, ModelConfig, SASRecConfig, TrainConfig
from patchrec.data.prepare import prepare_data
from patchrec.evaluation.metrics import bootstrap_ci, by_history_length, paired_bootstrap_diff, summarize_ranks
from patchrec.io import read_json, write_json
from patchrec.profiles import PROJECT_ROOT
from patchrec.runtime import RunSpec
from patchrec.stages import baseline_into, data_record, evaluate_into, train_into

PROFILES = {
    "ml-100k": {"raw": "../shared/data/patchrec-paper/ml-100k", "budget": 128, "test_samples": 96},
    # not run yet (needs a GPU): ranking every one of its 11,494 test targets x 7 variants would take hours
    "ml-1m": {"raw": "../shared/data/patchrec-paper/ml-1m", "budget": 8192, "test_samples": 1000},
}
REFERENCE = {"ml-1m": {"sasrec": {"hr_20": 0.148, "ndcg_20": 0.056}, "popularity": {"hr_20": 0.038, "ndcg_20": 0.014}},
             "ml-100k": {"sasrec": {"hr_20": 0.14}}}


def variants(budget: int, lr: float) -> dict[str, dict[str, Any]]:
    """name -> {"ppt": TrainConfig | None, "pft": TrainConfig}; the main table, then the ablations."""
    half = max(1, budget // 2)
    # PPT also trains on each sample's all-text copy: micro-batches of 4 (x2 accumulation) keep the peak memory
    # of 100-item text prompts under ~12 GB on a CPU (batches of 8 were OOM-killed at 24 GB).
    ppt = TrainConfig(stage="ppt", layout="mixed", max_history=100, max_samples=half, lr=lr, batch_size=4,
                      grad_accum=2)
    pft_s = dict(stage="pft", layout="session", max_history=100)
    return {
        "SFT-20": {
            "ppt": None,
            "pft": TrainConfig(stage="sft", layout="text", max_history=20, max_samples=budget, lr=lr),
        },
        "SFT-100": {
            "ppt": None,
            "pft": TrainConfig(stage="sft", layout="text", max_history=100, max_samples=budget, lr=lr),
        },
        "PPT -> PFT-I(5)": {
            "ppt": ppt,
            "pft": TrainConfig(stage="pft", layout="item", k=5, max_history=100, max_samples=half, lr=lr),
        },
        "PPT -> PFT-S(5)": {"ppt": ppt, "pft": TrainConfig(**pft_s, group=5, max_samples=half, lr=lr)},
        "PFT-S(5), no PPT": {"ppt": None, "pft": TrainConfig(**pft_s, group=5, max_samples=budget, lr=lr)},
        "PPT -> PFT-S(20)": {"ppt": ppt, "pft": TrainConfig(**pft_s, group=20, max_samples=half, lr=lr)},
        "PPT -> PFT-S(5), full FT": {
            "ppt": ppt.model_copy(update={"finetune": "full", "lr": lr / 10}),
            "pft": TrainConfig(**pft_s, group=5, max_samples=half, finetune="full", lr=lr / 10),
        },
    }


# (question, model a, model b): the report gives a - b on the same test targets with a paired user-bootstrap CI.
COMPARISONS = [
    ("PatchRec's main claim: PFT-S vs SFT-100", "PPT -> PFT-S(5)", "SFT-100"),
    ("item patches vs text, same history", "PPT -> PFT-I(5)", "SFT-100"),
    ("does PPT help PFT-S (same budget)", "PPT -> PFT-S(5)", "PFT-S(5), no PPT"),
    ("G = 5 vs G = 20", "PPT -> PFT-S(5)", "PPT -> PFT-S(20)"),
    ("LoRA vs full fine-tuning (same budget)", "PPT -> PFT-S(5)", "PPT -> PFT-S(5), full FT"),
    ("longer text history: SFT-100 vs SFT-20", "SFT-100", "SFT-20"),
    ("LLM (PFT-S) vs SASRec", "PPT -> PFT-S(5)", "sasrec"),
    ("LLM (PFT-S, full FT) vs popularity", "PPT -> PFT-S(5), full FT", "popularity"),
    ("SASRec vs popularity", "sasrec", "popularity"),
]


def _comparisons(ranks: dict[str, pd.DataFrame]) -> list[dict[str, Any]]:
    out = []
    for question, a, b in COMPARISONS:
        if a not in ranks or b not in ranks:
            continue
        both = ranks[a][["sample", "user_idx", "rank"]].merge(ranks[b][["sample", "user_idx", "rank"]],
                                                              on=["sample", "user_idx"], suffixes=("_a", "_b"))
        row: dict[str, Any] = {"question": question, "a": a, "b": b, "samples": int(len(both))}
        for m in ("hr", "ndcg"):
            d, lo, hi = paired_bootstrap_diff(both["rank_a"].to_numpy(), both["rank_b"].to_numpy(),
                                              both["user_idx"].to_numpy(), 20, m)
            row[f"{m}_20_diff"] = [d, lo, hi]
        out.append(row)
    return out


def _ranks(eval_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(eval_dir / "ranks.parquet").drop(columns=["ranked"])


def _ci(ranks: np.ndarray, users: np.ndarray) -> dict[str, list[float]]:
    return {f"{m}_{k}": list(bootstrap_ci(ranks, users, k, m)) for m in ("hr", "ndcg") for k in (10, 20)}


def _summary(res: dict[str, Any], ranks: pd.DataFrame, subset: bool = False) -> dict[str, Any]:
    """One model's evaluation (`res` = its eval.json, `ranks` its ranks); `subset`: `ranks` is a part of the split
    the eval.json metrics were computed on (a baseline on the LLM variants' test sample), so recompute them."""
    r, u = ranks["rank"].to_numpy(), ranks["user_idx"].to_numpy()
    metrics = res["metrics"]
    if subset:
        metrics = summarize_ranks(r, u)
        metrics.update({f"masked_{k}": v for k, v in summarize_ranks(ranks["masked_rank"].to_numpy(), u).items()})
    out = {"samples": int(len(ranks)), "metrics": metrics, "ci95": _ci(r, u), "users_per_s": res["users_per_s"],
           "by_history_length": by_history_length(r, ranks["history_len"].to_numpy())}
    if "prompt_tokens_mean" in res:
        out["prompt_tokens_mean"] = res["prompt_tokens_mean"]
    return out


def run(profile: str, data_cfg: DataConfig, work: Path, budget: int, test_samples: int, lr: float, base: str,
        sasrec_epochs: int) -> dict[str, Any]:
    """Prepare `data_cfg` (reused when unchanged), train and rank every variant and baseline under `work`
    through the stage contract (folders named by fingerprints that include the data); stages finished by an
    earlier invocation are reused and counted in `reused_stages`."""
    t_start = time.perf_counter()
    prepare_data(data_cfg)
    data = data_record(data_cfg.out)
    runs = work / "runs" / profile
    mcfg = ModelConfig(base=base, cache_dir=work / "models")
    ecfg = EvalConfig(split="test", max_samples=test_samples or None)
    report: dict[str, Any] = {"profile": profile, "budget_samples": budget, "lr": lr, "base": base,
                              "test_samples": test_samples or "all", "machine": _machine(), "variants": {},
                              "baselines": {}}
    ranks: dict[str, pd.DataFrame] = {}
    stage_seconds: dict[Path, float] = {}
    reused: dict[Path, bool] = {}  # stage folder -> finished before this invocation
    for name, v in variants(budget, lr).items():
        init, seconds, samples = None, 0.0, 0
        for which in ("ppt", "pft"):
            tcfg = v[which]
            if tcfg is None:
                continue
            rec = train_into(lambda fp, w=which: runs / f"{w}-{fp}", which, RunSpec(train=tcfg, model=mcfg), data,
                             init=init)
            reused.setdefault(rec.dir, rec.reused)
            stage_seconds[rec.dir] = rec.metrics["samples"] / max(rec.metrics["samples_per_s"], 1e-9)
            seconds += stage_seconds[rec.dir]
            samples += int(rec.metrics["samples"])
            init = rec
        ev = evaluate_into(lambda fp: runs / f"eval-{fp}", ecfg, data, init)
        reused[ev.dir] = ev.reused
        ranks[name] = _ranks(ev.dir)
        summary = _summary(read_json(ev.dir / "eval.json"), ranks[name])
        report["variants"][name] = {**summary, "train_samples": samples, "train_seconds": seconds,
                                    "rank_seconds": summary["samples"] / summary["users_per_s"],
                                    "train_samples_per_s": samples / seconds if seconds else None}
        m = summary["metrics"]
        print(f"{name}: HR@20 {m['hr_20']:.4f} NDCG@20 {m['ndcg_20']:.4f} ({summary['samples']} targets)", flush=True)
        gc.collect()  # each variant loads its own model; free the last one before the next
    llm_subset = ranks[name]["sample"].to_numpy()
    sas = SASRecConfig(max_epochs=sasrec_epochs)
    for kind in ("popularity", "sasrec"):
        rec = baseline_into(lambda fp, k=kind: runs / f"baseline-{k}-{fp}", kind, data, sas)
        reused[rec.dir] = rec.reused
        res = read_json(rec.dir / "eval.json")
        whole = _ranks(rec.dir)
        ranks[kind] = whole[whole["sample"].isin(llm_subset)]
        report["baselines"][kind] = {"all_test": _summary(res, whole), "llm_sample": _summary(res, ranks[kind], True),
                                     "train": {k: res["train"].get(k) for k in ("epochs", "best_val_ndcg_10",
                                                                                 "seconds")} if res["train"] else {}}
    report["comparisons"] = _comparisons(ranks)
    report["reference"] = REFERENCE.get(profile, {})
    report["seconds"] = time.perf_counter() - t_start
    # training + ranking time of the reported stages, the shared PPT run once: most of `seconds` when this
    # invocation reused nothing from an earlier one
    ranking = sum(v["rank_seconds"] for v in report["variants"].values())
    baselines = sum(b["train"].get("seconds") or 0.0 for b in report["baselines"].values())
    report["compute_seconds"] = sum(stage_seconds.values()) + ranking + baselines
    report["stages"], report["reused_stages"] = len(reused), sum(reused.values())
    return report


def _machine() -> dict[str, Any]:
    import os

    import torch

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    return {"device": dev, "platform": platform.platform(), "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d", time.gmtime())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="ml-100k", choices=sorted(PROFILES))
    parser.add_argument("--budget", type=int, help="training samples per LLM variant (profile default)")
    parser.add_argument("--test-samples", type=int, help="test targets ranked by the LLM variants (0 = all)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--base", default="smollm2")
    parser.add_argument("--sasrec-epochs", type=int, default=200)
    parser.add_argument("--work", type=Path, default=PROJECT_ROOT / ".state" / "quality")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/quality-<profile>.json)")
    parser.add_argument("--report", type=Path, help="markdown path (default docs/quality-<profile>.md)")
    args = parser.parse_args(argv)
    spec = PROFILES[args.profile]
    budget = args.budget or spec["budget"]
    test_samples = spec["test_samples"] if args.test_samples is None else args.test_samples
    data_cfg = DataConfig(format="patchrec-paper", raw=(PROJECT_ROOT / spec["raw"]).resolve(),
                          out=args.work / "data" / args.profile)
    report = run(args.profile, data_cfg, args.work, budget, test_samples, args.lr, args.base, args.sasrec_epochs)
    report["command"] = "python -m bench.quality " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    out = args.out or PROJECT_ROOT / "bench" / "results" / f"quality-{args.profile}.json"
    write_json(report, out)
    from bench.quality_report import write_report

    md = write_report(report, args.report or PROJECT_ROOT / "docs" / f"quality-{args.profile}.md")
    print(json.dumps({"json": str(out), "report": str(md), "seconds": report["seconds"]}))
    return report


if __name__ == "__main__":
    main()
