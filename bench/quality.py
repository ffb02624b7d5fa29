"""Recommendation quality on the paper's protocol: LLM variants under one stated WALL-CLOCK training budget
each (same machine, same run), and the ID-based baselines, on the same split and metric code. Prints JSON;
writes bench/results/quality-<profile>.json and a markdown report with plots (docs/quality-<profile>.md,
docs/quality/<profile>-*.png).

    python -m bench.quality --profile ml-100k            # `make quality`; about 90 min on 2 CPU cores
    python -m bench.quality --profile ml-100k --seconds 300

Budget: every LLM variant trains for the same number of seconds (PPT -> PFT variants: half each). Scoring-head
variants rank ALL test targets (one forward pass per batch of users); generative variants rank a fixed random
sample of them (beam search costs seconds per user on a CPU); comparisons use the targets both sides ranked.
Every variant's validation NDCG@10 is probed during training (the learning curve; probe time is not training
time), and SASRec's per-epoch validation NDCG@10 is drawn on the same axes. Scoring-head variants keep the
weights of their best validation probe, as SASRec keeps its best validation epoch (early stopping).
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.report import machine, require_cuda
from patchrec.config import DataConfig, EvalConfig, ModelConfig, SASRecConfig, TrainConfig, load_source
from patchrec.data.prepare import prepare_data
from patchrec.data.sequences import SequenceStore
from patchrec.evaluation.metrics import bootstrap_ci, by_history_length, paired_bootstrap_diff, summarize_ranks
from patchrec.evaluation.result import EvalResult, read_ranks, read_result
from patchrec.io import read_json, write_json
from patchrec.profiles import PROJECT_ROOT, SCORING_RECIPE, TEXT_LEVERS, TEXT_RECIPE
from patchrec.runtime import RunSpec
from patchrec.stages import baseline_into, data_record, evaluate_into, train_into
from patchrec.training import StageResult

_OFFICE_SOURCE = PROJECT_ROOT / "docs" / "sources" / "amazon-office-2014-5core.yaml"
PROFILES = {
    "ml-100k": {"data": {"format": "patchrec-paper", "raw": "../shared/data/patchrec-paper/ml-100k"},
                "seconds": 600, "test_samples": 96},
    "ml-1m": {"data": {"format": "patchrec-paper", "raw": "../shared/data/patchrec-paper/ml-1m"},
              "seconds": 3600, "test_samples": 1000},
    "goodreads": {"data": {"format": "patchrec-paper", "raw": "../shared/data/patchrec-paper/goodreads"},
                  "seconds": 3600, "test_samples": 96},
    # leave-one-out over the 2014 Office 5-core file (train / dev / test rows as given: protocol "loo")
    "office": {"data": {"format": "generic", "raw": "../shared/data/amazon-office-products-2014-5core",
                        "source": _OFFICE_SOURCE, "protocol": "loo"},
               "seconds": 1800, "test_samples": 96},
}
REFERENCE = {"ml-1m": {"sasrec": {"hr_20": 0.148, "ndcg_20": 0.056}, "popularity": {"hr_20": 0.038, "ndcg_20": 0.014}},
             "ml-100k": {"sasrec": {"hr_20": 0.14}}}


def variants(seconds: float, lr: float, keep_best: bool = True, short_lm: int = 8,
             mid_lm: int = 12, compile_lm: bool = False, scoring_batch: int | None = None) -> dict[str, dict[str, Any]]:
    """name -> {"ppt": TrainConfig | None, "pft": TrainConfig}; each variant trains for `seconds` in all.
    `keep_best`: scoring-head variants keep the weights of their best validation probe. `short_lm`, `mid_lm`: the
    layers the "8 layers" and "12 layers" variants keep (fewer only for a test model that has fewer).
    `compile_lm`: scoring-head steps run a torch.compile'd LM body (the compile counts against the budget).
    `scoring_batch`: windows per scoring-head step (None: the recipe's)."""
    half = seconds / 2
    gen = dict(max_seconds=seconds, lr=lr, curve_every_s=seconds / 2, curve_samples=32)
    budget = dict(max_seconds=seconds, curve_every_s=seconds / 6, curve_samples=256, keep_best=keep_best,
                  checkpoint_every=100, compile_lm=compile_lm, batch_size=scoring_batch or SCORING_RECIPE["batch_size"])
    scoring = SCORING_RECIPE | budget
    recipe = TEXT_RECIPE | budget | {"layers": short_lm}  # the text recipe at this budget, `short_lm` layers
    # PPT also trains on each sample's all-text copy: micro-batches of 4 (x2 accumulation) keep the peak memory
    # of 100-item text prompts under ~12 GB on a CPU (batches of 8 were OOM-killed at 24 GB).
    ppt = TrainConfig(stage="ppt", layout="mixed", max_history=100, lr=lr, batch_size=4, grad_accum=2,
                      max_seconds=half)
    return {
        "PFT-S(5)": {"ppt": None, "pft": TrainConfig(stage="pft", layout="session", group=5, max_history=100, **gen)},
        "SFT-20": {"ppt": None, "pft": TrainConfig(stage="sft", layout="text", max_history=20, **gen)},
        "Scoring, item patches": {"ppt": None, "pft": TrainConfig(**scoring)},
        "Scoring, sessions 10x5 + item patches": {"ppt": None,
                                                  "pft": TrainConfig(**{**scoring, "layout": "session",
                                                                        "sessions": 10, "group": 5})},
        "Scoring, item patches, full FT": {"ppt": None, "pft": TrainConfig(**{**scoring, "finetune": "full",
                                                                              "lr": 1e-4, "item_lr": 1e-3})},
        "PPT -> scoring, item patches": {"ppt": ppt, "pft": TrainConfig(**{**scoring, "max_seconds": half,
                                                                          "curve_every_s": half / 3})},
        "Scoring, cosine + title skip": {"ppt": None, "pft": TrainConfig(**{**scoring, **TEXT_LEVERS})},
        "Scoring, cosine + title skip, 8 layers": {
            "ppt": None, "pft": TrainConfig(**{**scoring, **TEXT_LEVERS, "layers": short_lm})},
        "Scoring, cosine + title skip, 8 layers, prefix targets": {
            "ppt": None, "pft": TrainConfig(**{**scoring, **TEXT_LEVERS, "layers": short_lm, "targets": "prefix"})},
        "Scoring, cosine + title skip, 8 layers, prefix targets, no self-skip": {
            "ppt": None, "pft": TrainConfig(**recipe)},
        "Scoring, text recipe, LoRA dropout 0.1 + item decay 1": {
            "ppt": None, "pft": TrainConfig(**{**recipe, "lora_dropout": 0.1, "item_decay": 1.0})},
        "Scoring, text recipe, lr 3e-4": {
            "ppt": None, "pft": TrainConfig(**{**recipe, "lr": 3e-4})},
        "Scoring, text recipe, regularised, lr 3e-4": {
            "ppt": None, "pft": TrainConfig(**{**recipe, "lora_dropout": 0.1, "item_decay": 1.0,
                                               "lr": 3e-4})},
        "Scoring, text recipe, LoRA dropout 0.2 + item decay 3, lr 3e-4": {
            "ppt": None, "pft": TrainConfig(**{**recipe, "lora_dropout": 0.2, "item_decay": 3.0,
                                               "lr": 3e-4})},
        "Scoring, text recipe, lr 3e-4, item bias": {
            "ppt": None, "pft": TrainConfig(**{**recipe, "lr": 3e-4, "item_bias": True})},
        "Scoring, text recipe, lr 3e-4, item bias, item lr 1e-3": {
            "ppt": None, "pft": TrainConfig(**{**recipe, "lr": 3e-4, "item_bias": True,
                                               "item_lr": 1e-3})},
        "Scoring, text recipe, lr 3e-4, item lr 1e-4": {
            "ppt": None, "pft": TrainConfig(**{**recipe, "lr": 3e-4, "item_lr": 1e-4})},
        "Scoring, text recipe, lr 3e-4, item lr 1e-4, item decay 1": {
            "ppt": None, "pft": TrainConfig(**{**recipe, "lr": 3e-4, "item_lr": 1e-4, "item_decay": 1.0})},
        "Scoring, text recipe, lr 3e-4, item decay 1": {
            "ppt": None, "pft": TrainConfig(**{**recipe, "lr": 3e-4, "item_decay": 1.0})},
        "Scoring, text recipe, lr 1.5e-4": {
            "ppt": None, "pft": TrainConfig(**{**recipe, "lr": 1.5e-4})},
        "Scoring, cosine + title-patch skip, 8 layers": {
            "ppt": None, "pft": TrainConfig(**{**scoring, **TEXT_LEVERS, "title_skip": "title", "layers": short_lm})},
        "Scoring, cosine + both skips, 8 layers": {
            "ppt": None, "pft": TrainConfig(**{**scoring, **TEXT_LEVERS, "title_skip": "both", "layers": short_lm})},
        "Scoring, cosine + title-patch skip, 12 layers": {
            "ppt": None, "pft": TrainConfig(**{**scoring, **TEXT_LEVERS, "title_skip": "title",
                                               "layers": mid_lm})},
    }


# (question, model a, model b): the report gives a - b on the same test targets with a paired user-bootstrap CI.
COMPARISONS = [
    ("text levers (cosine + title skip) vs SASRec", "Scoring, cosine + title skip", "sasrec"),
    ("text levers, 8 layers vs SASRec", "Scoring, cosine + title skip, 8 layers", "sasrec"),
    ("text levers, 8 layers, prefix targets vs SASRec", "Scoring, cosine + title skip, 8 layers, prefix targets",
     "sasrec"),
    ("prefix targets (as SASRec trains) vs train samples (8 layers)",
     "Scoring, cosine + title skip, 8 layers, prefix targets", "Scoring, cosine + title skip, 8 layers"),
    ("text levers, 8 layers, prefix targets, no self-skip vs SASRec",
     "Scoring, cosine + title skip, 8 layers, prefix targets, no self-skip", "sasrec"),
    ("no self-skip (the skip lifts items like the newest one, not itself; prefix targets, 8 layers)",
     "Scoring, cosine + title skip, 8 layers, prefix targets, no self-skip",
     "Scoring, cosine + title skip, 8 layers, prefix targets"),
    ("prefix targets + no self-skip vs the text levers (8 layers)",
     "Scoring, cosine + title skip, 8 layers, prefix targets, no self-skip", "Scoring, cosine + title skip, 8 layers"),
    ("text recipe + LoRA dropout 0.1 + item decay 1 vs SASRec", "Scoring, text recipe, LoRA dropout 0.1 + item decay 1",
     "sasrec"),
    ("text recipe, lr 3e-4 vs SASRec", "Scoring, text recipe, lr 3e-4", "sasrec"),
    ("LoRA dropout 0.1 + item decay 1 vs the text recipe", "Scoring, text recipe, LoRA dropout 0.1 + item decay 1",
     "Scoring, cosine + title skip, 8 layers, prefix targets, no self-skip"),
    ("lr 3e-4 vs 1e-3 (text recipe)", "Scoring, text recipe, lr 3e-4",
     "Scoring, cosine + title skip, 8 layers, prefix targets, no self-skip"),
    ("text recipe, regularised, lr 3e-4 vs SASRec", "Scoring, text recipe, regularised, lr 3e-4", "sasrec"),
    ("regularised + lr 3e-4 vs lr 3e-4 alone", "Scoring, text recipe, regularised, lr 3e-4",
     "Scoring, text recipe, lr 3e-4"),
    ("dropout 0.2 + item decay 3 vs 0.1 + 1 (lr 3e-4)",
     "Scoring, text recipe, LoRA dropout 0.2 + item decay 3, lr 3e-4", "Scoring, text recipe, regularised, lr 3e-4"),
    ("text recipe, lr 3e-4, item bias vs SASRec", "Scoring, text recipe, lr 3e-4, item bias", "sasrec"),
    ("text recipe, lr 3e-4, item bias, item lr 1e-3 vs SASRec",
     "Scoring, text recipe, lr 3e-4, item bias, item lr 1e-3", "sasrec"),
    ("item lr 1e-3 vs 3e-4 (text recipe, lr 3e-4, item bias)", "Scoring, text recipe, lr 3e-4, item bias, item lr 1e-3",
     "Scoring, text recipe, lr 3e-4, item bias"),
    ("text recipe, lr 3e-4, item lr 1e-4 vs SASRec", "Scoring, text recipe, lr 3e-4, item lr 1e-4", "sasrec"),
    ("item lr 1e-4 vs 3e-4 (text recipe, lr 3e-4)", "Scoring, text recipe, lr 3e-4, item lr 1e-4",
     "Scoring, text recipe, lr 3e-4"),
    ("text recipe, lr 3e-4, item lr 1e-4, item decay 1 vs SASRec",
     "Scoring, text recipe, lr 3e-4, item lr 1e-4, item decay 1", "sasrec"),
    ("item decay 1 vs none (text recipe, lr 3e-4, item lr 1e-4)",
     "Scoring, text recipe, lr 3e-4, item lr 1e-4, item decay 1", "Scoring, text recipe, lr 3e-4, item lr 1e-4"),
    ("text recipe, lr 3e-4, item decay 1 vs SASRec", "Scoring, text recipe, lr 3e-4, item decay 1", "sasrec"),
    ("item decay 1 vs none (text recipe, lr 3e-4)", "Scoring, text recipe, lr 3e-4, item decay 1",
     "Scoring, text recipe, lr 3e-4"),
    ("text recipe, lr 1.5e-4 vs SASRec", "Scoring, text recipe, lr 1.5e-4", "sasrec"),
    ("lr 1.5e-4 vs 3e-4 (text recipe)", "Scoring, text recipe, lr 1.5e-4", "Scoring, text recipe, lr 3e-4"),
    ("title-patch skip, 8 layers vs SASRec", "Scoring, cosine + title-patch skip, 8 layers", "sasrec"),
    ("both skips, 8 layers vs SASRec", "Scoring, cosine + both skips, 8 layers", "sasrec"),
    ("both skips vs the title-patch skip (8 layers)", "Scoring, cosine + both skips, 8 layers",
     "Scoring, cosine + title-patch skip, 8 layers"),
    ("title-patch skip, 12 layers vs SASRec", "Scoring, cosine + title-patch skip, 12 layers", "sasrec"),
    ("skip on fixed title patches vs on item vectors (8 layers)", "Scoring, cosine + title-patch skip, 8 layers",
     "Scoring, cosine + title skip, 8 layers"),
    ("12 vs 8 LM layers (title-patch skip)", "Scoring, cosine + title-patch skip, 12 layers",
     "Scoring, cosine + title-patch skip, 8 layers"),
    ("8 of 30 LM layers (3.6x the steps) vs all 30", "Scoring, cosine + title skip, 8 layers",
     "Scoring, cosine + title skip"),
    ("text levers vs the dot-product scoring head", "Scoring, cosine + title skip", "Scoring, item patches"),
    ("scoring head vs SASRec", "Scoring, item patches", "sasrec"),
    ("scoring head vs popularity", "Scoring, item patches", "popularity"),
    ("scoring head vs the paper's generative head (same time)", "Scoring, item patches", "PFT-S(5)"),
    ("PFT-S (patches, 100 items) vs SFT-20 (text, 20 items)", "PFT-S(5)", "SFT-20"),
    ("multi-grained sessions vs item patches only", "Scoring, sessions 10x5 + item patches", "Scoring, item patches"),
    ("LoRA vs full fine-tuning (scoring head)", "Scoring, item patches", "Scoring, item patches, full FT"),
    ("does PPT help the scoring head (same time)", "PPT -> scoring, item patches", "Scoring, item patches"),
    ("PFT-S vs SASRec", "PFT-S(5)", "sasrec"),
    ("SASRec vs popularity", "sasrec", "popularity"),
]


def _comparisons(ranks: dict[str, pd.DataFrame], cold: set[int]) -> list[dict[str, Any]]:
    out = []
    for question, a, b in COMPARISONS:
        if a not in ranks or b not in ranks:
            continue
        both = ranks[a][["sample", "user_idx", "target", "rank"]].merge(
            ranks[b][["sample", "user_idx", "rank"]], on=["sample", "user_idx"], suffixes=("_a", "_b"))
        row: dict[str, Any] = {"question": question, "a": a, "b": b, "samples": int(len(both))}
        for prefix, part in (("", both), ("cold_", both[both["target"].isin(cold)])):
            if not len(part):
                continue
            for m in ("hr", "ndcg"):
                d, lo, hi = paired_bootstrap_diff(part["rank_a"].to_numpy(), part["rank_b"].to_numpy(),
                                                  part["user_idx"].to_numpy(), 20, m)
                row[f"{prefix}{m}_20_diff"] = [d, lo, hi]
        out.append(row)
    return out


def _ranks(eval_dir: Path) -> pd.DataFrame:
    return read_ranks(eval_dir).drop(columns=["ranked"])


def _ci(ranks: np.ndarray, users: np.ndarray) -> dict[str, list[float]]:
    return {f"{m}_{k}": list(bootstrap_ci(ranks, users, k, m)) for m in ("hr", "ndcg") for k in (10, 20)}


def _summary(res: EvalResult, ranks: pd.DataFrame, subset: bool = False) -> dict[str, Any]:
    """One model's evaluation (`res` = its eval.json, `ranks` its ranks); `subset`: `ranks` is a part of the split
    the eval.json metrics were computed on (a baseline on the LLM variants' test sample), so recompute them."""
    r, u = ranks["rank"].to_numpy(), ranks["user_idx"].to_numpy()
    metrics = res.metrics
    if subset:
        metrics = summarize_ranks(r, u)
        metrics.update({f"masked_{k}": v for k, v in summarize_ranks(ranks["masked_rank"].to_numpy(), u).items()})
    out = {"samples": int(len(ranks)), "metrics": metrics, "ci95": _ci(r, u), "users_per_s": res.users_per_s,
           "by_history_length": by_history_length(r, ranks["history_len"].to_numpy())}
    if res.prompt_tokens_mean is not None:
        out["prompt_tokens_mean"] = res.prompt_tokens_mean
    return out


def target_slices(data_dir: Path) -> dict[str, set[int]]:
    """The catalog cut by what training says about an item: how often it is a training target (never: cold) and
    whether another catalog item has the same title. Test targets are scored per slice."""
    store = SequenceStore(data_dir)
    counts = Counter(store.sample(int(i))[1] for i in store.indices("train"))
    items = pd.read_parquet(Path(data_dir) / "items.parquet", columns=["item_idx", "title"])
    n = items.item_idx.map(counts).fillna(0).to_numpy()
    idx = items.item_idx.to_numpy()
    shared = items.title.astype(str).str.strip().str.casefold().duplicated(keep=False).to_numpy()
    return {"cold": set(idx[n == 0].tolist()), "1-5": set(idx[(n >= 1) & (n <= 5)].tolist()),
            "6-20": set(idx[(n >= 6) & (n <= 20)].tolist()), ">20": set(idx[n > 20].tolist()),
            "shared title": set(idx[shared].tolist())}


def _slice_metrics(ranks: pd.DataFrame, slices: dict[str, set[int]]) -> dict[str, dict[str, Any]]:
    """HR@20 / NDCG@20 (and the target count) of the test targets in each slice."""
    out = {}
    for name, items in slices.items():
        part = ranks[ranks["target"].isin(items)]
        m = summarize_ranks(part["rank"].to_numpy(), part["user_idx"].to_numpy(), ks=(20,)) if len(part) else {}
        out[name] = {"targets": int(len(part)), "hr_20": m.get("hr_20"), "ndcg_20": m.get("ndcg_20")}
    return out


def run(profile: str, data_cfg: DataConfig, work: Path, seconds: float, test_samples: int, lr: float, base: str,
        sasrec_epochs: int, only: list[str] | None = None, keep_best: bool = True,
        scoring_batch: int | None = None, sasrec_seconds: float | None = None) -> dict[str, Any]:
    """Prepare `data_cfg` (reused when unchanged), train and rank every variant and baseline under `work`
    through the stage contract (folders named by fingerprints that include the data); stages finished by an
    earlier invocation are reused and counted in `reused_stages`. `scoring_batch`: windows per step of the
    scoring-head variants (None: the recipe's). `sasrec_seconds`: SASRec's wall-clock budget (None: to early
    stopping)."""
    t_start = time.perf_counter()
    scoring_batch = scoring_batch or SCORING_RECIPE["batch_size"]
    prepare_data(data_cfg)
    data = data_record(data_cfg.out)
    slices = target_slices(data.dir)
    runs = work / "runs" / profile
    mcfg = ModelConfig(base=base, cache_dir=work / "models")
    sample_eval = EvalConfig(split="test", max_samples=test_samples or None)
    all_eval = EvalConfig(split="test", max_samples=None)
    report: dict[str, Any] = {"profile": profile, "protocol": read_json(data.dir / "splits.json")["protocol"],
                              "budget_seconds": seconds, "lr": lr, "base": base,
                              "keep_best": keep_best, "test_samples": test_samples or "all",
                              "scoring_batch": scoring_batch,
                              "machine": {**machine(), "date": time.strftime("%Y-%m-%d", time.gmtime())},
                              "variants": {}, "baselines": {}}
    ranks: dict[str, pd.DataFrame] = {}
    stage_seconds: dict[Path, float] = {}
    reused: dict[Path, bool] = {}  # stage folder -> finished before this invocation
    tiny = base == "tiny"
    chosen = variants(seconds, lr, keep_best, min(8, mcfg.tiny_layers) if tiny else 8,
                      min(12, mcfg.tiny_layers) if tiny else 12, compile_lm=not tiny, scoring_batch=scoring_batch)
    unknown = set(only or []) - set(chosen)
    if unknown:
        raise ValueError(f"unknown variant(s) {sorted(unknown)}; choose from {list(chosen)}")
    for name, v in chosen.items():
        if only and name not in only:
            continue
        init, train_s, samples, curve = None, 0.0, 0, []
        for which in ("ppt", "pft"):
            tcfg = v[which]
            if tcfg is None:
                continue
            rec = train_into(lambda fp, w=which: runs / f"{w}-{fp}", which, RunSpec(train=tcfg, model=mcfg), data,
                             init=init)
            reused.setdefault(rec.dir, rec.reused)
            stage_seconds[rec.dir] = rec.metrics["train_seconds"]
            probes = StageResult.read(rec.dir / "training.json").curve
            curve += [{**c, "seconds": c["seconds"] + train_s} for c in probes]
            train_s += rec.metrics["train_seconds"]
            samples += int(rec.metrics["samples"])
            init = rec
        ecfg = all_eval if v["pft"].head == "scoring" else sample_eval
        ev = evaluate_into(lambda fp: runs / f"eval-{fp}", ecfg, data, init)
        reused.setdefault(ev.dir, ev.reused)  # a variant identical to an earlier one shares its folders
        ranks[name] = _ranks(ev.dir)
        summary = _summary(read_result(ev.dir), ranks[name])
        report["variants"][name] = {
            **summary, "head": v["pft"].head, "train_targets": samples, "train_seconds": train_s,
            "train_targets_per_s": samples / train_s if train_s else None, "curve": curve,
            "rank_seconds": summary["samples"] / summary["users_per_s"],
            "slices": _slice_metrics(ranks[name], slices)}
        m = summary["metrics"]
        print(f"{name}: HR@20 {m['hr_20']:.4f} NDCG@20 {m['ndcg_20']:.4f} ({summary['samples']} targets, "
              f"{train_s:.0f} s of training)", flush=True)
        gc.collect()  # each variant loads its own model; free the last one before the next
    sampled = [ranks[n]["sample"].to_numpy() for n, v in report["variants"].items() if v["head"] == "generative"]
    llm_subset = sampled[0] if sampled else ranks[next(iter(report["variants"]))]["sample"].to_numpy()
    sas = SASRecConfig(max_epochs=sasrec_epochs, max_seconds=sasrec_seconds)
    for kind in ("popularity", "sasrec"):
        rec = baseline_into(lambda fp, k=kind: runs / f"baseline-{k}-{fp}", kind, data, sas)
        reused[rec.dir] = rec.reused
        res = read_result(rec.dir)
        ranks[kind] = _ranks(rec.dir)  # the whole test split; comparisons pair the targets both sides ranked
        sample = ranks[kind][ranks[kind]["sample"].isin(llm_subset)]
        train = ({k: res.train.get(k) for k in ("epochs", "best_val_ndcg_10", "seconds", "stopped_by")}
                 if res.train else {})
        if res.train:
            train["curve"] = [{"seconds": e["seconds"], "val_ndcg_10": e["val_ndcg_10"]} for e in res.train["log"]
                              if "val_ndcg_10" in e and "seconds" in e]
        report["baselines"][kind] = {"all_test": _summary(res, ranks[kind]), "llm_sample": _summary(res, sample, True),
                                     "train": train, "slices": _slice_metrics(ranks[kind], slices)}
    report["slices"] = {k: {"items": len(v), "test_targets": int(ranks["popularity"]["target"].isin(v).sum())}
                        for k, v in slices.items()}
    report["comparisons"] = _comparisons(ranks, slices["cold"])
    report["reference"] = REFERENCE.get(profile, {})
    report["seconds"] = time.perf_counter() - t_start
    # training + ranking time of the reported stages, the shared PPT run once: most of `seconds` when this
    # invocation reused nothing from an earlier one
    ranking = sum(v["rank_seconds"] for v in report["variants"].values())
    baselines = sum(b["train"].get("seconds") or 0.0 for b in report["baselines"].values())
    report["compute_seconds"] = sum(stage_seconds.values()) + ranking + baselines
    report["stages"], report["reused_stages"] = len(reused), sum(reused.values())
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="ml-100k", choices=sorted(PROFILES))
    parser.add_argument("--seconds", type=float, help="training seconds per LLM variant (profile default)")
    parser.add_argument("--test-samples", type=int, help="test targets ranked by the LLM variants (0 = all)")
    parser.add_argument("--only", action="append", metavar="VARIANT", help="run only this variant (repeatable)")
    parser.add_argument("--no-keep-best", dest="keep_best", action="store_false",
                        help="scoring-head variants keep their last weights, not those of the best validation probe")
    parser.add_argument("--lr", type=float, default=5e-4, help="learning rate of the generative variants")
    parser.add_argument("--base", default="smollm2")
    parser.add_argument("--sasrec-epochs", type=int, default=200)
    parser.add_argument("--sasrec-seconds", type=float, help="SASRec's wall-clock training budget (default: none, "
                        "it trains to early stopping; give the LLM variants' --seconds for an equal budget)")
    parser.add_argument("--work", type=Path, default=PROJECT_ROOT / ".state" / "quality")
    parser.add_argument("--out", type=Path, help="JSON path (default bench/results/quality-<profile>.json)")
    parser.add_argument("--report", type=Path, help="markdown path (default docs/quality-<profile>.md)")
    parser.add_argument("--scoring-batch", type=int, help="windows per step of the scoring-head variants (the "
                        "recipe's 16 by default; a GPU needs more to be compute-bound)")
    parser.add_argument("--require-cuda", action="store_true", help="a GPU run (make quality-gpu): stop at once "
                        "without a CUDA device")
    args = parser.parse_args(argv)
    if args.require_cuda:
        require_cuda("make quality-gpu")
    spec = PROFILES[args.profile]
    seconds = args.seconds or spec["seconds"]
    test_samples = spec["test_samples"] if args.test_samples is None else args.test_samples
    data = dict(spec["data"])
    if "source" in data:
        data["source"] = load_source(data["source"])
    data["raw"] = (PROJECT_ROOT / data["raw"]).resolve()
    data_cfg = DataConfig(**data, out=args.work / "data" / args.profile)
    report = run(args.profile, data_cfg, args.work, seconds, test_samples, args.lr, args.base, args.sasrec_epochs,
                 args.only, args.keep_best, args.scoring_batch, args.sasrec_seconds)
    report["command"] = "python -m bench.quality " + shlex.join(argv if argv is not None else sys.argv[1:])
    out = args.out or PROJECT_ROOT / "bench" / "results" / f"quality-{args.profile}.json"
    write_json(report, out)
    from bench.quality_report import write_report

    md = write_report(report, args.report or PROJECT_ROOT / "docs" / f"quality-{args.profile}.md")
    print(json.dumps({"json": str(out), "report": str(md), "seconds": report["seconds"]}))
    return report


if __name__ == "__main__":
    from patchrec.stopping import Stopped

    try:
        main()
    except Stopped as exc:  # SIGTERM / SIGINT: finished stages are kept; a rerun reuses them and resumes
        print(f"bench.quality: {exc}; finished stages are kept and reused by the next run", file=sys.stderr)
        sys.exit(128 + exc.signum)
