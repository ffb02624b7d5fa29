"""The catalog scoring head's model: sequence-level training over patch windows and exact full-catalog ranking.

Training. A user's chronological sequence is cut into windows, and one causal pass over a window
predicts every train target in it. A window serves a block of `stride` consecutive target positions
[c, c + stride): its input is, oldest first, a start token, up to `sessions` session patches (complete
groups of `group` items ending where the item patches begin) and the item patches of items
[c - context, c + stride - 1). The target at position t is predicted from the hidden state of item t - 1,
so no patch holds an item at or after a target it serves, and a target sees between `context` and
`context + stride - 1` item patches (all earlier items near the start of a sequence) plus the sessions.
The per-sample evaluation history is laid out the same way: its newest `context + stride - 1` items as
item patches and older ones as up to `sessions` sessions, one forward pass per batch of users.
Windows (and ranking histories) of different lengths are packed several to a row, each with position ids that
start again at 0, so attention stays inside a window and the batch carries little padding.

Scores. Item vector = the item's title patch (mean of its title token embeddings), plus an optional
learned per-item correction that starts at zero (decayed toward zero with `item_decay`), so an item never seen
in training still has its title's vector. Score `dot` = last hidden state x item vector; `cosine` = the cosine
of the hidden state and the mean-centred item vector over a fixed temperature, plus (`title_skip`) a learned
weight times the cosine between the newest history item and each item (of their item vectors, or with
`title_skip: title` of their fixed title patches, or both with a weight each): a skip connection around the
LM, so title similarity (sequels, series, same author) ranks items from the first step, cold ones included, and
the LM learns what the titles miss (`skip_self: false`: the newest item itself gets no skip, only the items like
it). `item_bias` adds a learned per-item logit (zero at start) to either score. Training uses a full softmax
over the catalog, or a sampled one (the batch's targets + uniform negatives) for catalogs too large for it;
`mask_same_title` drops the other items with the target's title from its negatives (a correct title is not
punished).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from patchrec.config import TrainConfig
from patchrec.data.sequences import SequenceStore
from patchrec.hardware import use_bf16
from patchrec.model import attach_trainable
from patchrec.patching import CatalogTable, item_patches, pool_units

__all__ = ["ITEM_BIAS", "ITEM_TABLE", "Layout", "Rows", "ScoringModel", "Windows", "assemble_rows", "catalog_loss",
           "history_row", "pack_rows", "packed_layout", "plan_windows", "scoring_model", "title_groups",
           "truncate_layers", "window_rows"]

ITEM_TABLE = "item_delta"  # the parameter name of the learned per-item correction
ITEM_BIAS = "item_bias"  # the parameter name of the learned per-item logit bias


@dataclass(frozen=True)
class Layout:
    """How a window or a history becomes positions: item patches, preceded by session patches."""

    context: int = 50
    stride: int = 50
    sessions: int = 0
    group: int = 5

    @classmethod
    def of(cls, cfg: TrainConfig) -> Layout:
        return cls(cfg.context, cfg.stride, cfg.sessions if cfg.layout == "session" else 0, cfg.group)

    @property
    def recent(self) -> int:
        """Item patches in a ranking history (the most any training target sees)."""
        return self.context + self.stride - 1

    @property
    def max_history(self) -> int:
        """History items a ranking uses (item patches + sessions)."""
        return self.recent + self.sessions * self.group


@dataclass(frozen=True)
class Windows:
    """Training windows as int64 columns: store row, first session item, first item patch, input end, block start.

    A window's inputs are the items [lo, hi) of its user's sequence; [lo, item_lo) form sessions.
    """

    row: np.ndarray
    lo: np.ndarray
    item_lo: np.ndarray
    hi: np.ndarray
    block: np.ndarray

    def __len__(self) -> int:
        return len(self.row)


def _sample_positions(store: SequenceStore, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(rows, flat positions) of the samples of `split`."""
    idx = store.indices(split)
    rows = np.fromiter((store.row_of_user[int(u)] for u in store.sample_user[idx]), dtype=np.int64, count=len(idx))
    return rows, store.offsets[rows] + store.sample_pos[idx]


