"""Stages as plain functions: the data record refuses what the pipeline cannot use, before any MLflow run."""

from __future__ import annotations

import pytest

from patchrec import stages
from patchrec.data.prepare import prepare_data
from patchrec.profiles import load_pipeline


def test_record_data_refuses_a_generation_with_an_empty_split(tmp_path):
    """Audit: an empty validation split crashed the catalog stage with an IndexError (and gave NaN metrics)."""
    cfg = load_pipeline("tiny", {"data.protocol": "paper", "data.split_ratios": [0.9, 0.0, 0.1]}, tmp_path)
    prepare_data(cfg.data)
    with pytest.raises(ValueError, match=r"a split has no sample \({'train': \d+, 'val': 0, 'test': \d+}\)"):
        stages.record_data(cfg, {"changed": True, "files_new": []})
    assert not (tmp_path / "mlflow.db").exists()  # refused before any tracking
