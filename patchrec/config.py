"""Typed, frozen configuration. Defaults live here; YAML files and CLI flags override them."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "FORMATS",
    "DataConfig",
    "EvalConfig",
    "GenericSource",
    "InteractionSource",
    "ItemSource",
    "KeyMapSource",
    "LaunchConfig",
    "ModelConfig",
    "SASRecConfig",
    "TableSource",
    "TrainConfig",
    "load_source",
]

Format = Literal[
    "movielens-100k", "movielens-dat", "movielens-csv", "amazon-json", "recbole", "recbole-benchmark", "generic",
    "patchrec-paper",
]
FORMATS: tuple[str, ...] = get_args(Format)


class _Frozen(BaseModel):
    """Frozen, no unknown keys, and no NaN or infinity in any float field (each field declares its range)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class TableSource(_Frozen):
    """One logical table of a generic source: delimited text or Parquet files, by glob."""

    path: list[str] = Field(min_length=1, description="file names or globs, relative to the raw folder")
    delimiter: str = ","
    header: bool = True
    names: list[str] | None = Field(None, description="column names when the file has no header")
    encoding: Literal["utf-8", "latin-1", "utf-16"] = "utf-8"

    @model_validator(mode="before")
    @classmethod
    def _one_path(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("path"), str):
            data = {**data, "path": [data["path"]]}
        return data


class InteractionSource(TableSource):
    user: str
    item: str
    time: str
    rating: str | None = None
    time_unit: Literal["s", "ms", "iso"] = "s"


class ItemSource(TableSource):
    id: str
    title: str
    extra: str | None = Field(None, description="column kept as the item's extra text")


class KeyMapSource(TableSource):
    """Maps the item ids used in interactions (`source`) to the items table's ids (`target`)."""

    source: str
    target: str


class GenericSource(_Frozen):
    interactions: InteractionSource
    items: ItemSource
    item_map: KeyMapSource | None = None
    numeric_ids: bool = False


class DataConfig(_Frozen):
    """Everything `prepare-data` needs: where raw data is, how to read it, how to split it."""

    format: Format
    raw: Path
    out: Path
    protocol: Literal["auto", "paper", "loo", "given"] = Field(
        "auto", description="auto = the split given by the source when it has one, else paper"
    )
    min_rating: float | None = Field(None, ge=-1e9, le=1e9,
                                     description="keep events with rating >= this (positive feedback)")
    kcore: int = Field(0, ge=0, description="iteratively keep users and items with >= k events (0 = off)")
    max_history: int = Field(100, ge=1)
    min_history: int = Field(3, ge=1, description="a target needs at least this many earlier items")
    split_ratios: tuple[float, float, float] = Field((0.96, 0.02, 0.02), description="train / val / test shares")
    max_future_days: float = Field(1.0, ge=0, le=36500, description="events later than now + this many days are "
                                   "quarantined")
    min_time: dt.date | None = Field(
        None, description="events before this date are quarantined (default 1995-01-01; generic sources: 1970-01-01)"
    )
    max_abs_rating: float = Field(1e9, gt=0, le=1e18, description="ratings beyond +-this are quarantined as absurd")
    max_line_bytes: int = Field(2 * 1024 * 1024, ge=1024)
    memory_limit: str = Field("384MB", description="DuckDB's buffer cap for ingestion and sequence building (it "
                              "spills to disk beyond it): peak memory stays flat in the number of events")
    rebuild: bool = Field(False, description="discard earlier ingestion state and ingest every file again")
    source: GenericSource | None = None

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if abs(sum(self.split_ratios) - 1.0) > 1e-9 or min(self.split_ratios) < 0 or self.split_ratios[0] == 0:
            raise ValueError(f"split_ratios must be non-negative, with a train share above 0, and sum to 1, got "
                             f"{self.split_ratios}")
        if self.format == "generic" and self.source is None:
            raise ValueError("format 'generic' needs a source mapping (--source-config FILE)")
        if self.format != "generic" and self.source is not None:
            raise ValueError(f"a source mapping is only used with format 'generic', not {self.format!r}")
        raw, out = Path(self.raw).resolve(), Path(self.out).resolve()
        generations = out.parent / f"{out.name}.generations"
        for path in (out, generations):
            if path == raw or raw in path.parents:
                raise ValueError(f"out {self.out} writes inside raw {self.raw} ({path}): the next run would ingest "
                                 "its own outputs; choose an out folder outside raw")
        if out in raw.parents:
            raise ValueError(f"raw {self.raw} is inside out {self.out}: choose an out folder outside raw")
        return self


