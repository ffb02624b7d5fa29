"""The quality report renders every variant and baseline of a bench.quality JSON, with its plots."""

from __future__ import annotations

import numpy as np
import pytest

from bench.quality_report import write_report
from patchrec.evaluation.metrics import bootstrap_ci, summarize_ranks


def _summary(ranks, users, tokens=None, head="generative"):
    m = summarize_ranks(ranks, users)
    m.update({f"masked_{k}": v for k, v in m.items()})
    m.update({f"paper_lenient_hr_{k}": 0.0 for k in (5, 10, 20)})
    ci = {f"{x}_{k}": list(bootstrap_ci(ranks, users, k, x)) for x in ("hr", "ndcg") for k in (10, 20)}
    out = {"samples": len(ranks), "metrics": m, "ci95": ci, "users_per_s": 1.5}
    if tokens is not None:
        out.update(prompt_tokens_mean=tokens, train_targets=8, train_seconds=4.0, train_targets_per_s=2.0, head=head,
                   by_history_length={"1-10": {"n": 2, "ndcg_20": 0.1}, "11-20": {"n": 2, "ndcg_20": 0.3}},
                   slices={"cold": {"targets": 3, "hr_20": 0.33, "ndcg_20": 0.125},
                           "1-5": {"targets": 0, "hr_20": None, "ndcg_20": None}},
                   curve=[{"seconds": 1.0, "val_ndcg_10": 0.01}, {"seconds": 2.0, "val_ndcg_10": 0.02}])
    return out


def test_report_tables_and_plots(tmp_path):
    rng = np.random.default_rng(0)
    ranks, users = rng.integers(-1, 25, 40), np.repeat(np.arange(10), 4)
    sas = {"epochs": 3, "best_val_ndcg_10": 0.1, "seconds": 2.0, "curve": [{"seconds": 1.0, "val_ndcg_10": 0.03}]}
    report = {"profile": "ml-100k", "budget_seconds": 8.0, "lr": 5e-4, "base": "tiny", "seconds": 60.0,
              "test_samples": 40, "compute_seconds": 50.0, "stages": 9, "reused_stages": 0,
              "command": "python -m bench.quality --base tiny", "reference": {"sasrec": {"hr_20": 0.14}},
              "machine": {"date": "2026-11-27", "device": "CPU, 2 cores", "torch": "2.13.0"},
              "slices": {"cold": {"items": 5, "test_targets": 3}, "1-5": {"items": 2, "test_targets": 0}},
              "variants": {"SFT-20": _summary(ranks, users, 120.0),
                           "Scoring, item patches": _summary(ranks, users, 0.0, "scoring")},
              "baselines": {"sasrec": {"all_test": _summary(ranks, users), "llm_sample": _summary(ranks, users),
                                       "train": sas,
                                       "slices": {"cold": {"targets": 3, "hr_20": 0.0, "ndcg_20": 0.0}}}},
              "comparisons": [{"question": "q1", "a": "SFT-20", "b": "sasrec", "samples": 40,
                               "hr_20_diff": [0.1, 0.02, 0.2], "ndcg_20_diff": [0.05, 0.01, 0.1],
                               "cold_hr_20_diff": [0.33, 0.1, 0.5]},
                              {"question": "q2", "a": "SFT-20", "b": "sasrec", "samples": 40,
                               "hr_20_diff": [0.0, -0.1, 0.1], "ndcg_20_diff": [0.0, -0.05, 0.05]}]}
    path = write_report(report, tmp_path / "quality.md")
    text = path.read_text()
    tables = [[line for line in block.splitlines() if line.startswith("| ")] for block in text.split("\n#")]
    tables = [t for t in tables if t]
    # main (2 variants + SASRec on all and on the sample), user/masked/lenient (2 variants + SASRec), slices and
    # history lengths (2 variants + SASRec), ablations (2)
    assert [len(t) for t in tables] == [1 + 4, 1 + 3, 2 * (1 + 3), 1 + 2]  # header + rows
    assert all(row.count("|") == t[0].count("|") for t in tables for row in t if t is not tables[2])
    assert tables[3][1].endswith("| +0.3300 [+0.100, +0.500] | HR@20: a better; NDCG@20: a better |")
    assert tables[3][2].endswith("| - | HR@20: no detectable difference; NDCG@20: no detectable difference |")
    assert tables[2][0] == "| model | cold (3) | 1-5 (0) |"
    assert tables[2][1] == "| SFT-20 | 0.330 / 0.125 | - / - |" and tables[2][3] == "| sasrec | 0.000 / 0.000 | - / - |"
    assert tables[2][7] == "| sasrec | - | - |"  # a model without history buckets gets dashes
    assert 'sasrec: {"hr_20": 0.14}' in text and "python -m bench.quality --base tiny" in text
    assert "8 seconds of wall-clock time" in text
    for png in ("quality-by-history.png", "quality-vs-tokens.png", "quality-learning-curve.png"):
        assert (tmp_path / "quality" / png).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow  # trains and ranks every variant
def test_quality_harness_end_to_end(tmp_path):
    """bench.quality on the tiny synthetic data and model: every variant, both baselines, every ablation."""
    from bench.quality import COMPARISONS, run, variants
    from patchrec.config import DataConfig
    from patchrec.profiles import load_pipeline

    data_cfg = DataConfig(**{**load_pipeline("tiny").data.model_dump(), "out": tmp_path / "data"})
    report = run("tiny", data_cfg, tmp_path, seconds=2.0, test_samples=6, lr=5e-4, base="tiny", sasrec_epochs=1)
    assert list(report["variants"]) == list(variants(2.0, 5e-4))
    for v in report["variants"].values():
        assert v["samples"] == (6 if v["head"] == "generative" else report["baselines"]["popularity"]["all_test"]
                                ["samples"])
        assert 0 < v["train_seconds"] < 2.0 + 5 and v["train_targets"] > 0 and v["curve"]
        assert v["curve"][-1]["seconds"] <= v["train_seconds"] + 1e-6 and "val_ndcg_10" in v["curve"][-1]
    assert report["baselines"]["sasrec"]["llm_sample"]["samples"] == 6
    assert [c["question"] for c in report["comparisons"]] == [q for q, _, _ in COMPARISONS]
    assert all(c["ndcg_20_diff"][1] <= c["ndcg_20_diff"][2] for c in report["comparisons"])
    # 24 training runs, 23 rankings, 2 baselines; on the 2-layer test model the 8- and 12-layer title-patch variants
    # are one config (both keep every layer) and share their 2 folders
    assert (report["stages"], report["reused_stages"]) == (24 + 23 + 2 - 2, 0)
    assert 0 < report["compute_seconds"] and report["slices"]["cold"]["items"] >= 0
    assert all(set(v["slices"]) == set(report["slices"]) for v in report["variants"].values())
    again = run("tiny", data_cfg, tmp_path, seconds=2.0, test_samples=6, lr=5e-4, base="tiny", sasrec_epochs=1)
    assert again["reused_stages"] == again["stages"] == 47 and again["comparisons"] == report["comparisons"]
