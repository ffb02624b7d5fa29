"""The 2014 Amazon metadata: lines are Python dict literals (single quotes, nested lists), read with
ast.literal_eval, mixed freely with JSON lines; what is neither is quarantined with a reason and its line."""

from __future__ import annotations

import json

import pandas as pd

from patchrec.data.lines import literal_to_json
from tests.conftest import write

# the real shape of a 2014 metadata line (meta_<category>.json.gz, written with Python's str(dict))
LINE_2014 = (r"""{'asin': 'B00004Z5D1', 'title': 'Swingline Stapler, 20 Sheets, Caf\xe9 Black', 'price': 12.99, """
             r"""'imUrl': 'http://ecx.images-amazon.com/images/I/41xk.jpg', 'related': {'also_bought': ['B0001', """
             r"""'B0002'], 'bought_together': ['B0003']}, 'salesRank': {'Office Products': 1234}, 'brand': """
             r"""'Swingline', 'categories': [['Office Products', 'Office & School Supplies', 'Staplers']]}""")


def test_a_2014_line_becomes_the_same_record_as_json():
    got = json.loads(literal_to_json(LINE_2014.encode() + b"\n").decode())
    assert got["title"] == "Swingline Stapler, 20 Sheets, Caf\u00e9 Black"
    assert got["related"]["also_bought"] == ["B0001", "B0002"] and got["salesRank"] == {"Office Products": 1234}
    assert got["categories"] == [["Office Products", "Office & School Supplies", "Staplers"]]
    assert literal_to_json(b"{'a': 1}\r\n").endswith(b"\r\n")  # the line ending is kept


def test_what_is_not_a_dict_of_json_values_is_not_converted():
    for bad in (b"{'asin': 'A1', 'title': ", b"{'asin', 'title'}", b"{'a': float('nan')}", b"{'a': b'x'}",
                b"{'a': __import__('os').system('echo pwned')}", b"['asin']", b"{'a': {1, 2}}"):
        assert literal_to_json(bad + b"\n") is None, bad


def _items(raw):
    reviews = [json.dumps({"reviewerID": f"U{u}", "asin": f"A{i}", "overall": 5, "unixReviewTime": 1_400_000_000 + i})
               for u in range(3) for i in range(4)]
    write(raw / "reviews_Office_5.json", "\n".join(reviews) + "\n")
    meta = [
        "{'asin': 'A0', 'title': \"Post-it Notes, 3'' x 3''\", 'brand': 'Post-it'}",  # quotes inside the title
        json.dumps({"asin": "A1", "title": "Gel pens", "brand": "Pilot"}),  # a JSON line in the same file
        "{'asin': 'A2', 'title': u'Caf\\xe9 \\u2019round', 'categories': [['Office Products', 'Paper']]}",
        "{'asin': 'A3', 'title': 'Tape', 'related': {'also_viewed': ['A0']}, 'salesRank': {}}",
        "{'asin': 'A4', 'title': 'Broken",  # neither: a truncated literal
        "{'asin': 'A5', 'title': __import__('os').getcwd()}",  # neither: code, never run
    ]
    write(raw / "meta_Office_Products.json", "\n".join(meta) + "\n")


def test_a_metadata_file_mixing_literals_and_json_is_read_and_the_rest_quarantined(tmp_path, prepare):
    raw = tmp_path / "amazon"
    _items(raw)
    s = prepare("amazon-json", raw)
    items = pd.read_parquet(tmp_path / "out" / "items.parquet").set_index("item_key")
    assert items.loc["A0", "title"] == "Post-it Notes, 3'' x 3''"
    assert items.loc["A1", "title"] == "Gel pens"
    assert items.loc["A2", "title"] == "Caf\u00e9 \u2019round"
    assert items.loc["A2", "extra"] == "Office Products > Paper" and items.loc["A0", "extra"] == "Post-it"
    assert s["items_read"] == 6 and s["items_quarantined"] == 2  # nothing lost: 4 read + 2 quarantined
    q = pd.read_parquet(tmp_path / "out" / "quarantine.parquet")
    bad = q[q.reason.str.startswith("line is neither a JSON object nor a Python dict literal")]
    assert sorted(bad.row.tolist()) == [5, 6]
    assert s["rows_read"] == 12 and s["rows_accepted"] == 12
