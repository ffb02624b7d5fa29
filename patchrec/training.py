"""One training loop for every head and stage (PPT, PFT-I, PFT-S, SFT; the heads' objectives are in
`patchrec.heads`): bf16 autocast, AdamW with a cosine schedule and warmup, gradient clipping and
accumulation, atomic checkpoints (`patchrec.checkpoints`) and exact resume, clean stops on signals.

The loop holds no module-level state: in a torchrun launch every rank runs it on its shard of each global
micro-batch (`patchrec.distributed`), under DDP; rank 0 alone writes checkpoints, probes and progress output.
"""

from __future__ import annotations

import math
import shutil
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from patchrec import stopping
from patchrec.checkpoints import latest_checkpoint, load_checkpoint, save_checkpoint, trainable_weights
from patchrec.config import TrainConfig
from patchrec.contract import StageOutput
from patchrec.data.sequences import SequenceStore, sample_split
from patchrec.distributed import SINGLE, Dist
from patchrec.hardware import use_bf16
from patchrec.heads import Objective, Terms, head
from patchrec.io import atomic_path, read_json, write_json
from patchrec.runtime import Base, RunSpec, Runtime, read_items

__all__ = ["NonFiniteLoss", "StageResult", "fit", "load_init", "train_run"]


class NonFiniteLoss(RuntimeError):
    """Training produced a NaN or infinite loss or gradient; the step is not applied and nothing is saved."""


@dataclass
class StageResult:
    """A training run's totals and per-step curves (of the whole run, also after a resume)."""

    steps: int
    samples: int
    final_loss: float
    samples_per_s: float
    losses: list[float]  # per optimizer step
    compressed_share: list[float]  # per optimizer step: share of history items given as patches
    lrs: list[float] = field(default_factory=list)  # learning rate used by each step
    step_samples_per_s: list[float] = field(default_factory=list)  # throughput of each step
    seconds: float = 0.0  # training time (without probes)
    curve: list[dict[str, float]] = field(default_factory=list)  # probes: seconds, step, samples, metrics
    best: dict[str, float] | None = None  # with keep_best: the probe whose weights the run keeps

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def read(cls, path: Path) -> StageResult:
        """A finished training stage's `training.json`.

        Raises:
            ValueError: the file is not a training result (names it and the field).
        """
        try:
            return cls(**read_json(path))
        except TypeError as exc:
            raise ValueError(f"{path} is not a training result: {exc}") from exc


class _Step(nn.Module):
    """An objective's loss as a module's forward: what DDP and FSDP wrap (their hooks are armed by forward)."""

    def __init__(self, model: nn.Module, objective: Objective):
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, micro: np.ndarray, progress: float, generator: torch.Generator, stand_in: bool = False) -> Terms:
        """The loss of `micro`; with `stand_in`, a rank whose shard is empty (fewer samples than ranks) runs
        `micro` (one sample of the batch) for a loss of zero: every module still runs forward and backward, so
        DDP's gradient sync and FSDP's per-block gathers and reduce-scatters match the other ranks'."""
        terms = self.objective.loss(self.model, micro, progress, generator)
        return Terms(terms.total * 0.0, 0, 0, 0.0) if stand_in else terms


def _lr_factor(progress: float, warmup: float, step_share: float) -> float:
    """Linear warmup over the first `warmup` share of the run, then cosine decay to zero."""
    if progress < warmup:
        return min(1.0, (progress + step_share) / warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))))


Probe = Callable[[Any], dict[str, float]]  # model -> validation metrics, for the learning curve
BEST = "best_probe.pt"  # with keep_best: the trainable weights of the best validation probe so far


