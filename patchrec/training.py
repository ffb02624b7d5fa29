"""One training function for PPT, PFT-I, PFT-S and SFT: label-only logits, bf16 autocast, AdamW with a
cosine schedule and warmup, gradient clipping and accumulation, atomic checkpoints and exact resume.

The loop holds no module-level state and assumes nothing about being the only process; checkpoints
and progress output go through `is_main` so a torchrun launcher can reuse it.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from patchrec.config import TrainConfig
from patchrec.contract import StageOutput
from patchrec.data.sequences import SequenceStore
from patchrec.hardware import use_bf16
from patchrec.io import atomic_path, write_json
from patchrec.model import attach_trainable, load_trainable
from patchrec.patching import Batch, CatalogTable, assemble, item_patches, layout_kinds
from patchrec.prompts import PromptPieces
from patchrec.runtime import Base, RunSpec, read_items

__all__ = ["StageResult", "batch_plan", "fit", "label_loss", "latest_checkpoint", "make_batch", "save_checkpoint",
           "train_run"]


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

    def to_dict(self) -> dict:
        return asdict(self)


def batch_plan(store: SequenceStore, cfg: TrainConfig) -> list[np.ndarray]:
    """Deterministic micro-batches of train sample indices (length-grouped within mega-batches)."""
    rng = np.random.default_rng(cfg.seed)
    base = store.indices("train")
    batches: list[np.ndarray] = []
    for _ in range(cfg.epochs):
        idx = rng.permutation(base)
        if cfg.max_samples:
            idx = idx[: cfg.max_samples]
        if cfg.length_grouped:
            lens = np.minimum(store.sample_pos[idx], cfg.max_history)
            mega = cfg.batch_size * 32
            idx = np.concatenate([c[np.argsort(-lens[s : s + mega], kind="stable")]
                                  for s, c in ((s, idx[s : s + mega]) for s in range(0, len(idx), mega))])
        chunks = [idx[s : s + cfg.batch_size] for s in range(0, len(idx), cfg.batch_size)]
        order = rng.permutation(len(chunks)) if cfg.length_grouped else np.arange(len(chunks))
        batches += [chunks[i] for i in order]
    return batches


def make_batch(store: SequenceStore, idx: np.ndarray, cfg: TrainConfig, catalog: CatalogTable, pieces: PromptPieces,
               embed, compress_prob: float, generator: torch.Generator) -> tuple[Batch, float]:
    """Assemble one micro-batch; PPT adds the all-text copy of each sample when `textual_copy`."""
    hists, targets = zip(*(store.sample(int(i)) for i in idx))
    lengths = torch.tensor([len(h) for h in hists])
    flat = torch.from_numpy(np.concatenate(hists).astype(np.int64))
    tg = torch.tensor(targets)
    kinds, groups = layout_kinds(lengths, cfg.layout, k=cfg.k, group=cfg.group, compress_prob=compress_prob,
                                 generator=generator)
    share = float((kinds != 0).float().mean())
    if cfg.stage == "ppt" and cfg.textual_copy:
        lengths, flat, tg = lengths.repeat(2), flat.repeat(2), tg.repeat(2)
        kinds = torch.cat([kinds, torch.zeros_like(kinds)])
        groups = torch.cat([groups, groups])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(lengths, 0)])
    return assemble(flat, offsets, tg, kinds, groups, catalog, pieces, embed), share


def label_loss(model, batch: Batch) -> Tensor:
    """Cross-entropy computed from logits at label positions only (not the full (B, S, V) logits)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.model(inputs_embeds=batch.inputs_embeds, attention_mask=batch.attention_mask).last_hidden_state
    b, t = torch.nonzero(batch.labels[:, 1:] != -100, as_tuple=True)  # predict token t+1 from position t
    logits = base.lm_head(hidden[b, t])  # (n_labels, V)
    return torch.nn.functional.cross_entropy(logits.float(), batch.labels[b, t + 1])


