"""Training and evaluation tasks: paths and configs in, small result records out. No retries: a failed
training step is not an I/O hiccup, and resuming from the last checkpoint is explicit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from patchrec.config import EvalConfig, ModelConfig, TrainConfig
from patchrec.prompts import PromptConfig

__all__ = ["train_stage", "evaluate_run"]


@task(name="train-stage", cache_policy=NO_CACHE)
def train_stage(data_dir: Path, out_dir: Path, tcfg: TrainConfig, mcfg: ModelConfig, prompt: PromptConfig,
                init_from: Path | None = None) -> dict[str, Any]:
    """Run one PPT / PFT / SFT stage into `out_dir`; returns its meta record."""
    from patchrec.stages import train

    return train(data_dir, out_dir, tcfg, mcfg, prompt, init_from=init_from)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_run(data_dir: Path, run_dir: Path | None, out_dir: Path, ecfg: EvalConfig, mcfg: ModelConfig,
                 prompt: PromptConfig, tcfg: TrainConfig) -> dict[str, Any]:
    """Constrained ranking of a split with the run's layout; returns eval.json's content."""
    from patchrec.stages import evaluate

    return evaluate(data_dir, run_dir, out_dir, ecfg, mcfg, prompt, tcfg)
