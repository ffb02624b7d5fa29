"""The catalog scoring head's training and ranking speed (sections of `bench.core`).

Training, at the recipe `bench.quality` trains:
Goodreads, windows of 30 context + 70 target positions, 16 windows a step, cosine scores with the title-patch skip,
the first 8 LM layers, LoRA, bf16 autocast.

Variants run on the same model, optimizer and batches, interleaved in rounds so that the machine's drift (its
matmul peak moves by 2x within minutes on shared cores) hits all alike; the bf16 matmul peak is measured before
every round and the fraction of peak uses the median:

- padded: one window per row, padded to the longest (the path before packing: the baseline);
- packed: several windows to a row (block-diagonal attention, `Rows`);
- packed + compiled: the same with `compile_lm` (torch.compile of the LM body; its one-off compile is reported).

Useful FLOPs per step (what the step must compute, not what padding adds): 4 x the body's frozen weights x real
positions (LoRA: forward + input gradients), causal attention 6 x D x n(n + 1) per window of n positions and
layer (forward + both input gradients), and the catalog: 6 x N x D per target (logits, gradients of the hidden
state and of the item vectors) + 2 x N x D for the title-patch skip's similarities. Beside them, the share of the
peak that the block's linear layers reach alone at a step's rows (the ceiling of a step made only of them).

Ranking: users/s of exact full-catalog top-20 for the real catalogs (Goodreads, ml-1m) and for synthetic
catalogs 10x and 100x Goodreads' (its item vectors tiled with noise), `CATALOG_CHUNK` items scored at a time;
where the time goes (the LM pass over the histories, the catalog's output vectors, the catalog matmuls, the
top-k merges) and the score
buffer a batch holds (batch x chunk, against batch x catalog without chunks).
"""

from __future__ import annotations

import time
from pathlib import Path
from statistics import median

import torch

VARIANTS = {"padded": {"pack": False}, "packed": {"pack": True}, "packed + compiled": {"pack": True, "compile": True}}
LAYOUTS = {  # tokens per trained target, from the plan alone (no timing)
    "item patches (context 30, stride 70)": {},
    "sessions 10x5 + item patches": {"layout": "session", "sessions": 10, "group": 5},
}


def _recipe(**kw):
    from bench.quality import TEXT_LEVERS
    from patchrec.config import TrainConfig
    from patchrec.profiles import SCORING_RECIPE

    return TrainConfig(**{**SCORING_RECIPE, **TEXT_LEVERS, "title_skip": "title", "layers": 8, **kw})


def tokens_per_target(store) -> dict[str, float]:
    """Real input positions per trained target of every scoring layout (the plan's windows, no padding)."""
    from patchrec.heads.scoring.model import Layout, plan_windows

    out = {}
    for name, kw in LAYOUTS.items():
        layout = Layout.of(_recipe(**kw))
        windows, is_target = plan_windows(store, layout)
        positions = 1 + (windows.item_lo - windows.lo) // layout.group + windows.hi - windows.item_lo
        out[name] = float(positions.sum() / is_target.sum())
    return out


