"""The pipeline's typed configuration: named profiles and dotted overrides.

A profile is a complete `PipelineConfig` for one dataset and budget. Overrides are `{"pft.lr": 1e-4}`-style
dotted keys (`parse_overrides` reads them from `key=value` text) applied before validation, so a typo fails
loudly. Relative raw-data paths resolve against the project root (the source tree; the working folder when
installed); every output goes under the state folder (`PATCHREC_STATE`, default `<project>/.state`).
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from patchrec.config import DataConfig, EvalConfig, LaunchConfig, ModelConfig, SASRecConfig, TrainConfig, load_source
from patchrec.prompts import PromptConfig

__all__ = ["PROFILES", "PROJECT_ROOT", "SCORING_RECIPE", "TEXT_LEVERS", "TEXT_RECIPE", "PipelineConfig",
           "RegistryConfig", "flatten", "load_pipeline", "model_identity", "parse_overrides", "state_path"]


def _project_root() -> Path:
    """The source tree when running from one (it has pyproject.toml), else the working folder."""
    tree = Path(__file__).resolve().parents[1]
    return tree if (tree / "pyproject.toml").is_file() else Path.cwd()


PROJECT_ROOT = _project_root()


class RegistryConfig(BaseModel):
    """How a new model version is named and when it replaces the champion."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
                             description="registered model name (also a folder name); default patchrec-<dataset>")
    metric: str = Field("ndcg_10", pattern=r"^((masked_)?(user_)?(hr|ndcg)_(1|5|10|20)|paper_lenient_hr_(5|10|20))$",
                        description="validation metric compared for promotion (higher is better), e.g. ndcg_10")
    margin: float = Field(0.0, ge=-1, le=1, description="promote when challenger >= champion + margin")
    min_val_samples: int = Field(30, ge=1, description="a version evaluated on fewer validation targets is "
                                 "registered but never promoted (its metric is noise)")
    max_history: int = Field(200, ge=1, description="longest history the served model accepts")
    max_rows: int = Field(64, ge=1, description="histories per request the served model accepts")
    max_request_bytes: int = Field(1 << 20, ge=1024, description="request body size `patchrec serve` accepts")


