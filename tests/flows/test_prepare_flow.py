"""The prepare-data flow on a temporary Prefect server: same results as the library call."""

from __future__ import annotations

import json

import pytest

from patchrec.config import DataConfig

pytestmark = pytest.mark.slow  # Prefect flows


def test_prepare_data_flow(prefect_server, ml100k_dir, tmp_path):
    from flows.prepare_data import prepare_data_flow as prepare_data

    cfg = DataConfig(format="movielens-100k", raw=ml100k_dir, out=tmp_path / "out", min_rating=4.0,
                     min_history=1)
    summary = prepare_data(cfg)
    assert summary["rows_read"] == 36 and summary["rows_filtered"] == 18 and summary["interactions"] == 18
    assert json.loads((tmp_path / "out" / "prepare.json").read_text()) == summary
    for table in ("interactions", "items", "users", "quarantine", "sequences", "samples"):
        assert (tmp_path / "out" / f"{table}.parquet").is_file()
