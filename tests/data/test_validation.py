"""Great Expectations suites: pass on good tables, fail with a readable summary on bad ones."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from patchrec.data.validation import ValidationFailed, data_docs_index, validate_tables


def test_good_tables_pass_and_results_are_saved(ml100k_dir, prepare, tmp_path):
    s = prepare("movielens-100k", ml100k_dir)
    assert s["validation"] == {"interactions": True, "items": True, "users": True, "samples": True}
    saved = json.loads((tmp_path / "out" / "validation" / "items.json").read_text())
    assert saved["success"] is True and len(saved["results"]) >= 5
    index = data_docs_index(tmp_path / "out")
    html = index.read_text()
    for table in ("interactions", "items", "users", "samples"):  # every suite and its validation is a page
        assert f"patchrec-{table}" in html
        assert list((index.parent / "validations" / f"patchrec-{table}").rglob("*.html"))


def test_broken_tables_fail_with_summary(ml100k_dir, prepare, tmp_path):
    prepare("movielens-100k", ml100k_dir)
    out = tmp_path / "out"
    items = pd.read_parquet(out / "items.parquet")
    items.loc[0, "title"] = ""
    items = items[items.item_key != "8"]  # interactions now reference a missing item
    items.to_parquet(out / "items.parquet")
    with pytest.raises(ValidationFailed) as err:
        validate_tables(out)
    msg = str(err.value)
    assert "items.title: expect_column_value_lengths_to_be_between" in msg
    assert "interactions.item_idx: expect_column_values_to_be_in_set" in msg
    assert "7" in msg  # the unknown item_idx is shown as an example
    summary = json.loads((out / "validation" / "summary.json").read_text())
    assert {r["table"]: r["success"] for r in summary}["items"] is False
    pages = sorted((data_docs_index(out).parent / "validations" / "patchrec-items").rglob("*.html"))
    page = pages[-1].read_text()  # the newest validation of items: failed, showing the empty title
    assert "Failed" in page and "characters long" in page and "1 unexpected values found" in page
