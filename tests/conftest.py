"""Shared fixtures: offline environment, small raw files in every supported format, a prepared walk dataset.

Test tiers (as torchtune splits unit from integration and recipe tests):
- unit (`make test-fast`, `pytest -m "not slow"`, about a minute): one module at a time, tiny models built in
  the test (`ModelConfig(base="tiny")`), no services; `tests/test_<module>.py` mirrors `patchrec/<module>.py`
  and `tests/data/` mirrors `patchrec/data/`.
- slow (`@pytest.mark.slow` or a module-level `pytestmark`): real processes and services: a Prefect server
  (`tests/flows/conftest.py`), whole pipelines, MLflow serving, torchrun ranks, kill / signal / concurrency tests.
- `make test` (what CI runs) = ruff + both tiers, under about 15 minutes on 2 cores.
Every test writes under its own temporary folder; nothing reaches the network (HF_HUB_OFFLINE).
"""

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
N_WALK_ITEMS = 24  # catalog size of the `data` fixture


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


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """Users walk the catalog: the next item is (current + 1) mod N, with a random skip now and then (a prepared
    folder; the scoring-head and distributed tests train on it)."""
    import numpy as np

    from patchrec.config import DataConfig, GenericSource
    from patchrec.data.prepare import prepare_data

    raw = tmp_path_factory.mktemp("raw")
    titles = [f"Film {i}" for i in range(N_WALK_ITEMS)] + ["Film 3"]  # the cold item shares a title
    write(raw / "items.csv", "id,title\n" + "".join(f"{i},{t}\n" for i, t in enumerate(titles)))
    rng = np.random.default_rng(0)
    rows = []
    for u in range(40):
        item = int(rng.integers(0, N_WALK_ITEMS))
        for j in range(int(rng.integers(20, 45))):
            rows.append((u, item, 1000 * u + j))
            item = (item + (2 if rng.random() < 0.1 else 1)) % N_WALK_ITEMS
    write(raw / "events.csv", "u,i,t\n" + "".join(f"u{u},{i},{t}\n" for u, i, t in rows))
    source = GenericSource.model_validate({
        "interactions": {"path": "events.csv", "user": "u", "item": "i", "time": "t"},
        "items": {"path": "items.csv", "id": "id", "title": "title"},
    })
    out = tmp_path_factory.mktemp("prepared")
    prepare_data(DataConfig(format="generic", raw=raw, out=out, source=source, protocol="loo"))
    return out
