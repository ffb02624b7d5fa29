"""The one result of ranking a split, for every model (both LLM heads and the baselines): `eval.json`
(an `EvalResult`, validated on read) and `ranks.parquet` (`RANK_COLUMNS`), written together by `write_result`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from patchrec.evaluation.metrics import by_history_length
from patchrec.io import atomic_path, read_json, write_json

__all__ = ["EVAL_FILE", "RANKS_FILE", "RANK_COLUMNS", "EvalResult", "read_ranks", "read_result", "write_result"]

EVAL_FILE, RANKS_FILE = "eval.json", "ranks.parquet"
RANK_COLUMNS = ("sample", "user_idx", "target", "rank", "masked_rank", "history_len", "ranked")


class EvalResult(BaseModel):
    """`eval.json`: what was ranked, by what, how fast, and the metrics."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    model: str = Field(description="the head (generative, scoring) or baseline (popularity, sasrec) that ranked")
    split: str
    samples: int = Field(ge=1)
    users_per_s: float = Field(ge=0)
    layout: str | None = Field(None, description="the LLM heads' prompt layout")
    prompt_tokens_mean: float | None = Field(None, description="the LLM heads' mean positions per ranked history")
    metrics: dict[str, float] = Field(description="HR/NDCG@K sample- and user-averaged, masked_*, lenient ones")
    by_history_length: dict[str, dict[str, float]] = Field(description="HR/NDCG@{10,20} and n per bucket")
    train: dict[str, Any] = Field(default_factory=dict, description="a baseline's training log")
    config: dict[str, Any] = Field(default_factory=dict, description="a baseline's settings")


def write_result(out_dir: Path, *, model: str, split: str, seconds: float, metrics: dict[str, float],
                 sample: np.ndarray, users: np.ndarray, targets: list[int], ranks: np.ndarray, masked: np.ndarray,
                 histories: list[np.ndarray], ranked: list[list[int]], **extra: Any) -> EvalResult:
    """Write `ranks.parquet` then `eval.json` into `out_dir` (each atomically); returns the result."""
    hist_len = np.array([len(h) for h in histories], dtype=np.int64)
    result = EvalResult(model=model, split=split, samples=len(sample), users_per_s=len(sample) / max(seconds, 1e-9),
                        metrics=metrics, by_history_length=by_history_length(ranks, hist_len), **extra)
    with atomic_path(Path(out_dir) / RANKS_FILE) as tmp:
        pd.DataFrame({"sample": sample, "user_idx": users, "target": targets, "rank": ranks, "masked_rank": masked,
                      "history_len": hist_len, "ranked": ranked}).to_parquet(tmp)
    write_json(result.model_dump(mode="json"), Path(out_dir) / EVAL_FILE)
    return result


def read_result(folder: Path) -> EvalResult:
    """The validated `eval.json` of an evaluation or baseline folder.

    Raises:
        ValueError: the file is missing or not an evaluation result (names it).
    """
    path = Path(folder) / EVAL_FILE
    try:
        return EvalResult.model_validate(read_json(path))
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: {folder} is not a finished evaluation") from None
    except ValidationError as exc:
        raise ValueError(f"{path} is not an evaluation result: {str(exc).splitlines()[0]}") from exc


def read_ranks(folder: Path) -> pd.DataFrame:
    """`ranks.parquet` of an evaluation or baseline folder, with its columns checked."""
    ranks = pd.read_parquet(Path(folder) / RANKS_FILE)
    if tuple(ranks.columns) != RANK_COLUMNS:
        raise ValueError(f"{Path(folder) / RANKS_FILE} has columns {list(ranks.columns)}, expected {RANK_COLUMNS}")
    return ranks
