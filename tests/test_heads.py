"""The head table: every head provides the whole `Head` protocol, and no code outside `patchrec/heads/`
dispatches on a head's name."""

from __future__ import annotations

import re
from pathlib import Path

from patchrec.config import TrainConfig
from patchrec.heads import HEADS, Head, head

PACKAGE = Path(__file__).resolve().parents[1] / "patchrec"


def test_every_head_implements_the_protocol_and_the_config_knows_it():
    methods = [m for m in vars(Head) if not m.startswith("_") and callable(getattr(Head, m))]
    assert {"model", "objective", "ranker", "max_history", "refresh", "load_init"} <= set(methods)
    assert set(HEADS) == set(TrainConfig.model_fields["head"].annotation.__args__)
    for name, h in HEADS.items():
        assert h.name == name and head(name) is h
        for m in methods:
            assert callable(getattr(h, m)), (name, m)


def test_no_head_dispatch_outside_the_heads_package():
    pattern = re.compile(r"head\s*[!=]=|isinstance\([^)]*ScoringModel")
    found = [f"{p.relative_to(PACKAGE)}:{n}" for p in PACKAGE.rglob("*.py") if "heads" not in p.parts
             for n, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not found, found
