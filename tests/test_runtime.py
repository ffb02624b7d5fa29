"""The runtime: a base model with a head's weights, ready to rank, for every head of the table."""

from __future__ import annotations

import numpy as np
import pytest

from patchrec.config import ModelConfig, TrainConfig
from patchrec.heads import HEADS
from patchrec.runtime import RunSpec, Runtime, read_items

TRAIN = {"generative": dict(stage="pft", layout="session", group=3, max_history=12),
         "scoring": dict(stage="pft", layout="item", head="scoring", context=4, stride=4)}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_an_untrained_runtime_ranks_catalog_items_with_its_head(data, tmp_path, name):
    spec = RunSpec(train=TrainConfig(**TRAIN[name]),
                   model=ModelConfig(base="tiny", tiny_hidden=16, tiny_layers=1, cache_dir=tmp_path))
    items = read_items(data / "items.parquet")
    runtime = Runtime.load(items, spec)
    assert runtime.max_history == HEADS[name].max_history(spec.train)
    got = runtime.ranker(num_beams=len(items), batch_size=2).rank_many([np.array([1, 2, 3]), np.array([5])], 5)
    for r in got:
        assert len(r.items) == 5 and len(set(r.items)) == 5 and all(0 <= i < len(items) for i in r.items)
        assert r.scores == sorted(r.scores, reverse=True)