def _target_mask(store: SequenceStore, split: str, prefix: bool = False) -> np.ndarray:
    """(total items,) bool: the item at this flat position is a target of `split`. `prefix`: also every earlier
    position of the same user from its second item on (those with fewer than min_history earlier items), except
    positions that are samples of another split: the training prefix SASRec learns from."""
    mask = np.zeros(len(store.flat), dtype=bool)
    rows, flat = _sample_positions(store, split)
    mask[flat] = True
    if prefix and len(rows):
        last = np.full(len(store.offsets) - 1, -1, dtype=np.int64)
        np.maximum.at(last, rows, flat)
        has = np.flatnonzero(last >= 0)
        lengths = last[has] - store.offsets[has]  # positions 1..last of each row
        starts = np.repeat(store.offsets[has] + 1, lengths)
        mask[starts + np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)] = True
        for other in set(np.unique(store.sample_split).tolist()) - {split}:
            mask[_sample_positions(store, other)[1]] = False
    return mask


def plan_windows(store: SequenceStore, layout: Layout, split: str = "train",
                 prefix: bool = False) -> tuple[Windows, np.ndarray]:
    """Every window holding at least one target of `split` (`prefix`: of its training prefix, `_target_mask`),
    and the flat target mask.

    Returns:
        The windows, and a bool array over the store's flat items: True where the item is a target.
    """
    is_target = _target_mask(store, split, prefix)
    cols: list[tuple[int, int, int, int, int]] = []
    for row in range(len(store.offsets) - 1):
        s, e = int(store.offsets[row]), int(store.offsets[row + 1])
        mask = is_target[s:e]
        if not mask.any():
            continue
        for c in range(0, e - s, layout.stride):
            end = min(c + layout.stride, e - s)
            if not mask[c:end].any():
                continue
            item_lo = max(0, c - layout.context)
            n_sessions = min(layout.sessions, item_lo // layout.group)
            cols.append((row, item_lo - n_sessions * layout.group, item_lo, end - 1, c))
    arr = np.array(cols, dtype=np.int64).reshape(-1, 5)
    return Windows(*arr.T), is_target


@dataclass
class Rows:
    """A batch of assembled rows: one per window or history (right padding), or several windows packed into one
    row, each starting again at position 0 (block-diagonal causal attention, no padding in between)."""

    inputs_embeds: Tensor  # (B, S, D)
    attention_mask: Tensor | None  # (B, S); None when packed (the position ids mark where each window starts)
    lengths: Tensor  # (W,) positions of each window / history
    starts: Tensor  # (W,) flat index (into B * S) of each window's position 0
    position_ids: Tensor | None = None  # (B, S) when packed
    loss_w: Tensor | None = None  # (n,) window of each loss position
    loss_s: Tensor | None = None  # (n,) its position inside the window
    targets: Tensor | None = None  # (n,) target item index
    prev: Tensor | None = None  # (n,) or (W,) newest item before each loss position / window end (-1: none)
    compressed: float = 0.0  # share of input items inside session patches

    @property
    def loss_at(self) -> Tensor:
        """(n,) flat index (into B * S) of every loss position."""
        return self.starts[self.loss_w] + self.loss_s

    @property
    def last_at(self) -> Tensor:
        """(W,) flat index of every window's last position."""
        return self.starts + self.lengths - 1


PACK_SPANS = (1.0, 1.5, 2.0)  # packed rows tried: up to this many times the batch's longest window


def pack_rows(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """First-fit decreasing: the (row, offset) of every window of `lengths` positions in rows of `capacity`."""
    row, offset = np.zeros(len(lengths), dtype=np.int64), np.zeros(len(lengths), dtype=np.int64)
    used: list[int] = []
    for w in np.argsort(-lengths, kind="stable"):
        n = int(lengths[w])
        r = next((r for r, u in enumerate(used) if u + n <= capacity), len(used))
        if r == len(used):
            used.append(0)
        row[w], offset[w] = r, used[r]
        used[r] += n
    return row, offset


def packed_layout(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (row, offset) of every window in the packing with the fewest positions (rows x the fullest row) among
    rows of `PACK_SPANS` x the longest window; never more than padding each window to the longest."""
    longest = int(lengths.max())
    layouts = [pack_rows(lengths, int(span * longest)) for span in PACK_SPANS]
    return min(layouts, key=lambda ro: (int(ro[0].max()) + 1) * int((ro[1] + lengths).max()))


def history_row(hist: np.ndarray, layout: Layout) -> tuple[np.ndarray, int]:
    """A ranking history (oldest first) as (items used, number of sessions) in the training layout."""
    hist = np.asarray(hist, dtype=np.int64)
    recent = min(len(hist), layout.recent)
    n_sessions = min(layout.sessions, (len(hist) - recent) // layout.group)
    return hist[len(hist) - recent - n_sessions * layout.group:], n_sessions


def assemble_rows(rows: list[tuple[np.ndarray, int]], vectors: Tensor, start: Tensor, group: int,
                  pack: bool = False) -> Rows:
    """Rows of (items oldest first, number of leading sessions) -> input embeddings, one index_add for all.

    Position 0 of each row is `start`; then one position per session (mean of its `group` item vectors),
    then one per item. Item vectors come from `vectors` (N, D), so gradients reach them. `pack`: windows share
    rows (`packed_layout`), with position ids that restart at each window: the LM attends within a window only
    (transformers' packed-sequence masks), and no position is padding in between.
    """
    dev = vectors.device
    n_pos = np.array([1 + s + len(items) - s * group for items, s in rows], dtype=np.int64)
    D = vectors.shape[1]
    if pack:
        row, offset = packed_layout(n_pos)
    else:
        row, offset = np.arange(len(rows)), np.zeros(len(rows), dtype=np.int64)
    B, S = int(row.max()) + 1, int((offset + n_pos).max())
    starts = row * S + offset
    pos, flat_items = [], []
    for w, (items, s) in enumerate(rows):
        k = np.arange(len(items))
        unit = np.where(k < s * group, k // group, s + k - s * group)
        pos.append(starts[w] + 1 + unit)
        flat_items.append(items)
    pos_t = torch.from_numpy(np.concatenate(pos)).to(dev)
    items_t = torch.from_numpy(np.concatenate(flat_items).astype(np.int64)).to(dev)
    embeds = pool_units(vectors, items_t, pos_t, B * S)
    is_start = torch.zeros(B * S, 1, dtype=torch.bool, device=dev)
    is_start[torch.from_numpy(starts).to(dev)] = True
    embeds = torch.where(is_start, start.to(vectors.dtype), embeds).view(B, S, D)
    lengths = torch.from_numpy(n_pos).to(dev)
    mask, position_ids = None, None
    if pack:
        ids = np.tile(np.arange(S, dtype=np.int64), (B, 1))  # the tail of a row continues its last window
        for w in range(len(rows)):
            ids[row[w], offset[w] : offset[w] + n_pos[w]] = np.arange(n_pos[w])
        position_ids = torch.from_numpy(ids).to(dev)
    else:
        mask = (torch.arange(S, device=dev)[None, :] < lengths[:, None]).long()
    compressed = sum(s * group for _, s in rows) / max(1, sum(len(i) for i, _ in rows))
    prev = torch.tensor([int(items[-1]) if len(items) else -1 for items, _ in rows], dtype=torch.long, device=dev)
    return Rows(embeds, mask, lengths, torch.from_numpy(starts).to(dev), position_ids, prev=prev,
                compressed=compressed)


def window_rows(store: SequenceStore, windows: Windows, picks: np.ndarray, is_target: np.ndarray, vectors: Tensor,
                start: Tensor, layout: Layout, pack: bool = True) -> Rows:
    """Assemble the windows `picks` with a loss position at every item patch whose next item is a target
    (`pack`: several windows to a row, see `assemble_rows`)."""
    rows, lb, ls, tg, pv = [], [], [], [], []
    for b, w in enumerate(picks):
        off = int(store.offsets[windows.row[w]])
        lo, item_lo, hi, block = (int(windows.lo[w]), int(windows.item_lo[w]), int(windows.hi[w]),
                                  int(windows.block[w]))
        n_sessions = (item_lo - lo) // layout.group
        rows.append((store.flat[off + lo : off + hi].astype(np.int64), n_sessions))
        nxt = np.arange(max(item_lo, block - 1), hi) + 1  # targets predicted from item patches, inside the block
        nxt = nxt[is_target[off + nxt]]
        lb.append(np.full(len(nxt), b))
        ls.append(1 + n_sessions + (nxt - 1 - item_lo))
        tg.append(store.flat[off + nxt].astype(np.int64))
        pv.append(store.flat[off + nxt - 1].astype(np.int64))
    out = assemble_rows(rows, vectors, start, layout.group, pack)
    dev = vectors.device
    out.loss_w = torch.from_numpy(np.concatenate(lb)).to(dev)
    out.loss_s = torch.from_numpy(np.concatenate(ls)).to(dev)
    out.targets = torch.from_numpy(np.concatenate(tg)).to(dev)
    out.prev = torch.from_numpy(np.concatenate(pv)).to(dev)
    return out


def title_groups(catalog: CatalogTable) -> Tensor:
    """(N,) long: one id per distinct title token sequence (items sharing a title share it)."""
    key = torch.cat([catalog.title_len[:, None], catalog.title_ids], dim=1)
    return torch.unique(key, dim=0, return_inverse=True)[1]


class ScoringModel(nn.Module):
    """A causal LM body scoring the catalog: hidden state against (title patch + learned correction).

    Args:
        lm: the causal LM with its trainable weights attached (LoRA or full).
        patches: (N, D) item patches of the catalog (kept fixed).
        start_id: the token whose embedding opens every row.
        correction: learn a per-item correction of the item vectors (zero at start).
        score: "dot" or "cosine" (see the module doc).
        temperature: the cosine scores' fixed temperature.
        title_skip: "off", or add a learned weight x the cosine to the newest history item (cosine only): between
            the item vectors ("item"), the fixed title patches ("title"), or both with a weight each ("both"; half
            each at start, so the first scores equal the single skips').
        groups: (N,) title group of every item, for `mask_same_title` (None: no masking).
        skip_self: the skip also scores the newest history item itself (its cosine to itself is 1); False: the
            skip adds nothing to that one item, so title similarity lifts the items like it, not the item itself.
        item_bias: learn a per-item logit bias (zero at start), added after the temperature.
    """

    def __init__(self, lm: nn.Module, patches: Tensor, start_id: int, correction: bool = True,
                 score: str = "dot", temperature: float = 0.07, title_skip: str = "off",
                 groups: Tensor | None = None, skip_self: bool = True, item_bias: bool = False):
        super().__init__()
        self.lm = lm
        self.register_buffer("patches", patches.detach().clone(), persistent=False)
        self.register_buffer("centre", patches.detach().float().mean(0), persistent=False)
        self.register_buffer("groups", None if groups is None else groups.clone(), persistent=False)
        self.item_delta = nn.Parameter(torch.zeros_like(self.patches)) if correction else None
        self.item_bias = nn.Parameter(torch.zeros(self.patches.shape[0])) if item_bias else None
        # the skip's weight, in units of the LM term's (1 at start: title similarity and LM count alike); with
        # "both", `title_skip` weighs the item-vector cosine and `title_patch_skip` the title-patch one
        both = title_skip == "both"
        self.title_skip = nn.Parameter(torch.full((), 0.5 if both else 1.0)) if title_skip != "off" else None
        self.title_patch_skip = nn.Parameter(torch.full((), 0.5)) if both else None
        self.skip_on_titles = title_skip == "title"
        self.skip_self = skip_self
        self.register_buffer("title_units", nn.functional.normalize(self.patches.float() - self.centre, dim=-1)
                             if title_skip in ("title", "both") else None, persistent=False)
        self.start_id, self.score, self.temperature = start_id, score, temperature
        self.bf16_weights = False  # frozen weights stored in bf16: run under bf16 autocast
        self.compile_lm = False  # training steps run a torch.compile'd LM body and loss (`fast`)
        self._compiled: dict[str, nn.Module] = {}  # kept out of the module tree: no second copy in the state dict

    def item_vectors(self) -> Tensor:
        """(N, D): the vector of every catalog item (the LM's input patch and, for `dot`, the output scorer)."""
        return self.patches if self.item_delta is None else self.patches + self.item_delta

    def output_vectors(self) -> Tensor:
        """(N, D) fp32: what a hidden state is scored against (unit-norm, mean-centred for `cosine`)."""
        v = self.item_vectors().float()
        return v if self.score == "dot" else nn.functional.normalize(v - self.centre, dim=-1)

    def logits(self, h: Tensor, prev: Tensor | None, items: Tensor | slice | None = None,
               out: Tensor | None = None) -> Tensor:
        """(n, D) hidden states, (n,) newest earlier item (-1: none) -> (n, N) scores (or of `items` only: indices
        or a slice of the catalog). `out`: `output_vectors()` when the caller already has them."""
        out = self.output_vectors() if out is None else out
        cand = out if items is None else out[items]
        h = h.float()
        if self.score == "dot":
            return self._biased(h @ cand.T, items)
        scores = nn.functional.normalize(h, dim=-1) @ cand.T
        if self.title_skip is not None and prev is not None:
            has = (prev >= 0).to(scores.dtype)[:, None]  # (n, 1)
            if not self.skip_self:  # the newest item's cosine to itself (1) is no evidence that it comes next
                has = has * (self._candidate_ids(items, cand.shape[0], prev.device)[None, :] != prev[:, None])
            last = prev.clamp(min=0)
            for weight, space in ((self.title_skip, self.title_units if self.skip_on_titles else out),
                                  (self.title_patch_skip, self.title_units)):
                if weight is not None:
                    other = space if items is None else space[items]
                    scores = scores + weight * has * (space[last] @ other.T)
        return self._biased(scores / self.temperature, items)

    def _biased(self, scores: Tensor, items: Tensor | slice | None) -> Tensor:
        """`scores` plus the per-item bias of the scored candidates (as they are without `item_bias`)."""
        if self.item_bias is None:
            return scores
        return scores + (self.item_bias if items is None else self.item_bias[items])

    @staticmethod
    def _candidate_ids(items: Tensor | slice | None, n: int, dev: torch.device) -> Tensor:
        """(n,) the catalog index of every scored candidate."""
        if isinstance(items, Tensor):
            return items
        first = 0 if items is None else (items.start or 0)
        return torch.arange(first, first + n, device=dev)

    def start(self) -> Tensor:
        """(D,): the embedding of the token that opens every row. Under LoRA it is a trainable row of PEFT's
        token adapter, read directly: calling the wrapped embedding would merge (copy) the whole vocabulary table
        at every step, and its backward would zero and fill a gradient of that size."""
        emb = self.lm.get_input_embeddings()
        adapter = getattr(emb, "token_adapter", None)
        if adapter is None:
            return emb.weight[self.start_id]
        if not adapter.merged and not adapter.disable_adapters:
            for name in reversed(adapter.active_adapters):  # as PEFT merges them: the last one's row wins
                if self.start_id in (idx := adapter.token_indices[name]):
                    return adapter.trainable_tokens_delta[name][idx.index(self.start_id)]
        return adapter.base_layer.weight[self.start_id]

    def fast(self, name: str, fn):
        """`fn`, or with `compile_lm` in a training step its torch.compile'd twin (dynamic shapes: packed batches
        differ in rows, length and targets; ranking and probes run the plain code)."""
        if not (self.compile_lm and self.training and torch.is_grad_enabled()):
            return fn
        if name not in self._compiled:
            self._compiled[name] = torch.compile(fn, dynamic=True)
        return self._compiled[name]

    def body(self) -> nn.Module:
        """The LM's transformer body (compiled for training steps with `compile_lm`)."""
        lm = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        return self.fast("body", lm.model)

    def hidden(self, rows: Rows) -> Tensor:
        """(B, S, D) last hidden states (after the final norm)."""
        # no KV cache: with one, transformers would not read packed windows from the position ids
        return self.body()(inputs_embeds=rows.inputs_embeds, attention_mask=rows.attention_mask,
                        position_ids=rows.position_ids, use_cache=False).last_hidden_state

    def states(self, rows: Rows, at: Tensor) -> Tensor:
        """(n, D) last hidden states at the flat positions `at` (`Rows.loss_at`, `Rows.last_at`)."""
        return self.hidden(rows).flatten(0, 1)[at]

    def last_scores(self, rows: Rows) -> Tensor:
        """(W, N) fp32 catalog scores after each window's / history's last position."""
        return self.logits(self.states(rows, rows.last_at), rows.prev)


def catalog_loss(model: ScoringModel, rows: Rows, negatives: int | None = None,
                 generator: torch.Generator | None = None, reduction: str = "mean",
                 mask_same_title: bool = False) -> Tensor:
    """Cross-entropy of each loss position's target (mean or sum over positions): over the whole catalog, or
    (with `negatives`) over the batch's targets plus that many uniform negatives (targets already among the
    candidates are not negatives). `mask_same_title`: the target's same-title items are not negatives.
    """
    h = model.states(rows, rows.loss_at)  # (n, D)
    n_items = model.patches.shape[0]
    if negatives is None:
        cands, labels = None, rows.targets
    else:
        drawn = torch.randint(0, n_items, (negatives,), generator=generator).to(h.device)
        cands, inverse = torch.unique(torch.cat([rows.targets, drawn]), return_inverse=True)
        labels = inverse[: len(rows.targets)]
    scored = model.fast("loss", _scored_loss)
    return scored(model, h, rows.prev, rows.targets, cands, labels, mask_same_title and model.groups is not None,
                  reduction)


def _scored_loss(model: ScoringModel, h: Tensor, prev: Tensor, targets: Tensor, cands: Tensor | None,
                 labels: Tensor, mask_same_title: bool, reduction: str) -> Tensor:
    """The cross-entropy of `catalog_loss` from the loss positions' hidden states (one compiled graph with
    `compile_lm`: the (n, N) elementwise work fuses)."""
    logits = model.logits(h, prev, cands)
    if mask_same_title:
        groups = model.groups if cands is None else model.groups[cands]
        same = groups[None, :] == model.groups[targets][:, None]
        same[torch.arange(len(labels), device=same.device), labels] = False
        logits = logits.masked_fill(same, float("-inf"))
    return nn.functional.cross_entropy(logits, labels, reduction=reduction)


def truncate_layers(lm: nn.Module, layers: int) -> None:
    """Keep the first `layers` transformer layers of a decoder LM (the rest are dropped, not skipped)."""
    body = lm.model
    have = len(body.layers)
    if layers > have:
        raise ValueError(f"layers={layers}: the base model has only {have} transformer layers")
    body.layers = body.layers[:layers]
    lm.config.num_hidden_layers = layers
    if getattr(lm.config, "layer_types", None):
        lm.config.layer_types = lm.config.layer_types[:layers]


def scoring_model(lm: nn.Module, cfg: TrainConfig, new_tokens: list[int], catalog: CatalogTable) -> ScoringModel:
    """The scoring head around a base LM: trainable weights attached (LoRA, or every transformer weight with
    the embedding table frozen: it only makes the fixed item patches), item patches from the base embeddings.

    Windows are short (about 100 positions), where plain matmul-softmax attention is faster than the fused
    kernels on a CPU (measured 1.45x per training step on 2 cores); under LoRA with bf16 the frozen weights are
    stored in bf16 so that autocast does not cast them again at every step.
    """
    lm.set_attn_implementation("eager")
    if cfg.layers is not None:
        truncate_layers(lm, cfg.layers)
    with torch.no_grad():
        patches = item_patches(lm.get_input_embeddings(), catalog.title_ids, catalog.title_len)
    lm = attach_trainable(lm, cfg, new_tokens)
    if cfg.finetune == "full":  # the head scores with item vectors: neither embedding table is trained
        lm.get_input_embeddings().weight.requires_grad_(False)
        if (out := lm.get_output_embeddings()) is not None:
            out.weight.requires_grad_(False)
    elif use_bf16(cfg.bf16):
        for p in lm.parameters():
            if not p.requires_grad:
                p.data = p.data.to(torch.bfloat16)
    model = ScoringModel(lm, patches, new_tokens[0], cfg.item_correction, cfg.score, cfg.temperature,
                         cfg.title_skip, title_groups(catalog) if cfg.mask_same_title else None, cfg.skip_self,
                         cfg.item_bias)
    model.bf16_weights = cfg.finetune == "lora" and use_bf16(cfg.bf16)
    model.compile_lm = cfg.compile_lm
    return model
