"""The registry's rules: promotion only with a finite metric on enough validation targets; request params."""

from __future__ import annotations

import pytest

from patchrec.registry import decide

NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("mine", "samples", "champ", "promoted", "reason"),
    [
        ({"val_ndcg_10": 0.2}, 100, None, True, "first version"),
        ({"val_ndcg_10": NAN}, 100, None, False, "is nan (not finite)"),  # a NaN first version was champion
        ({"val_ndcg_10": INF}, 100, {"val_ndcg_10": 0.1}, False, "is inf (not finite)"),
        ({"val_hr_10": 0.2}, 100, None, False, "has no val_ndcg_10"),  # was a KeyError traceback
        ({"val_ndcg_10": 0.2}, 12, None, False, "validated on 12 targets, fewer than registry.min_val_samples=30"),
        ({"val_ndcg_10": 0.2}, None, None, False, "validated on None targets"),
        ({"val_ndcg_10": 0.2}, 100, {"val_ndcg_10": NAN}, True, "champion v3 has no finite val_ndcg_10 (nan)"),
        ({"val_ndcg_10": 0.2}, 100, {"val_ndcg_10": INF}, True, "champion v3 has no finite"),  # inf was for good
        ({"val_ndcg_10": 0.2}, 100, {}, True, "champion v3 has no finite val_ndcg_10 (None)"),
        ({"val_ndcg_10": 0.2}, 100, {"val_ndcg_10": 0.19}, True, ">= champion v3 0.1900 + margin 0.0"),
        ({"val_ndcg_10": 0.2}, 100, {"val_ndcg_10": 0.21}, False, "< champion v3 0.2100"),
    ],
)
def test_decide(mine, samples, champ, promoted, reason):
    got, why = decide(mine, samples, champ, 3 if champ is not None else None, "ndcg_10", 0.0, 30)
    assert got is promoted and reason in why, why
    assert why.startswith("not promoted") is not promoted


@pytest.mark.parametrize(("value", "expected"), [(5, 5), (5.0, 5), ("7", 7), (None, None), (True, None),
                                                 (2.5, None), ("x", None)])
def test_top_k_from_request_params(value, expected):
    """Audit: `"top_k": null` returned the server's stack trace (int(None)); now a short refusal."""
    from patchrec.recommender import RecommendError
    from patchrec.registry import _top_k

    if expected is None:
        with pytest.raises(RecommendError, match="top_k must be a whole number"):
            _top_k(value)
    else:
        assert _top_k(value) == expected
