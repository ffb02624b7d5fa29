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
from patchrec.data.sequences import SequenceStore
from patchrec.hardware import use_bf16
from patchrec.io import write_json
from patchrec.patching import Batch, CatalogTable, assemble, item_patches, layout_kinds
from patchrec.prompts import PromptPieces

__all__ = ["StageResult", "wrap_for_training", "batch_plan", "make_batch", "label_loss", "train_stage"]


@dataclass
class StageResult:
    out_dir: str
    steps: int
    samples: int
    final_loss: float
    samples_per_s: float
    losses: list[float]  # per optimizer step of the whole run (restored from the checkpoint on a resume)
    compressed_share: list[float]  # per optimizer step: share of history items given as patches
    first_step: int = 0  # global index of losses[0] (always 0: a resume restores the earlier steps' records)
    lrs: list[float] = field(default_factory=list)  # learning rate used by each step
    step_samples_per_s: list[float] = field(default_factory=list)  # throughput of each step

    def to_dict(self) -> dict:
        return asdict(self)


def wrap_for_training(model, cfg: TrainConfig, new_token_ids: list[int]):
    """LoRA (with the new delimiter rows trainable) or full fine-tuning."""
    if cfg.finetune == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), trainable_token_indices={"embed_tokens": new_token_ids})
    return get_peft_model(model, lcfg)


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

    Only the newest `keep` complete checkpoints beside `path` are kept; the new one is complete before
    any older one is removed.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    torch.save(_trainable(model), tmp / "trainable.pt")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "step": step,
                "torch_rng": torch.get_rng_state(), **extra}, tmp / "state.pt")
    (tmp / "COMPLETE").write_text(str(step))
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)
    done = sorted(_complete(path.parent), key=lambda p: int(p.name.split("_")[1]), reverse=True)
    for old in done[keep:]:
        shutil.rmtree(old, ignore_errors=True)


def _complete(ckpt_dir: Path) -> list[Path]:
    return [p for p in ckpt_dir.glob("step_*") if (p / "COMPLETE").is_file()] if ckpt_dir.is_dir() else []


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    return max(_complete(ckpt_dir), key=lambda p: int(p.name.split("_")[1]), default=None)


def load_trainable(model, path: Path) -> None:
    state = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in state]
    if missing:
        raise ValueError(f"{path} lacks trainable tensors {missing[:3]} (different model or stage?)")
    model.load_state_dict(state, strict=False)


def train_stage(model, store: SequenceStore, catalog: CatalogTable, pieces: PromptPieces, cfg: TrainConfig,
                out_dir: Path, max_steps: int | None = None, is_main: bool = True, progress: bool = True) -> StageResult:
    """Train `model` (already wrapped) on the train split; resumes from the newest complete checkpoint.

    `max_steps` stops early (the schedule still assumes the full run): used to simulate interruptions.
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
    result = StageResult(str(out_dir), stop, n_samples, losses[-1], n_samples / elapsed if elapsed else 0.0, losses,
                         shares, 0, lrs, speeds)
    if is_main:
        write_json(cfg.model_dump(mode="json"), out_dir / "config.json")
        write_json(result.to_dict(), out_dir / "meta.json")
    return result
