"""Shared fixtures: offline environment, small raw files in every supported format."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
for _var in ("PATCHREC_STATE", "PATCHREC_MODEL_CACHE", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "PREFECT_API_URL"):
    os.environ.pop(_var, None)  # tests write only under their temporary folders, never to .state or a live server

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def write(path: Path, text: str | bytes, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding=encoding)
    return path


def ml100k_rows(n_users: int = 6, n_items: int = 8, per_user: int = 6) -> list[tuple[int, int, int, int]]:
    """Deterministic (user, item, rating, ts) rows: user u rates items in order at ts = 1e9 + 100*u + k."""
    rows = []
    for u in range(1, n_users + 1):
        for k in range(per_user):
            item = (u + k) % n_items + 1
            rows.append((u, item, 5 if k % 2 == 0 else 3, 1_000_000_000 + 100 * u + k))
    return rows


@pytest.fixture
def ml100k_dir(tmp_path: Path) -> Path:
    """A tiny raw ml-100k folder (tab-separated u.data, latin-1 '|' u.item with '(YEAR)' titles)."""
    raw = tmp_path / "ml100k"
    write(raw / "u.data", "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in ml100k_rows()))
    flags = "|".join(["0"] * 19)
    items = [f"{i}|Movie {i} (199{i})|01-Jan-1995||http://x/{i}|{flags}\n" for i in range(1, 9)]
    items[2] = f"3|Café Society, The (1993)|01-Jan-1995||http://x/3|{flags}\n"
    write(raw / "u.item", "".join(items), encoding="latin-1")
    return raw


@pytest.fixture
def prepare(tmp_path: Path) -> Callable[..., dict]:
    """Run the library prepare-data on a raw folder; returns the summary."""
    from patchrec.config import DataConfig
    from patchrec.data.prepare import prepare_data

    def run(fmt: str, raw: Path, out: Path | None = None, **kw: object) -> dict:
        cfg = DataConfig(format=fmt, raw=raw, out=out or tmp_path / "out", **kw)
        return prepare_data(cfg)

    return run