def load_source(path: Path) -> GenericSource:
    """Read a generic source mapping from YAML; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"source config {path} does not exist")
    import yaml  # here, not at the top: 10 ms of every start (ml-100k's whole ingest is 0.5 s)

    try:
        return GenericSource.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))
    except Exception as exc:  # pydantic or YAML error: say which file
        raise ValueError(f"invalid source config {path}: {exc}") from exc


_HEAD_STAGES = {"generative": {"ppt", "pft", "sft"}, "scoring": {"pft"}}  # the heads of `patchrec.heads`


class TrainConfig(_Frozen):
    """One training stage. Generative head (the paper's): PPT = mixed layout with the curriculum
    p = step / total_steps; PFT-I = layout 'item' (last k items as text); PFT-S = layout 'session' (group
    size G); SFT = layout 'text'. Scoring head (`head: scoring`, stage pft): sequence-level training over
    windows of item patches ('item') or item patches after `sessions` session patches ('session')."""

    stage: Literal["ppt", "pft", "sft"] = Field(description="patch pre-training, patch fine-tuning or plain SFT")
    layout: Literal["text", "item", "session", "mixed"] = Field(
        description="ppt: mixed; pft: item (PFT-I) or session (PFT-S); sft: text")
    head: Literal["generative", "scoring"] = Field("generative", description="the ranking head (patchrec.heads): "
                                                   "title decoding (the paper's) or catalog scoring (pft)")
    k: int = Field(5, ge=0, description="PFT-I: newest items kept as text")
    group: int = Field(5, ge=1, description="PFT-S: items per session patch (G)")
    textual_copy: bool = Field(True, description="PPT: also train on the all-text copy of each sample")
    max_history: int = Field(100, ge=1, description="newest history items in a prompt")
    max_samples: int | None = Field(None, ge=1, description="budget: train on this many samples (first epoch order)")
    epochs: int = Field(1, ge=1, description="passes over the training targets (a time budget may end it first)")
    batch_size: int = Field(8, ge=1, description="samples (or scoring windows) per micro-batch")
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer step")
    lr: float = Field(1e-4, gt=0, le=10, description="peak learning rate (warmup, then cosine decay)")
    weight_decay: float = Field(0.0, ge=0, le=10)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0, description="gradients are clipped to this global norm")
    finetune: Literal["lora", "full"] = Field("lora", description="LoRA adapters or every weight")
    lora_r: int = Field(8, ge=1, le=4096)
    lora_alpha: int = Field(16, ge=1, le=1 << 16)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    bf16: bool | Literal["auto"] = Field("auto", description="bf16 autocast; auto = where the hardware has native bf16")
    length_grouped: bool = True
    context: int = Field(50, ge=1, description="scoring head: item patches every target sees (at least)")
    stride: int = Field(50, ge=1, description="scoring head: target positions per window")
    sessions: int = Field(10, ge=1, description="scoring head, layout session: session patches before the items")
    item_correction: bool = Field(True, description="scoring head: learn a per-item correction of the item vectors")
    item_lr: float | None = Field(None, gt=0, le=10,
                                  description="scoring head: learning rate of the correction (default lr)")
    negatives: int | None = Field(None, ge=1, description="scoring head: sampled softmax with this many uniform "
                                  "negatives (None: full softmax over the catalog)")
    score: Literal["dot", "cosine"] = Field("dot", description="scoring head: hidden state x item vector (dot), or "
                                            "cosine of the two over `temperature` with mean-centred item vectors")
    temperature: float = Field(0.07, ge=0.01, le=1, description="scoring head, cosine: the fixed softmax temperature")
    title_skip: Literal["off", "item", "title", "both"] = Field(
        "off", description="scoring head, cosine: add a learned weight x each item's cosine to the newest history item "
        "(a skip connection around the LM: title similarity ranks cold items from the start); `item`: between the "
        "learned item vectors, `title`: between the fixed title patches (the zero-training text prior stays intact "
        "however far the correction moves), `both`: one learned weight for each (half each at start). true = item, "
        "false = off")
    skip_self: bool = Field(True, description="scoring head, title_skip: the skip also lifts the newest history "
                            "item itself (its cosine to itself is 1); false: only the items like it (a repeat is "
                            "then the LM term's call)")
    item_bias: bool = Field(False, description="scoring head: a learned per-item logit bias (zero at start): the "
                            "popularity that a cosine score cannot express; it trains with item_lr and item_decay, "
                            "and with cold_keep_title a never-target item's bias stays 0")
    item_decay: float = Field(0.0, ge=0, le=100, description="scoring head: decoupled weight decay of the per-item "
                              "correction (keeps rarely trained and cold items near their title vector)")
    cold_keep_title: bool = Field(False, description="scoring head: items that are never a training target get no "
                                  "correction and keep their title vector (their gradient rows are zeroed: Adam "
                                  "would otherwise move every never-target item down at full speed)")
    mask_same_title: bool = Field(False, description="scoring head: other items with the target's title are not "
                                  "training negatives")
    targets: Literal["samples", "prefix"] = Field(
        "samples", description="scoring head: train on the train split's samples (targets with at least "
        "min_history earlier items), or `prefix`: on every position of each user's training prefix (from the second "
        "item to the last train target, val/test targets excepted), as SASRec trains")
    compile_lm: bool = Field(False, description="scoring head: torch.compile the LM body for training steps (fused "
                             "kernels; the one-off compile, minutes on a CPU, counts against the time budget)")
    pack: bool = Field(True, description="scoring head: pack windows and ranking histories several to a row "
                       "(block-diagonal attention) instead of padding each to the longest")
    layers: int | None = Field(None, ge=1, description="scoring head: keep only the LM's first this many transformer "
                               "layers (faster steps: more epochs in a budget)")
    max_seconds: float | None = Field(None, gt=0, description="wall-clock training budget; the schedule follows it")
    curve_every_s: float | None = Field(None, gt=0, description="probe validation metrics every this many "
                                        "training seconds (the learning curve)")
    curve_samples: int = Field(256, ge=1, description="validation targets per probe")
    keep_best: bool = Field(False, description="keep the weights of the best validation NDCG@10 probe instead of "
                            "the last step (early stopping on validation, as SASRec does); needs curve_every_s")
    checkpoint_every: int = Field(50, ge=1)
    keep_checkpoints: int = Field(2, ge=1, description="complete checkpoints kept (the newest ones)")
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @field_validator("title_skip", mode="before")
    @classmethod
    def _skip_from_bool(cls, v: Any) -> Any:
        return ("item" if v else "off") if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _check_stage(self) -> TrainConfig:
        allowed = {"ppt": {"mixed"}, "pft": {"item", "session"}, "sft": {"text"}}[self.stage]
        if self.layout not in allowed:
            raise ValueError(f"stage {self.stage!r} uses layout {sorted(allowed)}, not {self.layout!r}")
        if self.keep_best and not self.curve_every_s:
            raise ValueError("keep_best selects among validation probes: set curve_every_s too")
        if self.title_skip != "off" and self.score != "cosine":
            raise ValueError("title_skip adds a cosine similarity: set score='cosine' too")
        if self.stage not in _HEAD_STAGES[self.head]:
            raise ValueError(f"the {self.head} head trains in stage(s) {sorted(_HEAD_STAGES[self.head])}, not "
                             f"{self.stage!r}")
        return self


class LaunchConfig(_Frozen):
    """Where a training or evaluation stage runs: in this process, or as `torchrun` ranks (DDP or FSDP; gloo on
    CPUs, nccl on GPUs). Not part of any fingerprint: the same global batches give the same result at any world
    size, so a run may resume with another one."""

    nproc_per_node: int = Field(1, ge=1, description="ranks per node (1 and nnodes 1: no torchrun)")
    nnodes: int = Field(1, ge=1)
    rdzv_endpoint: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+:[0-9]{1,5}$",
                                      description="host:port of the c10d rendezvous (needed when nnodes > 1)")
    max_restarts: int = Field(0, ge=0, description="times torchrun restarts every rank after one fails; the "
                              "ranks resume from the newest checkpoint")
    sharding: Literal["ddp", "fsdp"] = Field("ddp", description="training ranks hold the whole model (ddp) or "
                                             "a shard of its weights, gradients and optimizer state (fsdp: for "
                                             "bases that do not fit one device); evaluation ranks hold it whole")

    @property
    def world(self) -> int:
        return self.nproc_per_node * self.nnodes

    @model_validator(mode="after")
    def _check(self) -> LaunchConfig:
        if self.nnodes > 1 and self.rdzv_endpoint is None:
            raise ValueError("several nodes meet at a rendezvous: set rdzv_endpoint (host:port)")
        return self


class ModelConfig(_Frozen):
    """The base model: 'smollm2' (the embedded default), 'tiny' (random, offline, for tests) or a local folder."""

    base: str = "smollm2"
    cache_dir: Path = Path(".state/models")
    tiny_hidden: int = Field(64, ge=8, le=4096, multiple_of=4, description="tiny base: hidden size")
    tiny_layers: int = Field(2, ge=1, le=64, description="tiny base: transformer layers")


class EvalConfig(_Frozen):
    split: Literal["val", "test"] = "test"
    max_samples: int | None = Field(200, ge=1, description="evaluate a deterministic sample of this many targets")
    num_beams: int = Field(20, ge=1)
    top_k: int = Field(20, ge=1)
    length_penalty: float = Field(1.0, ge=-10, le=10, description="beam search: score / length ** this")
    mask_history: bool = Field(False, description="scoring head: never rank an item of the history")
    batch_size: int | None = Field(None, ge=1, description="users ranked together (default: 64 for the scoring "
                                   "head, 32 for the generative head's beam search)")
    bf16: bool | Literal["auto"] = "auto"
    seed: int = Field(0, ge=0, le=2**32 - 1)


class SASRecConfig(_Frozen):
    """SASRec baseline: causal self-attention over item ids, full-softmax CE, early stopping on val NDCG@10."""

    hidden: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(2, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    max_len: int = Field(100, ge=2)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0, le=10)
    weight_decay: float = Field(0.0, ge=0, le=10)
    max_epochs: int = Field(200, ge=1)
    max_seconds: float | None = Field(None, gt=0, description="wall-clock training budget (validation included): "
                                      "the epoch that passes it stops there, is validated and is the last")
    patience: int = Field(10, ge=1, description="stop after this many evaluations without a better val NDCG@10")
    eval_every: int = Field(1, ge=1)
    val_samples: int | None = Field(2000, ge=1, description="validation samples used for early stopping")
    seed: int = Field(0, ge=0, le=2**32 - 1)