def fit(model, objective: Objective, cfg: TrainConfig, out_dir: Path, max_steps: int | None = None,
        dist: Dist = SINGLE, progress: bool = True, probe: Probe | None = None) -> StageResult:
    """Train `model` (trainable weights attached) on `objective`; resumes from the newest checkpoint.

    The learning rate follows the run's progress: steps done / planned, or, with `cfg.max_seconds`, the
    share of the time budget used when that is larger; training stops when either runs out.

    Args:
        model: the model from `attach_trainable` (or a `ScoringModel` around it).
        objective: the batch plan and loss (`GenerativeObjective`, `ScoringObjective`).
        cfg: the stage's config.
        out_dir: the stage folder; checkpoints go to `out_dir/checkpoints`.
        max_steps: stop after this step (the schedule still assumes the whole run): simulates interruptions.
        dist: this process's rank in a torchrun launch: it trains its shard of every global micro-batch under
            DDP (the same updates as one process); only rank 0 writes checkpoints, probes and progress output.
        progress: show a progress bar.
        probe: validation metrics of the current model, taken every `cfg.curve_every_s` training seconds and
            at the end (its time is not training time).

    Returns:
        The whole run's record (a resumed run includes the steps before the interruption).
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    dev = next(model.parameters()).device
    plan = objective.plan()
    total = math.ceil(len(plan) / cfg.grad_accum)
    engine = dist.wrap(_Step(model, objective))  # before the optimizer: FSDP replaces the parameters by shards
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(objective.param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    is_main = dist.is_main
    start = 0
    # per-step records of the whole run; a checkpoint carries them so that a resumed run reports all steps
    run: dict[str, Any] = {"losses": [], "shares": [], "lrs": [], "speeds": [], "samples": 0, "seconds": 0.0,
                           "curve": []}
    if (ck := latest_checkpoint(ckpt_dir)) is not None:
        state = load_checkpoint(ck, model, optimizer, dist)
        torch.set_rng_state(state["torch_rng"].cpu())
        start = state["step"]
        run = state["run"]
    with dist.gathered(engine):
        objective.refresh(model)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16(cfg.bf16))
    shares, losses, lrs, speeds, curve = run["shares"], run["losses"], run["lrs"], run["speeds"], run["curve"]
    n_samples, elapsed = int(run["samples"]), float(run["seconds"])
    stop = total if max_steps is None else min(total, max_steps)
    budget = cfg.max_seconds

    def take_probe(step: int) -> None:
        if probe is None:  # rank 0 alone probes (every rank under FSDP, where each holds a shard)
            return
        model.eval()
        with dist.gathered(engine):
            curve.append({"seconds": elapsed, "step": step, "samples": n_samples, **probe(model)})
        model.train()
        if cfg.keep_best and curve[-1]["val_ndcg_10"] > run.get("best", {}).get("val_ndcg_10", -1.0):
            weights = trainable_weights(model)
            if is_main:
                with atomic_path(out_dir / BEST) as tmp:
                    torch.save(weights, tmp)
            run["best"] = curve[-1]

    bar = None
    if progress and is_main:
        from tqdm.auto import tqdm

        desc = f"{cfg.stage}:{cfg.head}:{cfg.layout}"
        bar = (tqdm(total=budget, initial=elapsed, desc=desc, unit="s", bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s"
                    " [{elapsed}<{remaining}{postfix}]") if budget else tqdm(total=stop, initial=start, desc=desc,
                                                                            unit="step"))
    with stopping.stop_on_signals():
        model.train()
        for step in range(start, stop):
            if budget is not None and elapsed >= budget:
                break
            gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            done_share = max(step / total, elapsed / budget if budget else 0.0)
            factor = _lr_factor(done_share, cfg.warmup_ratio, 1 / total)
            for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = lr * factor
            optimizer.zero_grad(set_to_none=True)
            step_loss, step_shares, step_t0, step_n = 0.0, [], time.perf_counter(), n_samples
            lrs.append(base_lrs[0] * factor)
            micros = plan[step * cfg.grad_accum : (step + 1) * cfg.grad_accum]
            for i, micro in enumerate(micros):
                last = i == len(micros) - 1
                with dist.gradient_sync(engine, last):
                    with autocast:
                        shard = dist.shard(micro)
                        part = engine(shard if len(shard) else micro[:1], done_share, gen, stand_in=not len(shard))
                    loss_sum, terms, targets, patched = dist.sum(float(part.total.detach()), part.terms, part.targets,
                                                              part.share * part.targets)
                    # DDP averages gradients over ranks: scale so that the result is the global micro-batch's mean
                    (part.total * (dist.world / max(terms, 1) / cfg.grad_accum)).backward()
                step_loss += loss_sum / max(terms, 1) / cfg.grad_accum
                step_shares.append(patched / max(targets, 1))
                n_samples += int(targets)
            norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
            if not (math.isfinite(step_loss) and math.isfinite(norm)):  # never an update from NaN/inf
                raise NonFiniteLoss(f"{out_dir}: step {step + 1}: loss {step_loss} / gradient norm {norm} is not "
                                    f"finite (lr {base_lrs[0] * factor:.3g}); lower the learning rate or check the "
                                    "data")
            optimizer.step()
            with dist.gathered(engine):
                objective.refresh(model)
            seconds = dist.max(time.perf_counter() - step_t0)  # every rank stops a time budget at the same step
            elapsed += seconds
            losses.append(step_loss)
            shares.append(float(np.mean(step_shares)))
            speeds.append((n_samples - step_n) / max(seconds, 1e-9))
            if bar is not None:
                bar.update(min(seconds, budget - bar.n) if budget else 1)
                bar.set_postfix(step=step + 1, loss=f"{step_loss:.3f}", targets_s=f"{speeds[-1]:.1f}")
            done = step + 1
            if cfg.curve_every_s and elapsed >= (len(curve) + 1) * cfg.curve_every_s:
                take_probe(done)
            if (is_main or dist.sharded) and done % cfg.checkpoint_every == 0:
                run.update(samples=n_samples, seconds=elapsed)
                save_checkpoint(ckpt_dir / f"step_{done}", model, optimizer, done, {"run": run}, cfg.keep_checkpoints,
                                dist)
            signum = int(dist.max(float(stopping.requested() or 0)))  # every rank stops at the same step
            if signum:  # SIGTERM / SIGINT: a resumable checkpoint, then stop
                if (is_main or dist.sharded) and done % cfg.checkpoint_every:
                    run.update(samples=n_samples, seconds=elapsed)
                    save_checkpoint(ckpt_dir / f"step_{done}", model, optimizer, done, {"run": run},
                                    cfg.keep_checkpoints, dist)
                if bar is not None:
                    bar.close()
                raise stopping.Stopped(f"{out_dir}: stopped by {signal.Signals(signum).name} after step {done} of "
                                       f"{stop}; checkpoint {ckpt_dir / f'step_{done}'}; run again to resume", signum)
    if bar is not None:
        bar.close()
    if not losses:
        raise RuntimeError(f"{out_dir}: no training step was run (empty train split or max_steps=0)")
    final = len(losses)
    if probe is not None and (not curve or curve[-1]["step"] != final):
        take_probe(final)
    if (is_main or dist.sharded) and ((last := latest_checkpoint(ckpt_dir)) is None or last.name != f"step_{final}"):
        run.update(samples=n_samples, seconds=elapsed)
        save_checkpoint(ckpt_dir / f"step_{final}", model, optimizer, final, {"run": run}, cfg.keep_checkpoints, dist)
    return StageResult(final, n_samples, losses[-1], n_samples / elapsed if elapsed else 0.0, losses, shares, lrs,
                       speeds, seconds=elapsed, curve=curve, best=run.get("best"))


def train_run(data_dir: Path, out_dir: Path, spec: RunSpec, init_from: Path | None = None,
              catalog_file: Path | None = None, progress: bool = True, dist: Dist = SINGLE) -> StageOutput:
    """A training stage's build: fit, then write `trainable.pt`, `tokenizer/` and `training.json` (curves).

    Args:
        data_dir: a prepared data folder.
        out_dir: the stage folder (resumed from its checkpoints).
        spec: train, model and prompt configs.
        init_from: a folder with the `trainable.pt` to start from (a PPT run or a champion bundle).
        catalog_file: the catalog stage's table, to skip tokenizing the titles again.
        progress: show a progress bar.
        dist: this process's rank in a torchrun launch (rank 0 writes the outputs).

    Returns:
        Totals for the manifest (final loss, steps, samples, samples/s).
    """
    out_dir = Path(out_dir)
    cfg = spec.train
    items = read_items(Path(data_dir) / "items.parquet")
    base = Base(items.title.astype(str).tolist(), spec.model, spec.prompt, catalog_file)
    torch.manual_seed(cfg.seed)
    store = SequenceStore(data_dir, max_history=cfg.max_history)
    h = head(cfg.head)
    model = h.model(base, cfg, trained=True)
    objective = h.objective(store, base, cfg)
    if init_from is not None and latest_checkpoint(out_dir / "checkpoints") is None:
        load_init(model, Path(init_from) / "trainable.pt", cfg)
    probes = cfg.curve_every_s and (dist.is_main or dist.sharded)  # under FSDP every rank takes part in a probe
    probe = _val_probe(items, spec, base, model, data_dir) if probes else None
    result = fit(model, objective, cfg, out_dir, dist=dist, progress=progress, probe=probe)
    if dist.is_main:
        final = out_dir / BEST if cfg.keep_best else latest_checkpoint(out_dir / "checkpoints") / "trainable.pt"
        with atomic_path(out_dir / "trainable.pt") as tmp:
            shutil.copyfile(final, tmp)
        base.tok.save_pretrained(out_dir / "tokenizer")
        write_json(result.to_dict(), out_dir / "training.json")
    metrics = {"final_loss": result.final_loss, "steps": float(result.steps), "samples": float(result.samples),
               "samples_per_s": result.samples_per_s, "train_seconds": result.seconds}
    if result.best:
        metrics.update(kept_step=float(result.best["step"]), kept_val_ndcg_10=result.best["val_ndcg_10"])
    return StageOutput(metrics=metrics)


def load_init(model, path: Path, cfg: TrainConfig) -> None:
    """Start from another run's `trainable.pt` (a PPT run or a champion), as the stage's head reads it."""
    state = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)  # read once
    head(cfg.head).load_init(model, path, state)


def _val_probe(items, spec: RunSpec, base: Base, model, data_dir: Path) -> Probe:
    """Validation NDCG@10 and HR@20 of the model being trained, on a fixed sample (the learning curve)."""
    from patchrec.evaluation.metrics import first_ranks, summarize_ranks

    runtime = Runtime(items, spec, base, model)
    store = SequenceStore(data_dir, max_history=runtime.max_history)
    idx = sample_split(store, "val", spec.train.curve_samples, spec.train.seed)
    samples = [store.sample(int(i)) for i in idx]

    def probe(_model) -> dict[str, float]:
        with torch.autocast(runtime.device.type, dtype=torch.bfloat16, enabled=use_bf16(spec.train.bf16)):
            runtime.refresh()
            got = runtime.ranker().rank_many([h for h, _ in samples], 20)
        ranks = first_ranks([g.items for g in got], [t for _, t in samples])
        m = summarize_ranks(ranks, store.sample_user[idx])
        return {"val_ndcg_10": m["ndcg_10"], "val_hr_20": m["hr_20"]}

    return probe