def train_speed(base, store, rounds: int, steps: int, peak) -> dict:
    """Targets/s, real and computed positions/s and FLOP/s of each variant (see the module doc)."""
    from patchrec.heads import head
    from patchrec.heads.scoring.model import catalog_loss, window_rows

    cfg = _recipe()
    h = head("scoring")
    model = h.model(base, cfg, trained=True)
    objective = h.objective(store, base, cfg)
    optimizer = torch.optim.AdamW(objective.param_groups(model, cfg), lr=cfg.lr)
    params = [p for p in model.parameters() if p.requires_grad]
    plan = objective.plan()
    body = model.lm.get_base_model().model
    frozen = sum(p.numel() for n, p in body.named_parameters() if "embed" not in n and "lora" not in n)
    n_items, dim = model.patches.shape
    layers = len(body.layers)

    def step(micro, pack: bool) -> dict:
        with torch.autocast(next(model.parameters()).device.type, dtype=torch.bfloat16):
            rows = window_rows(store, objective.windows, micro, objective.is_target, model.item_vectors(),
                               model.start(), objective.layout, pack)
            loss = catalog_loss(model, rows, reduction="sum", mask_same_title=cfg.mask_same_title)
        (loss / len(rows.targets)).backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        n = rows.lengths.double()
        return {"targets": len(rows.targets), "positions": int(rows.lengths.sum()),
                "computed": int(rows.inputs_embeds.shape[0] * rows.inputs_embeds.shape[1]),
                "flops": float(4 * frozen * n.sum() + layers * 6 * dim * (n * (n + 1)).sum()
                               + 8 * n_items * dim * len(rows.targets))}

    res: dict = {"recipe": cfg.model_dump(include={"context", "stride", "batch_size", "layers", "score", "title_skip",
                                                  "finetune", "lora_r"}),
                 "rounds": rounds, "steps_per_round": steps, "frozen_body_params": frozen}
    model.train()
    model.compile_lm = True
    t0 = time.perf_counter()
    step(plan[0], True)  # the compile (dynamic shapes: later batches reuse it)
    res["compile_seconds"] = time.perf_counter() - t0
    for pack in (False, True):
        model.compile_lm = False
        step(plan[0], pack)  # warm-up of the eager paths
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    peaks = []
    for r in range(rounds):
        peaks.append(peak())
        micro = plan[1 + r * steps : 1 + (r + 1) * steps]
        for name, v in VARIANTS.items():
            model.compile_lm = v.get("compile", False)
            t = time.perf_counter()
            done = [step(m, v["pack"]) for m in micro]
            runs[name].append({"seconds": time.perf_counter() - t,
                               **{k: sum(d[k] for d in done) for k in done[0]}})
    res["bf16_matmul_peak_median"] = median(peaks)
    res["bf16_matmul_peaks"] = peaks
    for name, rr in runs.items():
        sec = sum(x["seconds"] for x in rr)
        tot = {k: sum(x[k] for x in rr) for k in rr[0] if k != "seconds"}
        res[name] = {"targets_per_s": tot["targets"] / sec,
                     "targets_per_s_by_round": [x["targets"] / x["seconds"] for x in rr],
                     "positions_per_s": tot["positions"] / sec, "computed_positions_per_s": tot["computed"] / sec,
                     "padding_share": 1 - tot["positions"] / tot["computed"],
                     "positions_per_target": tot["positions"] / tot["targets"],
                     "useful_flops_per_s": tot["flops"] / sec,
                     "fraction_of_bf16_peak": tot["flops"] / sec / res["bf16_matmul_peak_median"]}
    for name in VARIANTS:
        res[name]["speedup_vs_padded"] = res[name]["targets_per_s"] / res["padded"]["targets_per_s"]
    rows = round(sum(x["computed"] for x in runs["packed + compiled"]) / (rounds * steps))
    res["layer_gemms"] = layer_gemm_share(body, rows, peak)
    res["tokens_per_target"] = tokens_per_target(store)
    return res


def layer_gemm_share(body, rows: int, peak) -> dict:
    """bf16 matmul throughput at the shapes of a transformer block's linear layers (`rows` x in -> out), as a share
    of the square peak measured beside it: the ceiling of a step that were nothing but its layer GEMMs."""
    from bench.core import matmul_flops

    shapes = {name.removesuffix(".base_layer"): (m.in_features, m.out_features)
              for name, m in body.layers[0].named_modules() if isinstance(m, torch.nn.Linear) and "lora_" not in name}
    top = peak()
    share = {n: matmul_flops(torch.bfloat16, rows, k, o, reps=10) / top for n, (k, o) in shapes.items()}
    weighted = sum(k * o for k, o in shapes.values()) / sum(k * o / share[n] for n, (k, o) in shapes.items())
    return {"rows": rows, "bf16_matmul_peak": top, "share_by_layer": share, "flop_weighted_share": weighted}


def run(work: Path, paper: Path, base_name: str, cache: Path, rounds: int, steps: int, peak) -> dict:
    from bench.core import _prepared
    from patchrec.config import ModelConfig
    from patchrec.data.sequences import SequenceStore
    from patchrec.prompts import PromptConfig
    from patchrec.runtime import Base, read_items

    data = _prepared("goodreads", work, paper)
    titles = read_items(data / "items.parquet").title.astype(str).tolist()
    base = Base(titles, ModelConfig(base=base_name, cache_dir=cache), PromptConfig())
    store = SequenceStore(data, max_history=100)
    return {"data": "goodreads", "items": len(titles), **train_speed(base, store, rounds, steps, peak)}