def _schedule(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _trainable(model) -> dict[str, Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, extra: dict, keep: int = 2) -> None:
    """Weights/adapter, optimizer, scheduler, RNG and data position, written to a temp dir then renamed.

    The temp folder's rename is what makes a checkpoint exist; only the newest `keep` are kept, and the
    new one is in place before any older one is removed.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(_trainable(model), tmp / "trainable.pt")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                "torch_rng": torch.get_rng_state(), **extra}, tmp / "state.pt")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    done = sorted(_checkpoints(path.parent), key=lambda p: int(p.name.split("_")[1]), reverse=True)
    for old in done[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _checkpoints(ckpt_dir: Path) -> list[Path]:
    """`step_N` folders: each was renamed into place complete (a temp folder starts with a dot)."""
    return [p for p in ckpt_dir.glob("step_*") if p.is_dir()] if ckpt_dir.is_dir() else []


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest checkpoint folder, or None."""
    return max(_checkpoints(ckpt_dir), key=lambda p: int(p.name.split("_")[1]), default=None)


def fit(model, store: SequenceStore, catalog: CatalogTable, pieces: PromptPieces, cfg: TrainConfig,
        out_dir: Path, max_steps: int | None = None, is_main: bool = True, progress: bool = True) -> StageResult:
    """Train `model` (trainable weights attached) on the train split; resumes from the newest checkpoint.

    Args:
        model: the model from `attach_trainable`.
        store: the prepared sequences and samples.
        catalog: the catalog table (item patches are recomputed from `model`'s embeddings).
        pieces: the tokenized prompt pieces.
        cfg: the stage's config.
        out_dir: the stage folder; checkpoints go to `out_dir/checkpoints`.
        max_steps: stop after this step (the schedule still assumes the whole run): simulates interruptions.
        is_main: whether this process writes checkpoints and progress output.
        progress: show a progress bar.

    Returns:
        The whole run's record (a resumed run includes the steps before the interruption).
    """
    out_dir = Path(out_dir)
    ckpt_dir = out_dir / "checkpoints"
    dev = next(model.parameters()).device
    if catalog.title_ids.device != dev:
        moved = catalog.to(dev)
        catalog.title_ids, catalog.title_len, catalog.patches = moved.title_ids, moved.title_len, moved.patches
    plan = batch_plan(store, cfg)
    total = math.ceil(len(plan) / cfg.grad_accum)
    embed = model.get_input_embeddings()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _schedule(optimizer, int(cfg.warmup_ratio * total), total)
    start = 0
    # per-step records of the whole run; a checkpoint carries them so that a resumed run reports all steps
    run: dict[str, Any] = {"losses": [], "shares": [], "lrs": [], "speeds": [], "samples": 0, "seconds": 0.0}
    if (ck := latest_checkpoint(ckpt_dir)) is not None:
        load_trainable(model, ck / "trainable.pt")
        state = torch.load(ck / "state.pt", map_location=dev, weights_only=True)  # never unpickle code
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"].cpu())
        start = state["step"]
        run = state["run"]
    if catalog.patches is None or cfg.finetune == "full":  # the table follows the (possibly resumed) embeddings
        with torch.no_grad():
            catalog.patches = item_patches(embed, catalog.title_ids, catalog.title_len)
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16(cfg.bf16))
    shares, losses, lrs, speeds = run["shares"], run["losses"], run["lrs"], run["speeds"]
    n_samples, t0, seconds0 = int(run["samples"]), time.perf_counter(), float(run["seconds"])
    stop = total if max_steps is None else min(total, max_steps)
    bar = None
    if progress and is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=stop, initial=start, desc=f"{cfg.stage}:{cfg.layout}", unit="step")
    model.train()
    for step in range(start, stop):
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        p = step / total if cfg.stage == "ppt" else 0.0
        optimizer.zero_grad(set_to_none=True)
        step_loss, step_shares, step_t0, step_n = 0.0, [], time.perf_counter(), n_samples
        lrs.append(float(scheduler.get_last_lr()[0]))
        for micro in plan[step * cfg.grad_accum : (step + 1) * cfg.grad_accum]:
            with autocast:
                batch, share = make_batch(store, micro, cfg, catalog, pieces, embed, p, gen)
                loss = label_loss(model, batch) / cfg.grad_accum
            loss.backward()
            step_loss += float(loss.detach())
            step_shares.append(share)
            n_samples += len(micro)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        scheduler.step()
        if cfg.finetune == "full":
            with torch.no_grad():
                catalog.patches = item_patches(embed, catalog.title_ids, catalog.title_len)
        loss_val = step_loss
        losses.append(loss_val)
        shares.append(float(np.mean(step_shares)))
        speeds.append((n_samples - step_n) / max(time.perf_counter() - step_t0, 1e-9))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.3f}", samples_s=f"{speeds[-1]:.1f}")
        done = step + 1
        if is_main and (done % cfg.checkpoint_every == 0 or done == stop):
            run.update(samples=n_samples, seconds=seconds0 + time.perf_counter() - t0)
            save_checkpoint(ckpt_dir / f"step_{done}", model, optimizer, scheduler, done, {"run": run},
                            keep=cfg.keep_checkpoints)
    if bar is not None:
        bar.close()
    elapsed = seconds0 + time.perf_counter() - t0
    if not losses:
        raise RuntimeError(f"{out_dir}: no training step was run (empty train split or max_steps=0)")
    return StageResult(stop, n_samples, losses[-1], n_samples / elapsed if elapsed else 0.0, losses, shares, lrs,
                       speeds)


def train_run(data_dir: Path, out_dir: Path, spec: RunSpec, init_from: Path | None = None,
              catalog_file: Path | None = None, progress: bool = True) -> StageOutput:
    """A training stage's build: fit, then write `trainable.pt`, `tokenizer/` and `training.json` (curves).

    Args:
        data_dir: a prepared data folder.
        out_dir: the stage folder (resumed from its checkpoints).
        spec: train, model and prompt configs.
        init_from: a folder with the `trainable.pt` to start from (a PPT run or a champion bundle).
        catalog_file: the catalog stage's table, to skip tokenizing the titles again.
        progress: show a progress bar.

    Returns:
        Totals for the manifest (final loss, steps, samples, samples/s).
    """
    out_dir = Path(out_dir)
    items = read_items(Path(data_dir) / "items.parquet")
    base = Base(items.title.astype(str).tolist(), spec.model, spec.prompt, catalog_file)
    torch.manual_seed(spec.train.seed)
    model = attach_trainable(base.model, spec.train, base.new_tokens)
    if init_from is not None and latest_checkpoint(out_dir / "checkpoints") is None:
        load_trainable(model, Path(init_from) / "trainable.pt")
    store = SequenceStore(data_dir, max_history=spec.train.max_history)
    result = fit(model, store, base.catalog, base.pieces, spec.train, out_dir, progress=progress)
    with atomic_path(out_dir / "trainable.pt") as tmp:
        shutil.copyfile(latest_checkpoint(out_dir / "checkpoints") / "trainable.pt", tmp)
    base.tok.save_pretrained(out_dir / "tokenizer")
    write_json(result.to_dict(), out_dir / "training.json")
    return StageOutput(metrics={"final_loss": result.final_loss, "steps": float(result.steps),
                                "samples": float(result.samples), "samples_per_s": result.samples_per_s})
