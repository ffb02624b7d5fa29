"""Metrics against hand-computed values (RecBole style)."""

from __future__ import annotations

import math

import pytest

from patchrec.evaluation.metrics import first_ranks, hit_rate_at_k, lenient_paper_ranks, ndcg_at_k, summarize_ranks


def test_first_rank_exact_item_id():
    ranks = first_ranks([[5, 7, 7, 9], [1, 2], [3]], [7, 4, 3])
    assert ranks.tolist() == [1, -1, 0]


def test_hand_computed_hr_and_ndcg():
    ranks = [0, 1, 4, -1]
    assert hit_rate_at_k(ranks, 1) == 0.25
    assert hit_rate_at_k(ranks, 5) == 0.75
    assert ndcg_at_k(ranks, 5) == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6)) / 4)
    assert ndcg_at_k([1], 1) == 0.0


def test_user_average_differs_from_sample_average():
    s = summarize_ranks([0, -1, -1, 0], users=[1, 1, 1, 2], ks=(1,))
    assert s["hr_1"] == 0.5
    assert s["user_hr_1"] == pytest.approx((1 / 3 + 1) / 2)


def test_lenient_metric_is_a_prefix_match_with_last_rank():
    ranks = lenient_paper_ranks([["Aliens", "Heat", "Alien"], ["Heat"]], ["Alien", "Up"])
    assert ranks.tolist() == [2, -1]  # "Aliens" counts as "Alien", and the LAST match wins
