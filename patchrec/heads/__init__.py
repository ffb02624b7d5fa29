"""Ranking heads: one module per head behind `Head` (`patchrec.heads.base`), and `HEADS`, the only place a
head's name is dispatched. A new head is a module here, a row of `HEADS`, and its name in `TrainConfig.head`.
"""

from __future__ import annotations

from patchrec.heads.base import Head, Objective, Ranker, Ranking, Terms
from patchrec.heads.generative import GenerativeHead
from patchrec.heads.scoring import ScoringHead

__all__ = ["HEADS", "Head", "Objective", "Ranker", "Ranking", "Terms", "head"]

HEADS: dict[str, Head] = {h.name: h for h in (GenerativeHead(), ScoringHead())}


def head(name: str) -> Head:
    """The head called `name` (`TrainConfig.head`)."""
    try:
        return HEADS[name]
    except KeyError:
        raise ValueError(f"unknown head {name!r}; choose one of {sorted(HEADS)}") from None
