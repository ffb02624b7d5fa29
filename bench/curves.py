"""Growth curves, drawn as plots for docs/benchmarks.md:

- training cost vs history length (the paper's efficiency claim): per-sample training of the generative head,
  text titles (SFT) vs item patches (PFT-I, k = 5 newest as text) vs session patches (PFT-S, G = 5), at 20, 50,
  100 and 200 history items on ml-1m's longest train histories: prompt tokens and seconds per sample, measured
  in this run (`--run`);
- ranking cost vs catalog size: the scoring head's users/s from `bench/results/core-scoring.json`;
- ingestion time and peak memory vs events: `bench/results/ingest.json`.

Each curve comes from one run on one machine (the JSON it is drawn from names both).

    python -m bench.curves --run      # measure the training curve (about 10 minutes on 2 cores), then plot
    python -m bench.curves            # plot from the committed JSON only
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.core import PAPER, REPO, _batch, _dev, _patches, _prepared, _sync
from bench.report import header, write_report

LENGTHS = (20, 50, 100, 200)
CURVES = {"SFT (text)": ("text", 5, 5), "PFT-I (item patches, k=5)": ("item", 5, 5),
          "PFT-S (session patches, G=5)": ("session", 5, 5)}
RESULTS = REPO / "bench" / "results"
IMG = REPO / "docs" / "img"


def training_curve(work: Path, paper: Path, base: str, batch: int, steps: int) -> dict:
    """Seconds per sample and prompt tokens of one training step per layout and history length (same samples)."""
    from patchrec.config import ModelConfig, TrainConfig
    from patchrec.data.sequences import SequenceStore
    from patchrec.hardware import use_bf16
    from patchrec.heads.generative import label_loss
    from patchrec.model import attach_trainable
    from patchrec.prompts import PromptConfig
    from patchrec.runtime import Base, read_items

    data = _prepared("ml-1m", work, paper)
    s = Base(read_items(data / "items.parquet").title.astype(str).tolist(),
             ModelConfig(base=base, cache_dir=REPO / ".state" / "models"), PromptConfig())
    store = SequenceStore(data, max_history=max(LENGTHS))
    model = attach_trainable(s.model, TrainConfig(stage="pft", layout="session"), s.new_tokens)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    s.catalog.patches = _patches(s)
    idx = store.indices("train")
    idx = idx[np.argsort(-store.sample_pos[idx], kind="stable")][: batch * steps]  # >= 200 earlier items each
    bf16 = use_bf16("auto")
    out: dict = {"data": "ml-1m", "batch": batch, "steps": steps, "bf16": bf16,
                 "min_history_of_samples": int(store.sample_pos[idx].min()), "curves": {}}
    for name, (mode, k, g) in CURVES.items():
        rows = []
        for n in LENGTHS:
            secs, tokens = 0.0, 0
            for st in range(-1, steps):  # step -1: untimed warm-up
                mb = idx[max(st, 0) * batch : (max(st, 0) + 1) * batch]
                _sync()
                t0 = time.perf_counter()
                with torch.autocast(_dev().type, dtype=torch.bfloat16, enabled=bf16):
                    b = _batch(store, mb, s, mode, n, k, g)
                    loss = label_loss(model, b)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                _sync()
                if st >= 0:
                    secs += time.perf_counter() - t0
                    tokens += int(b.attention_mask.sum())
            rows.append({"history": n, "seconds_per_sample": secs / (steps * batch),
                         "prompt_tokens": tokens / (steps * batch)})
        out["curves"][name] = rows
    return out


def _save(fig, title: str, name: str) -> Path:
    """Title the figure with the run it is drawn from, write docs/img/<name>, close it."""
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(IMG / name, dpi=110)
    plt.close(fig)
    return IMG / name


def plot(training: dict | None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    IMG.mkdir(parents=True, exist_ok=True)
    made = []
    if training is not None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        for name, rows in training["training_curve"]["curves"].items():
            x = [r["history"] for r in rows]
            axes[0].plot(x, [r["seconds_per_sample"] for r in rows], marker="o", label=name)
            axes[1].plot(x, [r["prompt_tokens"] for r in rows], marker="o", label=name)
        axes[0].set(xlabel="history items", ylabel="training seconds per sample", title="training cost")
        axes[1].set(xlabel="history items", ylabel="prompt tokens", title="prompt length")
        axes[0].legend(fontsize=8)
        made.append(_save(fig, f"{training['command']} ({training['date']}, {training['machine']['device']}, "
                               f"{training['machine']['threads']} threads)", "curve-training-vs-history.png"))
    core = json.loads((RESULTS / "core-scoring.json").read_text())
    gr = core["scoring_ranking"]["goodreads"]
    scales = [v for v in gr.values() if isinstance(v, dict)]
    items = [v["items"] for v in scales]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot(items, [v["users_per_s"] for v in scales], marker="o")
    axes[0].set(xscale="log", xlabel="catalog items (Goodreads x1, x10, x100)", ylabel="users/s",
                title="scoring-head ranking, exact top-20")
    for key, label in (("lm_pass_seconds", "LM pass"), ("output_vectors_seconds", "output vectors"),
                       ("catalog_matmul_seconds", "catalog matmul"), ("top_k_seconds", "top-k")):
        axes[1].plot(items, [v[key] for v in scales], marker="o", label=label)
    axes[1].set(xscale="log", yscale="log", xlabel="catalog items", ylabel=f"seconds ({gr['users']} users)",
                title="where the time goes")
    axes[1].legend(fontsize=8)
    made.append(_save(fig, f"{core['command']} ({core['date']})", "curve-ranking-vs-catalog.png"))
    ing = json.loads((RESULTS / "ingest.json").read_text())
    rows = sorted(ing["results"], key=lambda r: r["patchrec"]["rows"])
    ev = [r["patchrec"]["rows"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for who in ("patchrec", "pandas", "duckdb_copy"):
        axes[0].plot(ev, [r[who]["seconds"] for r in rows], marker="o", label=who)
        axes[1].plot(ev, [r[who]["peak_rss_mb"] for r in rows], marker="o", label=who)
    if big := [r for r in rows if "patchrec_large_memory" in r]:  # the same ingest with a larger DuckDB buffer
        label = f"patchrec, memory_limit {big[0]['patchrec_large_memory']['memory_limit']}"
        for ax, key in zip(axes, ("seconds", "peak_rss_mb"), strict=True):
            ax.plot([r["patchrec"]["rows"] for r in big], [r["patchrec_large_memory"][key] for r in big], marker="o",
                    linestyle="--", label=label)
    axes[0].set(xscale="log", yscale="log", xlabel="events", ylabel="seconds", title="ingestion time")
    axes[1].set(xscale="log", xlabel="events", ylabel="peak RSS (MB)", title="ingestion memory")
    axes[0].legend(fontsize=8)
    made.append(_save(fig, f"{ing['command']} ({ing['date']})", "curve-ingestion-vs-events.png"))
    return made


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="store_true", help="measure the training curve (otherwise plot the JSON)")
    p.add_argument("--base", default="smollm2")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--paper", type=Path, default=PAPER)
    p.add_argument("--work", type=Path, default=REPO / ".state" / "bench")
    p.add_argument("--out", type=Path, default=RESULTS / "curves.json")
    args = p.parse_args(argv)
    report = None
    if args.run:
        report = {**header("curves", argv), "base": args.base,
                  "training_curve": training_curve(args.work, args.paper, args.base, args.batch, args.steps)}
        write_report(report, args.out)
    elif args.out.exists():
        report = json.loads(args.out.read_text())
    for path in plot(report):
        print(path)
    return report


if __name__ == "__main__":
    main()
