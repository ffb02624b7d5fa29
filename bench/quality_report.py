"""Markdown report and plots of a `bench.quality` JSON (every number comes from that run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["write_report"]


def _plots(report: dict[str, Any], folder: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    names = []
    fig, ax = plt.subplots(figsize=(7, 4))
    curves = [(name, v["by_history_length"], "-") for name, v in report["variants"].items()]
    curves += [(f"{kind} (same sample)", b["llm_sample"]["by_history_length"], "--")
               for kind, b in report["baselines"].items() if "by_history_length" in b["llm_sample"]]
    keys = sorted({b for _, buckets, _ in curves for b in buckets}, key=lambda b: int(b.split("-")[0].rstrip("+")))
    counts = {b: n for _, buckets, _ in curves for b, n in ((k, v["n"]) for k, v in buckets.items())}
    for name, buckets, style in curves:
        ax.plot(range(len(keys)), [buckets.get(b, {}).get("ndcg_20", float("nan")) for b in keys], style, marker="o",
                label=name)
    ax.set_xticks(range(len(keys)), [f"{b}\n(n={counts[b]})" for b in keys])
    ax.set(title=f"{report['profile']}: NDCG@20 by history length (test sample)", xlabel="history length (items)",
           ylabel="NDCG@20")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / f"{report['profile']}-by-history.png", dpi=110)
    plt.close(fig)
    names.append(f"{report['profile']}-by-history.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, v in report["variants"].items():
        ax.scatter(v["prompt_tokens_mean"], v["metrics"]["ndcg_20"], s=40)
        ax.annotate(name, (v["prompt_tokens_mean"], v["metrics"]["ndcg_20"]), fontsize=7, xytext=(4, 4),
                    textcoords="offset points")
    sas = report["baselines"].get("sasrec", {}).get("llm_sample", {}).get("metrics", {}).get("ndcg_20")
    if sas is not None:
        ax.axhline(sas, color="gray", ls="--", label="SASRec (same test sample)")
        ax.legend(fontsize=7)
    ax.set(title=f"{report['profile']}: NDCG@20 vs tokens per prompt", xlabel="mean prompt tokens", ylabel="NDCG@20")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(folder / f"{report['profile']}-vs-tokens.png", dpi=110)
    plt.close(fig)
    names.append(f"{report['profile']}-vs-tokens.png")
    return names


def _row(name: str, s: dict[str, Any], extra: str) -> str:
    m, ci = s["metrics"], s["ci95"]
    cells = [f"{m[f'{x}_{k}']:.4f}" for k in (1, 5) for x in ("hr", "ndcg")]
    cells += [f"{m[f'{x}_{k}']:.4f} [{ci[f'{x}_{k}'][0]:.3f}, {ci[f'{x}_{k}'][1]:.3f}]" for k in (10, 20)
              for x in ("hr", "ndcg")]
    masked = m.get("masked_ndcg_20")
    cells.append(f"{masked:.4f}" if masked is not None else "-")
    return f"| {name} | " + " | ".join(cells) + f" | {extra} |"


def _row2(name: str, m: dict[str, Any], extra: str = "") -> str:
    keys = [f"user_{x}_{k}" for k in (10, 20) for x in ("hr", "ndcg")]
    keys += [f"masked_{x}_{k}" for k in (10, 20) for x in ("hr", "ndcg")] + ["paper_lenient_hr_20"]
    return f"| {name} | " + " | ".join(f"{m[k]:.4f}" if k in m else "-" for k in keys) + f" | {extra} |"


def _verdict(diff: list[float]) -> str:
    return "a better" if diff[1] > 0 else "b better" if diff[2] < 0 else "no detectable difference"


def _comparison_lines(report: dict[str, Any]) -> list[str]:
    rows = report.get("comparisons") or []
    if not rows:
        return []
    lines = ["", "## What the ablations answer", "",
             "Difference a - b on the same test targets; 95% interval from a paired user bootstrap (users "
             "resampled once for both models). An interval that contains 0 means this run cannot tell them apart.",
             "", "| question | a | b | targets | HR@20 a - b [95% CI] | NDCG@20 a - b [95% CI] | verdict |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "; ".join(f"{label}: {_verdict(r[key])}" for label, key in (("HR@20", "hr_20_diff"),
                                                                             ("NDCG@20", "ndcg_20_diff")))
        cells = [f"{x[0]:+.4f} [{x[1]:+.3f}, {x[2]:+.3f}]" for x in (r["hr_20_diff"], r["ndcg_20_diff"])]
        lines.append(f"| {r['question']} | {r['a']} | {r['b']} | {r['samples']} | {cells[0]} | {cells[1]} | "
                     f"{verdict} |")
    return lines


def write_report(report: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    plots = _plots(report, path.parent / "quality")
    head = ("| model | HR@1 | NDCG@1 | HR@5 | NDCG@5 | HR@10 [95% CI] | NDCG@10 [95% CI] | HR@20 [95% CI] | "
            "NDCG@20 [95% CI] | masked NDCG@20 | notes |")
    sep = "|" + "---|" * 11
    lines = [f"# Recommendation quality: {report['profile']}", "",
             f"Measured {report['machine']['date']} on {report['machine']['device']} "
             f"(torch {report['machine']['torch']}): {report['compute_seconds'] / 60:.0f} min of training and ranking "
             f"(per-stage records); this invocation took {report['seconds'] / 60:.0f} min wall and reused "
             f"{report['reused_stages']} of {report['stages']} stages from an earlier one with the same settings. "
             f"Command:", "",
             f"    {report['command']}", "",
             f"Paper protocol (the authors' split, full catalog, exact item id, first rank). Every LLM variant "
             f"({report['base']}) trains on **{report['budget_samples']} samples** (PPT -> PFT: half each), "
             f"lr {report['lr']}; LLM variants rank {report['variants'][next(iter(report['variants']))]['samples']} "
             f"test targets (a fixed random sample); `train samples/s` covers all of a variant's training (its PPT "
             f"run included, whose samples also carry an all-text copy); intervals are user-bootstrap 95% CIs "
             f"(1000 draws). "
             f"`masked` removes items already in the history from the ranked list (for beam search this can only "
             f"shorten a 20-item list).", "", "## LLM variants and baselines on the same test sample", "", head, sep]
    for name, v in report["variants"].items():
        extra = (f"{v['prompt_tokens_mean']:.0f} prompt tokens; train {v['train_samples_per_s']:.2f} samples/s; "
                 f"rank {v['users_per_s']:.2f} users/s; lenient HR@20 {v['metrics']['paper_lenient_hr_20']:.3f}")
        lines.append(_row(name, v, extra))
    for kind, b in report["baselines"].items():
        tr = b["train"]
        extra = f"{tr['epochs']} epochs, {tr['seconds']:.0f} s" if tr else "counts of training targets"
        lines.append(_row(f"{kind} (same sample)", b["llm_sample"], extra))
    head2 = ("| model | user HR@10 | user NDCG@10 | user HR@20 | user NDCG@20 | masked HR@10 | masked NDCG@10 | "
             "masked HR@20 | masked NDCG@20 | lenient HR@20 | |")
    lines += ["", "### User-averaged, masked and the paper's lenient metric", "",
              "`user_*`: mean per user, then over users (each user weighs the same). `masked`: items already in "
              "the history removed from the ranked list. `lenient`: the released code's scoring (a hit when the "
              "true title is a character prefix of a generated title; last such rank) - reported only to compare "
              "with published numbers.", "", head2, "|" + "---|" * 11]
    for name, v in report["variants"].items():
        lines.append(_row2(name, v["metrics"]))
    for kind, b in report["baselines"].items():
        lines.append(_row2(f"{kind} (same sample)", b["llm_sample"]["metrics"], "no titles generated"))
    lines += _comparison_lines(report)
    lines += ["", "## Baselines on the whole test split", "", head, sep]
    for kind, b in report["baselines"].items():
        ref = report["reference"].get(kind)
        lines.append(_row(f"{kind} ({b['all_test']['samples']} targets)", b["all_test"],
                          f"reference {json.dumps(ref)}" if ref else ""))
    lines += ["", "## Plots", ""] + [f"![{p}](quality/{p})" for p in plots] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    write_report(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