class PipelineConfig(BaseModel):
    """Everything one `full-pipeline` or `nightly-retrain` run needs."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    profile: str
    dataset: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")
    state_dir: Path
    data: DataConfig
    model: ModelConfig
    prompt: PromptConfig = PromptConfig()
    ppt: TrainConfig | None = Field(None, description="patch pre-training; None = fine-tune directly")
    pft: TrainConfig
    val: EvalConfig
    test: EvalConfig
    registry: RegistryConfig = RegistryConfig()
    baselines: tuple[Literal["popularity", "sasrec"], ...] = Field(
        (), description="ID-based baselines trained and evaluated on the same split (test sample as `test`)")
    sasrec: SASRecConfig = SASRecConfig()
    warm_start: bool = Field(True, description="nightly: fine-tune from the champion instead of from scratch")
    launch: LaunchConfig = Field(LaunchConfig(), description="training and evaluation in this process, or as "
                                 "torchrun ranks (nproc_per_node, nnodes, rdzv_endpoint)")

    @model_validator(mode="after")
    def _check(self) -> PipelineConfig:
        if self.val.split != "val" or self.test.split != "test":
            raise ValueError("val must evaluate split 'val' and test split 'test'")
        if self.ppt is not None and self.ppt.stage != "ppt":
            raise ValueError(f"ppt must be a PPT stage, got stage {self.ppt.stage!r}")
        if self.pft.stage == "ppt":
            raise ValueError("pft must be a PFT or SFT stage")
        return self

    @property
    def model_name(self) -> str:
        return self.registry.name or f"patchrec-{self.dataset}"

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs" / self.dataset

    def summary(self) -> dict[str, Any]:
        """Flat params for MLflow (dotted keys, scalar values)."""
        return flatten(self.model_dump(mode="json"))


_ML100K_DATA = {"format": "movielens-100k", "raw": "../shared/data/ml-100k", "min_rating": 4.0}
_SMALL_EVAL = {"max_samples": 40, "num_beams": 20, "top_k": 20}
# The catalog scoring head's recipe: sequence-level training over windows of item patches (patchrec.heads.scoring);
# the profiles, bench.quality and bench.distributed all start from it.
SCORING_RECIPE = {"stage": "pft", "layout": "item", "head": "scoring", "context": 30, "stride": 70, "batch_size": 16,
            "lr": 1e-3, "lora_dropout": 0.0, "epochs": 100, "checkpoint_every": 25}
# The scoring head's text levers (docs/ablations.md): cosine scores, the title-similarity skip, never-target items kept
# on their title vector, same-title items not negatives.
TEXT_LEVERS = {"score": "cosine", "title_skip": "item", "cold_keep_title": True, "mask_same_title": True}
# What beat SASRec on Goodreads (docs/ablations.md): the text levers on the LM's first 8 layers, every position of
# the training prefix a target, and the title skip kept off the newest history item itself.
TEXT_RECIPE = SCORING_RECIPE | TEXT_LEVERS | {"layers": 8, "targets": "prefix", "skip_self": False}

PROFILES: dict[str, dict[str, Any]] = {
    # Seconds on a CPU: synthetic data, a random 2-layer model. For tests and deployment smoke runs.
    "tiny": {
        "dataset": "tiny",
        "data": {"format": "generic", "raw": "examples/tiny/raw", "source": "examples/tiny/source.yaml",
                 "protocol": "loo", "min_history": 2, "max_future_days": 3650.0},
        "model": {"base": "tiny", "tiny_hidden": 32, "tiny_layers": 2},
        "ppt": {"stage": "ppt", "layout": "mixed", "max_history": 20, "batch_size": 8, "lr": 5e-3,
                "checkpoint_every": 5},
        "pft": {"stage": "pft", "layout": "session", "group": 2, "max_history": 20, "batch_size": 8, "lr": 5e-3,
                "checkpoint_every": 5},
        "val": {"split": "val", "max_samples": 12, "num_beams": 10, "top_k": 10},
        "test": {"split": "test", "max_samples": 12, "num_beams": 10, "top_k": 10},
        "registry": {"max_history": 50, "min_val_samples": 10},  # a smoke run: 12 validation targets
        "baselines": ["popularity", "sasrec"],
        "sasrec": {"hidden": 16, "layers": 1, "heads": 1, "max_len": 20, "max_epochs": 3, "batch_size": 16},
    },
    # `make demo`: MovieLens-100k on SmolLM2-135M-Instruct with the catalog scoring head and its text recipe, a
    # budget that fits 10 minutes on 2 CPU cores (6 minutes of training); popularity on the same targets beside it.
    "demo": {
        "dataset": "ml-100k",
        "data": _ML100K_DATA,
        "model": {"base": "smollm2"},
        "pft": TEXT_RECIPE | {"max_seconds": 360, "curve_every_s": 120, "curve_samples": 256, "keep_best": True},
        "val": {"split": "val", "max_samples": 200},
        "test": {"split": "test", "max_samples": None},
        "baselines": ["popularity"],
    },
    # The paper's generative head at a demo budget (PPT -> PFT-S(20), 32 + 96 samples; about 9 minutes).
    "demo-generative": {
        "dataset": "ml-100k",
        "data": _ML100K_DATA,
        "model": {"base": "smollm2"},
        "ppt": {"stage": "ppt", "layout": "mixed", "textual_copy": False, "max_history": 50, "max_samples": 32,
                "lr": 5e-4},
        "pft": {"stage": "pft", "layout": "session", "group": 20, "max_history": 50, "max_samples": 96, "lr": 5e-4},
        "val": {"split": "val", "max_samples": 24},
        "test": {"split": "test", **_SMALL_EVAL},
        "registry": {"min_val_samples": 24},  # a demo budget: promotion on 24 validation targets
        "baselines": ["popularity"],
    },
    # `tiny` with the catalog scoring head (no PPT).
    "tiny-scoring": {
        "dataset": "tiny",
        "data": {"format": "generic", "raw": "examples/tiny/raw", "source": "examples/tiny/source.yaml",
                 "protocol": "loo", "min_history": 2, "max_future_days": 3650.0},
        "model": {"base": "tiny", "tiny_hidden": 32, "tiny_layers": 2},
        "pft": SCORING_RECIPE | {"context": 6, "stride": 6, "batch_size": 8, "lr": 5e-3, "epochs": 3,
                                 "checkpoint_every": 5},
        "val": {"split": "val", "max_samples": 12, "top_k": 10},
        "test": {"split": "test", "max_samples": 12, "top_k": 10},
        "registry": {"max_history": 50, "min_val_samples": 10},
        "baselines": ["popularity"],
    },
    # The method's settings on MovieLens-100k (hours on a CPU; minutes on a GPU).
    "ml-100k": {
        "dataset": "ml-100k",
        "data": _ML100K_DATA,
        "model": {"base": "smollm2"},
        "ppt": {"stage": "ppt", "layout": "mixed", "max_history": 100},
        "pft": {"stage": "pft", "layout": "session", "group": 5, "max_history": 100},
        "val": {"split": "val", "max_samples": 200},
        "test": {"split": "test", "max_samples": None},
        "baselines": ["popularity", "sasrec"],
    },
    # The catalog scoring head on MovieLens-100k, one hour of training on 2 CPU cores.
    "ml-100k-scoring": {
        "dataset": "ml-100k",
        "data": _ML100K_DATA,
        "model": {"base": "smollm2"},
        "pft": SCORING_RECIPE | {"max_seconds": 3600, "checkpoint_every": 100, "curve_every_s": 300, "keep_best": True},
        "val": {"split": "val", "max_samples": None},
        "test": {"split": "test", "max_samples": None},
        "baselines": ["popularity", "sasrec"],
    },
    # The paper's MovieLens-1M split (needs a GPU).
    "ml-1m": {
        "dataset": "ml-1m",
        "data": {"format": "patchrec-paper", "raw": "../shared/data/patchrec-paper/ml-1m"},
        "model": {"base": "smollm2"},
        "ppt": {"stage": "ppt", "layout": "mixed", "max_history": 100, "batch_size": 32},
        "pft": {"stage": "pft", "layout": "session", "group": 5, "max_history": 100, "batch_size": 32},
        "val": {"split": "val", "max_samples": 500},
        "test": {"split": "test", "max_samples": None},
        "baselines": ["popularity", "sasrec"],
    },
}


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _apply(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for key, value in overrides.items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            if node.get(p) is None:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ValueError(f"override {key!r}: {p!r} is not a section")
            node = node[p]
        node[leaf] = value
    return raw


def _resolve(path: str | Path, root: Path) -> Path:
    p = Path(os.path.expanduser(str(path)))
    return p if p.is_absolute() else (root / p).resolve()


def state_path(state_dir: str | Path | None = None) -> Path:
    """The state folder: the argument, else $PATCHREC_STATE, else <project>/.state (absolute)."""
    return _resolve(state_dir or os.environ.get("PATCHREC_STATE") or ".state", PROJECT_ROOT)


def load_pipeline(profile: str = "demo", overrides: dict[str, Any] | None = None,
                  state_dir: str | Path | None = None) -> PipelineConfig:
    """Profile + overrides -> a validated config with absolute paths. Errors name the profile or key."""
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)}")
    raw = _apply(PROFILES[profile], overrides or {})
    state = state_path(state_dir)
    data = dict(raw.get("data") or {})
    data["raw"] = _resolve(data.get("raw", ""), PROJECT_ROOT)
    data["out"] = state / "data" / str(raw.get("dataset"))
    if isinstance(data.get("source"), (str, Path)):
        data["source"] = load_source(_resolve(data["source"], PROJECT_ROOT))
    model = {"cache_dir": state / "models", **(raw.get("model") or {})}
    try:
        return PipelineConfig.model_validate({**raw, "profile": profile, "state_dir": state, "data": data,
                                              "model": model})
    except ValueError as exc:
        raise ValueError(f"profile {profile!r} with overrides {overrides or {}}: {exc}") from exc


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs; values are parsed as JSON when they can be (numbers, null, lists), else strings."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value (e.g. pft.max_samples=64), got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def model_identity(mcfg: ModelConfig) -> dict[str, Any]:
    """The parts of a model config that change results (not where the cache lives)."""
    return mcfg.model_dump(mode="json", exclude={"cache_dir"})