def _ranker(model, base, mcfg, items, scale: int, chunk: int, batch: int):
    """A `ScoringRanker` of `model` (the recipe's, untrained: speed only) on a catalog `scale` x the real one (its
    item vectors tiled, with noise), sharing the LM."""
    from patchrec.heads.scoring import ScoringRanker
    from patchrec.heads.scoring.model import ScoringModel
    from patchrec.runtime import RunSpec, Runtime

    cfg = _recipe()
    if scale > 1:
        gen = torch.Generator().manual_seed(scale)
        big = model.patches.repeat(scale, 1)
        n = len(model.patches)
        big[n:] += 0.01 * torch.randn(big[n:].shape, generator=gen, dtype=big.dtype)
        scaled = ScoringModel(model.lm, big, model.start_id, cfg.item_correction, cfg.score, cfg.temperature,
                              cfg.title_skip)
        scaled.bf16_weights = model.bf16_weights
        model = scaled
    runtime = Runtime(items, RunSpec(train=cfg, model=mcfg), base, model.eval())
    return ScoringRanker(runtime, batch_size=batch, chunk=chunk)


def rank_speed(base, mcfg, store, items, users: int, batch: int, scales: tuple[int, ...], chunk: int) -> dict:
    """Users/s and the split of the time for each catalog scale (see the module doc)."""
    from patchrec.heads.scoring.model import scoring_model

    hists = [store.sample(int(i))[0] for i in store.indices("test")[:users]]
    res: dict = {"users": len(hists), "batch": batch, "chunk": chunk, "top_k": 20}
    real = scoring_model(base.model, _recipe(), base.new_tokens, base.catalog)
    for scale in scales:
        ranker = _ranker(real, base, mcfg, items, scale, chunk, batch)
        model = ranker.runtime.model
        n_items = int(model.patches.shape[0])
        ranker.rank_many(hists[:batch], 20)  # warm-up
        t_lm = t_mm = t_top = 0.0
        t0 = time.perf_counter()
        ranker.rank_many(hists, 20)
        total = time.perf_counter() - t0
        with torch.no_grad():  # the same work, phase by phase
            t = time.perf_counter()
            out = model.output_vectors()
            t_vectors = time.perf_counter() - t
            for s in range(0, len(hists), batch):
                t = time.perf_counter()
                h, prev, _ = ranker.states(hists[s : s + batch])
                t_lm += time.perf_counter() - t
                with torch.autocast(h.device.type, dtype=torch.bfloat16, enabled=ranker._bf16()):
                    for c0 in range(0, n_items, chunk):
                        t = time.perf_counter()
                        scores = model.logits(h, prev, slice(c0, min(c0 + chunk, n_items)), out=out).float()
                        t_mm += time.perf_counter() - t
                        t = time.perf_counter()
                        torch.topk(scores, 20, dim=1)
                        t_top += time.perf_counter() - t
        res[f"{scale}x"] = {"items": n_items, "users_per_s": len(hists) / total, "seconds": total,
                            "lm_pass_seconds": t_lm, "output_vectors_seconds": t_vectors,
                            "catalog_matmul_seconds": t_mm, "top_k_seconds": t_top,
                            "score_buffer_mb": batch * min(chunk, n_items) * 4 / 2**20,
                            "unchunked_score_buffer_mb": batch * n_items * 4 / 2**20}
        del ranker, model  # a 100x catalog's tables are gigabytes
    return res


def ranking(work: Path, paper: Path, base_name: str, cache: Path, users: int, batch: int, chunk: int,
            goodreads_scales: tuple[int, ...] = (1, 10, 100)) -> dict:
    """`rank_speed` on Goodreads (`goodreads_scales`) and on ml-1m's catalog."""
    from bench.core import _prepared
    from patchrec.config import ModelConfig
    from patchrec.data.sequences import SequenceStore
    from patchrec.prompts import PromptConfig
    from patchrec.runtime import Base, read_items

    out = {}
    for name, scales in (("goodreads", goodreads_scales), ("ml-1m", (1,))):
        data = _prepared(name, work, paper)
        items = read_items(data / "items.parquet")
        mcfg = ModelConfig(base=base_name, cache_dir=cache)
        base = Base(items.title.astype(str).tolist(), mcfg, PromptConfig())
        store = SequenceStore(data, max_history=_recipe().context + _recipe().stride)
        out[name] = rank_speed(base, mcfg, store, items, users, batch, scales, chunk)
    return out
