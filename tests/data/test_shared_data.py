"""The real data sets in ../shared/data, when present (skipped on machines without them)."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchrec.config import load_source
from tests.conftest import SHARED

REPO = Path(__file__).resolve().parents[2]


def _need(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"{path} not present")
    return path


def test_paper_ml100k_reproduces_the_split(prepare):
    s = prepare("patchrec-paper", _need(SHARED / "patchrec-paper" / "ml-100k"))
    assert s["samples"] == {"train": 47749, "val": 1005, "test": 1024}
    assert (s["users"], s["items"], s["interactions"]) == (682, 1682, 51824)


def test_movielens_100k_raw(prepare):
    s = prepare("movielens-100k", _need(SHARED / "ml-100k"), min_rating=4.0)
    assert s["rows_read"] == 100_000 and s["rows_filtered_rating"] == 44_625  # ratings 1-3: 6110+11370+27145
    assert s["rows_accepted"] == 55_375 and s["rows_quarantined"] == 0


def test_amazon_office_generic_reader(prepare):
    raw = _need(SHARED / "amazon-office-products-2014-5core")
    source = load_source(REPO / "docs" / "sources" / "amazon-office-2014-5core.yaml")
    s = prepare("generic", raw, source=source, protocol="loo")
    assert (s["interactions"], s["users"], s["items"]) == (53_258, 4_905, 2_420)
    assert s["samples"]["test"] == s["samples"]["val"] == 4_905
