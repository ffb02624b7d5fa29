"""Markdown report and plots of a `bench.quality` JSON (every number comes from that run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["write_report"]


def _plots(report: dict[str, Any], folder: Path, stem: str) -> list[str]:
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
    fig.savefig(folder / f"{stem}-by-history.png", dpi=110)
    plt.close(fig)
    names.append(f"{stem}-by-history.png")

    if any(v.get("prompt_tokens_mean") for v in report["variants"].values()):  # generative variants only
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, v in report["variants"].items():
            if not v.get("prompt_tokens_mean"):
                continue
            ax.scatter(v["prompt_tokens_mean"], v["metrics"]["ndcg_20"], s=40)
            ax.annotate(name, (v["prompt_tokens_mean"], v["metrics"]["ndcg_20"]), fontsize=7, xytext=(4, 4),
                        textcoords="offset points")
        sas = report["baselines"].get("sasrec", {}).get("llm_sample", {}).get("metrics", {}).get("ndcg_20")
        if sas is not None:
            ax.axhline(sas, color="gray", ls="--", label="SASRec (same test sample)")
            ax.legend(fontsize=7)
        ax.set(title=f"{report['profile']}: NDCG@20 vs tokens per prompt", xlabel="mean prompt tokens",
               ylabel="NDCG@20")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / f"{stem}-vs-tokens.png", dpi=110)
        plt.close(fig)
        names.append(f"{stem}-vs-tokens.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    lines = [(name, v.get("curve") or [], "-") for name, v in report["variants"].items()]
    lines += [(kind, b["train"].get("curve") or [], "--") for kind, b in report["baselines"].items()]
    for name, curve, style in lines:
        if curve:
            ax.plot([c["seconds"] / 60 for c in curve], [c["val_ndcg_10"] for c in curve], style, marker="o", ms=3,
                    label=name)
    ax.set(title=f"{report['profile']}: validation NDCG@10 vs training time", xlabel="training minutes (2 CPU cores)"
           if "CPU" in report["machine"]["device"] else "training minutes", ylabel="val NDCG@10")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(folder / f"{stem}-learning-curve.png", dpi=110)
    plt.close(fig)
    names.append(f"{stem}-learning-curve.png")
    return names


def _row(name: str, s: dict[str, Any], extra: str) -> str:
    m, ci = s["metrics"], s["ci95"]
    cells = [f"{m[f'{x}_{k}']:.4f}" for k in (1, 5) for x in ("hr", "ndcg")]
    cells += [f"{m[f'{x}_{k}']:.4f} [{ci[f'{x}_{k}'][0]:.3f}, {ci[f'{x}_{k}'][1]:.3f}]" for k in (10, 20)
              for x in ("hr", "ndcg")]
    masked = m.get("masked_ndcg_20")
    cells.append(f"{masked:.4f}" if masked is not None else "-")
    return f"| {name} | " + " | ".join(cells) + f" | {extra} |"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _row2(name: str, m: dict[str, Any], extra: str = "") -> str:
    keys = [f"user_{x}_{k}" for k in (10, 20) for x in ("hr", "ndcg")]
    keys += [f"masked_{x}_{k}" for k in (10, 20) for x in ("hr", "ndcg")] + ["paper_lenient_hr_20"]
    return f"| {name} | " + " | ".join(f"{m[k]:.4f}" if k in m else "-" for k in keys) + f" | {extra} |"


def _slice_lines(report: dict[str, Any]) -> list[str]:
    """HR@20 / NDCG@20 per slice of test targets (by the target's training occurrences, shared titles) and per
    history length."""
    slices = report.get("slices") or {}
    if not slices:
        return []
    names = list(slices)
    lines = ["", "### Slices of the test targets", "",
             "By how often the target item is a training target (`cold`: never; an ID model knows nothing of it as "
             "an output) and whether another catalog item has its title; HR@20 / NDCG@20, test targets in each "
             "slice in the header.", "",
             "| model | " + " | ".join(f"{n} ({slices[n]['test_targets']})" for n in names) + " |",
             "|---|" + "---|" * len(names)]
    models = [(n, v) for n, v in report["variants"].items()] + [(k, b) for k, b in report["baselines"].items()]
    for name, v in models:
        got = v.get("slices", {})
        lines.append(f"| {name} | " + " | ".join(f"{_num(got.get(n, {}).get('hr_20'))} / "
                                                 f"{_num(got.get(n, {}).get('ndcg_20'))}" for n in names) + " |")
    buckets = list(dict.fromkeys(b for _, v in models for b in _history(v)))
    if buckets:
        lines += ["", "By the length of the user's history before the target (HR@20 / NDCG@20, targets):", "",
                  "| model | " + " | ".join(buckets) + " |", "|---|" + "---|" * len(buckets)]
        for name, v in models:
            h = _history(v)
            lines.append(f"| {name} | " + " | ".join(
                f"{_num(h[b].get('hr_20'))} / {_num(h[b].get('ndcg_20'))} ({h[b]['n']})" if b in h else "-"
                for b in buckets) + " |")
    return lines


def _history(v: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return (v.get("all_test") or v).get("by_history_length") or {}


def _verdict(diff: list[float]) -> str:
    return "a better" if diff[1] > 0 else "b better" if diff[2] < 0 else "no detectable difference"


def _comparison_lines(report: dict[str, Any]) -> list[str]:
    rows = report.get("comparisons") or []
    if not rows:
        return []
    lines = ["", "## What the ablations answer", "",
             "Difference a - b on the same test targets; 95% interval from a paired user bootstrap (users "
             "resampled once for both models). An interval that contains 0 means this run cannot tell them apart.",
             "", "| question | a | b | targets | HR@20 a - b [95% CI] | NDCG@20 a - b [95% CI] | cold HR@20 a - b "
             "[95% CI] | verdict |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "; ".join(f"{label}: {_verdict(r[key])}" for label, key in (("HR@20", "hr_20_diff"),
                                                                             ("NDCG@20", "ndcg_20_diff")))
        cells = [f"{x[0]:+.4f} [{x[1]:+.3f}, {x[2]:+.3f}]" if x else "-"
                 for x in (r["hr_20_diff"], r["ndcg_20_diff"], r.get("cold_hr_20_diff"))]
        lines.append(f"| {r['question']} | {r['a']} | {r['b']} | {r['samples']} | {' | '.join(cells)} | {verdict} |")
    return lines


_PROTOCOLS = {"paper": "Paper protocol (a global chronological split of the targets)",
              "given": "The source's own split (patchrec-paper data: the paper's global chronological split)",
              "loo": "Leave-one-out (each user's last item test, second-last val)"}


def write_report(report: dict[str, Any], path: Path) -> Path:
    path = Path(path)
    plots = _plots(report, path.parent / "quality", path.stem)  # named after the report: reports never share plots
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
             f"{_PROTOCOLS.get(report.get('protocol', 'paper'), report.get('protocol'))} (full catalog, exact item "
             f"id, first rank, no masking). Every LLM "
             f"variant ({report['base']}) trains for **{report['budget_seconds']:.0f} seconds of wall-clock time** "
             f"on this machine (PPT -> PFT: half each); scoring-head variants rank every test target, generative "
             f"variants a fixed random sample of {report['test_samples']} (beam search); each row says how many. "
             f"`train targets/s` counts the training targets (loss terms) per second; intervals are user-bootstrap "
             f"95% CIs (1000 draws). `masked` removes items already in the history from the ranked list.", "",
             "## LLM variants and baselines", "", head, sep]
    for name, v in report["variants"].items():
        tokens = f"{v['prompt_tokens_mean']:.0f} tokens/ranking; " if v.get("prompt_tokens_mean") else ""
        extra = (f"{v['samples']} targets; {v['head']} head; {tokens}train {v['train_seconds']:.0f} s, "
                 f"{v['train_targets_per_s']:.1f} targets/s; rank {v['users_per_s']:.2f} users/s")
        lines.append(_row(name, v, extra))
    for kind, b in report["baselines"].items():
        tr = b["train"]
        extra = (f"{tr['epochs']} epochs, {tr['seconds']:.0f} s"
                 + (" (stopped by its wall-clock budget)" if tr.get("stopped_by") == "budget" else "")
                 if tr else "counts of training targets")
        lines.append(_row(f"{kind} ({b['all_test']['samples']} targets)", b["all_test"], extra))
        if any(v["head"] == "generative" for v in report["variants"].values()):
            lines.append(_row(f"{kind} (generative variants' sample)", b["llm_sample"], ""))
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
        lines.append(_row2(f"{kind} ({b['all_test']['samples']} targets)", b["all_test"]["metrics"],
                           "no titles generated"))
    lines += _slice_lines(report)
    lines += _comparison_lines(report)
    refs = [f"{kind}: {json.dumps(ref)}" for kind, ref in report["reference"].items()]
    if refs:
        lines += ["", "Published reference numbers for this split: " + "; ".join(refs) + "."]
    lines += ["", "## Plots", ""] + [f"![{p}](quality/{p})" for p in plots] + [""]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


if __name__ == "__main__":
    write_report(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
