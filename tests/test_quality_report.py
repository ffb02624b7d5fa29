"""The quality report renders every variant and baseline of a bench.quality JSON, with its plots."""

from __future__ import annotations

import numpy as np

from bench.quality_report import write_report
from patchrec.evaluation.metrics import bootstrap_ci, summarize_ranks


def _summary(ranks, users, tokens=None):
    m = summarize_ranks(ranks, users)
    m.update({f"masked_{k}": v for k, v in m.items()})
    m.update({f"paper_lenient_hr_{k}": 0.0 for k in (5, 10, 20)})
    ci = {f"{x}_{k}": list(bootstrap_ci(ranks, users, k, x)) for x in ("hr", "ndcg") for k in (10, 20)}
    out = {"samples": len(ranks), "metrics": m, "ci95": ci, "users_per_s": 1.5}
    if tokens is not None:
        out.update(prompt_tokens_mean=tokens, train_samples=8, train_samples_per_s=2.0,
                   by_history_length={"1-10": {"n": 2, "ndcg_20": 0.1}, "11-20": {"n": 2, "ndcg_20": 0.3}})
    return out


def test_report_tables_and_plots(tmp_path):
    rng = np.random.default_rng(0)
    ranks, users = rng.integers(-1, 25, 40), np.repeat(np.arange(10), 4)
    report = {"profile": "ml-100k", "budget_samples": 8, "lr": 5e-4, "base": "tiny", "seconds": 60.0,
              "compute_seconds": 50.0, "stages": 9, "reused_stages": 0,
              "command": "python -m bench.quality --base tiny", "reference": {"sasrec": {"hr_20": 0.14}},
              "machine": {"date": "2026-11-27", "device": "CPU, 2 cores", "torch": "2.13.0"},
              "variants": {"SFT-20": _summary(ranks, users, 120.0), "PPT -> PFT-S(5)": _summary(ranks, users, 60.0)},
              "baselines": {"sasrec": {"all_test": _summary(ranks, users), "llm_sample": _summary(ranks, users),
                                       "train": {"epochs": 3, "best_val_ndcg_10": 0.1, "seconds": 2.0}}},
              "comparisons": [{"question": "q1", "a": "SFT-20", "b": "sasrec", "samples": 40,
                               "hr_20_diff": [0.1, 0.02, 0.2], "ndcg_20_diff": [0.05, 0.01, 0.1]},
                              {"question": "q2", "a": "SFT-20", "b": "sasrec", "samples": 40,
                               "hr_20_diff": [0.0, -0.1, 0.1], "ndcg_20_diff": [0.0, -0.05, 0.05]}]}
    path = write_report(report, tmp_path / "quality.md")
    text = path.read_text()
    tables = [[line for line in block.splitlines() if line.startswith("| ")] for block in text.split("\n#")]
    tables = [t for t in tables if t]
    # main (2 variants + SASRec on the sample), user/masked/lenient (same rows), ablations (2), SASRec on all
    assert [len(t) for t in tables] == [1 + 3, 1 + 3, 1 + 2, 1 + 1]  # header + rows
    assert all(row.count("|") == t[0].count("|") for t in tables for row in t)
    assert tables[2][1].endswith("| HR@20: a better; NDCG@20: a better |")
    assert tables[2][2].endswith("| HR@20: no detectable difference; NDCG@20: no detectable difference |")
    assert 'reference {"hr_20": 0.14}' in text and "python -m bench.quality --base tiny" in text
    for png in ("ml-100k-by-history.png", "ml-100k-vs-tokens.png"):
        assert (tmp_path / "quality" / png).read_bytes()[:4] == b"\x89PNG"


def test_quality_harness_end_to_end(tmp_path):
    """bench.quality on the tiny synthetic data and model: every variant, both baselines, every ablation."""
    from bench.quality import COMPARISONS, run, variants
    from patchrec.config import DataConfig
    from patchrec.profiles import load_pipeline

    data_cfg = DataConfig(**{**load_pipeline("tiny").data.model_dump(), "out": tmp_path / "data"})
    report = run("tiny", data_cfg, tmp_path, budget=4, test_samples=6, lr=5e-4, base="tiny", sasrec_epochs=1)
    assert list(report["variants"]) == list(variants(4, 5e-4))
    for v in report["variants"].values():
        assert v["samples"] == 6 and v["train_samples"] == 4 and v["prompt_tokens_mean"] > 0
    assert report["baselines"]["sasrec"]["llm_sample"]["samples"] == 6
    assert report["baselines"]["popularity"]["all_test"]["samples"] >= 6
    assert [c["question"] for c in report["comparisons"]] == [q for q, _, _ in COMPARISONS]
    assert all(c["samples"] == 6 and c["ndcg_20_diff"][1] <= c["ndcg_20_diff"][2] for c in report["comparisons"])
    assert (report["stages"], report["reused_stages"]) == (9 + 7 + 2, 0)  # 9 training runs (2 PPT shared), 7 rankings
    assert 0 < report["compute_seconds"] and "masked_ndcg_20" in report["baselines"]["sasrec"]["llm_sample"]["metrics"]
    again = run("tiny", data_cfg, tmp_path, budget=4, test_samples=6, lr=5e-4, base="tiny", sasrec_epochs=1)
    assert again["reused_stages"] == again["stages"] == 18 and again["comparisons"] == report["comparisons"]
