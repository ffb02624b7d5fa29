"""Flows for the method's stages: `patch-pretrain` (PPT), `patch-finetune` (PFT-I / PFT-S / SFT) and
`evaluate`; `patch-pipeline` chains PPT -> PFT -> evaluate. Each flow only calls tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from patchrec.config import EvalConfig, ModelConfig, TrainConfig
from patchrec.prompts import PromptConfig
from tasks.training import evaluate_run, train_stage

__all__ = ["patch_pretrain", "patch_finetune", "evaluate", "patch_pipeline"]


@flow(name="patch-pretrain")
def patch_pretrain(data_dir: Path, out_dir: Path, tcfg: TrainConfig, mcfg: ModelConfig,
                   prompt: PromptConfig = PromptConfig()) -> dict[str, Any]:
    return train_stage(data_dir, out_dir, tcfg, mcfg, prompt)


@flow(name="patch-finetune")
def patch_finetune(data_dir: Path, out_dir: Path, tcfg: TrainConfig, mcfg: ModelConfig,
                   prompt: PromptConfig = PromptConfig(), init_from: Path | None = None) -> dict[str, Any]:
    return train_stage(data_dir, out_dir, tcfg, mcfg, prompt, init_from)


@flow(name="evaluate")
def evaluate(data_dir: Path, run_dir: Path | None, out_dir: Path, ecfg: EvalConfig, mcfg: ModelConfig,
             tcfg: TrainConfig, prompt: PromptConfig = PromptConfig()) -> dict[str, Any]:
    return evaluate_run(data_dir, run_dir, out_dir, ecfg, mcfg, prompt, tcfg)


@flow(name="patch-pipeline", log_prints=True)
def patch_pipeline(data_dir: Path, runs_dir: Path, ppt: TrainConfig, pft: TrainConfig, ecfg: EvalConfig,
                   mcfg: ModelConfig, prompt: PromptConfig = PromptConfig()) -> dict[str, Any]:
    """PPT -> PFT (from the PPT checkpoint) -> evaluate the PFT model with its layout."""
    runs_dir = Path(runs_dir)
    patch_pretrain(data_dir, runs_dir / "ppt", ppt, mcfg, prompt)
    patch_finetune(data_dir, runs_dir / "pft", pft, mcfg, prompt, init_from=runs_dir / "ppt")
    result = evaluate(data_dir, runs_dir / "pft", runs_dir / "eval", ecfg, mcfg, pft, prompt)
    print(f"patch-pipeline: {result['metrics']}")
    return result
