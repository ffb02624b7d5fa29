"""Every reader, on small fixtures written in its format."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from patchrec.config import GenericSource
from tests.conftest import write


def _tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(out / "interactions.parquet"), pd.read_parquet(out / "items.parquet")


def test_movielens_100k_titles_years_and_indices(ml100k_dir, prepare, tmp_path):
    s = prepare("movielens-100k", ml100k_dir)
    assert s["rows_read"] == 36 and s["rows_accepted"] == 36
    inter, items = _tables(tmp_path / "out")
    cafe = items[items.item_key == "3"].iloc[0]
    assert cafe.title == "Café Society, The" and cafe.year == 1993  # latin-1 decoded, year split off
    assert items.item_idx.tolist() == list(range(8)) and items.item_key.tolist() == [str(i) for i in range(1, 9)]
    assert inter.event_time.min() == pd.Timestamp(1_000_000_100, unit="s", tz="UTC")


def test_movielens_dat_double_colon(tmp_path, prepare):
    raw = tmp_path / "ml1m"
    write(
        raw / "ratings.dat",
        "".join(f"{u}::{i}::5::{1_000_000_000 + 10 * u + i}\n" for u in (1, 2) for i in (1, 2, 3, 4, 5)),
    )
    write(raw / "movies.dat", "".join(f"{i}::Title {i}: Part {i} (2000)::Drama|Comedy\n" for i in range(1, 6)),
          encoding="latin-1")
    s = prepare("movielens-dat", raw)
    assert (s["rows_read"], s["interactions"], s["items"]) == (10, 10, 5)
    _, items = _tables(tmp_path / "out")
    assert items.title.iloc[1] == "Title 2: Part 2" and items.extra.iloc[0] == "Drama|Comedy"


def test_movielens_csv_quoted_titles(tmp_path, prepare):
    raw = tmp_path / "mlcsv"
    write(raw / "ratings.csv", "userId,movieId,rating,timestamp\n" +
          "".join(f"{u},{i},4.5,{1_000_000_000 + 10 * u + i}\n" for u in (1, 2) for i in (10, 20, 30, 40)))
    write(raw / "movies.csv", 'movieId,title,genres\n10,"American President, The (1995)",Comedy\n'
          '20,Heat (1995),Action\n30,"Seven (a.k.a. Se7en) (1995)",Thriller\n40,Plain (2001),Drama\n')
    s = prepare("movielens-csv", raw, min_rating=4.0)
    assert s["interactions"] == 8
    _, items = _tables(tmp_path / "out")
    assert items.title.tolist()[0] == "American President, The"
    assert items.title.tolist()[2] == "Seven (a.k.a. Se7en)"


def test_amazon_json_2014_2023_and_gzip(tmp_path, prepare):
    raw = tmp_path / "amazon"
    old = [{"reviewerID": f"U{u}", "asin": f"A{i}", "overall": 5.0, "unixReviewTime": 1_400_000_000 + 86400 * i}
           for u in range(3) for i in range(5)]
    new = [{"user_id": f"U{u}", "parent_asin": f"A{i}", "asin": "child", "rating": 4.0,
            "timestamp": (1_500_000_000 + 86400 * i) * 1000} for u in range(3) for i in range(5)]
    write(raw / "reviews_2014.json", "".join(json.dumps(r) + "\n" for r in old))
    (raw / "reviews_2023.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in new).encode()))
    write(raw / "meta_items.jsonl", "".join(json.dumps({"parent_asin": f"A{i}", "title": f"Product {i}"}) + "\n"
                                            for i in range(5)))
    s = prepare("amazon-json", raw)
    assert (s["rows_read"], s["interactions"], s["users"], s["items"]) == (30, 30, 3, 5)
    inter, _ = _tables(tmp_path / "out")
    years = inter.event_time.dt.year.value_counts().to_dict()
    assert years == {2014: 15, 2017: 15}  # ms timestamps of the 2023 release scaled to seconds


def test_recbole_atomic_files(tmp_path, prepare):
    raw = tmp_path / "recbole"
    write(raw / "ml.inter", "user_id:token\titem_id:token\trating:float\ttimestamp:float\n" +
          "".join(f"{u}\t{i}\t4\t{1_000_000_000 + 10 * u + i}\n" for u in (1, 2, 3) for i in (1, 2, 3, 4)))
    write(raw / "ml.item", "item_id:token\tmovie_title:token_seq\trelease_year:token\n" +
          "".join(f"{i}\tFilm number {i}\t1999\n" for i in (1, 2, 3, 4)))
    s = prepare("recbole", raw, protocol="loo")
    assert (s["interactions"], s["items"]) == (12, 4)
    assert s["samples"] == {"train": 0, "val": 0, "test": 3}  # 4 items each, min_history 3


def test_generic_delimited_and_parquet_with_key_map(tmp_path, prepare):
    raw = tmp_path / "generic"
    raw.mkdir()
    pq.write_table(pa.table({"uid": ["a", "a", "a", "a", "b"], "iid": [1, 2, 3, 4, 1], "when": [5, 6, 7, 8, 9]}),
                   raw / "events.parquet")
    write(raw / "items.tsv", "sku\tname\nX1\tPen\nX2\tPaper\nX3\tInk\nX4\tDesk\n")
    write(raw / "map.tsv", "X1\t1\nX2\t2\nX3\t3\nX4\t4\n")
    source = GenericSource.model_validate({
        "interactions": {"path": "*.parquet", "user": "uid", "item": "iid", "time": "when"},
        "items": {"path": "items.tsv", "delimiter": "\t", "id": "sku", "title": "name"},
        "item_map": {"path": "map.tsv", "delimiter": "\t", "header": False, "names": ["sku", "id"],
                     "source": "id", "target": "sku"},
    })
    s = prepare("generic", raw, source=source)
    assert (s["interactions"], s["users"], s["items"]) == (5, 2, 4)
    inter, _ = _tables(tmp_path / "out")
    assert inter.item_key.tolist()[:4] == ["X1", "X2", "X3", "X4"]


def test_patchrec_paper_given_split(tmp_path, prepare):
    raw = tmp_path / "paper"
    raw.mkdir()
    pq.write_table(pa.table({
        "user_index": pa.array([0, 1], pa.int32()),
        "items": pa.array([[3, 1, 2, 0, 1, 2], [2, 2, 0, 1]], pa.list_(pa.int32())),
        "train_first": [0.0, 0.0], "train_last": [3.0, 2.0], "val_first": [4.0, None], "val_last": [4.0, None],
        "test_first": [5.0, 3.0], "test_last": [5.0, 3.0],
    }), raw / "sequences.parquet")
    pq.write_table(pa.table({"item_id": pa.array([0, 1, 2, 3], pa.int32()), "title": ["A", "B", "C", "D"]}),
                   raw / "items.parquet")
    s = prepare("patchrec-paper", raw)
    assert s["protocol"] == "given"
    # targets with >= 3 earlier items: user 0 -> positions 3 (train), 4 (val), 5 (test); user 1 -> 3 (test)
    assert s["samples"] == {"train": 1, "val": 1, "test": 2}
    seqs = pd.read_parquet(tmp_path / "out" / "sequences.parquet")
    assert seqs["items"].map(list).tolist() == [[3, 1, 2, 0, 1, 2], [2, 2, 0, 1]]


def test_recbole_benchmark_keeps_its_split(tmp_path, prepare):
    raw = tmp_path / "rb"
    head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
    write(raw / "x.train.inter", head + "u1\ta b\tc\nu1\ta b c\td\nu2\tb\tc\nu2\tb c\ta\n")
    write(raw / "x.valid.inter", head + "u1\ta b c d\te\nu2\tb c a\td\n")
    write(raw / "x.test.inter", head + "u1\ta b c d e\ta\nu2\tb c a d\te\n")
    write(raw / "x.item", "item_id:token\ttitle:token_seq\n" + "".join(f"{k}\tItem {k}\n" for k in "abcde"))
    s = prepare("recbole-benchmark", raw, min_history=1)
    seqs = pd.read_parquet(tmp_path / "out" / "sequences.parquet")
    items = pd.read_parquet(tmp_path / "out" / "items.parquet").set_index("item_idx").item_key
    assert [[items[i] for i in seq] for seq in seqs["items"]] == [list("abcdea"), list("bcade")]
    # u1: targets c, d (train), e (val), a (test); u2: c, a (train), d (val), e (test)
    assert s["samples"] == {"train": 4, "val": 2, "test": 2} and s["protocol"] == "given"


def test_clean_files_are_ingested_without_importing_pyarrow(ml100k_dir, tmp_path):
    """ml-100k's small-data path: importing pyarrow takes 0.07 s and building any pyarrow table imports pandas
    (0.15 s), together a third of a first ingest in a process; DuckDB writes the rejects of a clean file and the
    first key maps and counts the rows, and pyarrow is imported only to renumber the rejects of a dirty file."""
    code = ("import sys; from pathlib import Path; from patchrec.config import DataConfig; "
            "from patchrec.data.ingest import ingest; out = Path(sys.argv[2]); "
            "r = ingest(DataConfig(format='movielens-100k', raw=sys.argv[1], out=out), out / 'g', None); "
            "print(r.rows_read, r.rows_accepted, r.users, r.items, 'pandas' in sys.modules, 'pyarrow' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code, str(ml100k_dir), str(tmp_path / "out")], capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[2])
    assert run.returncode == 0, run.stderr[-2000:]
    read, accepted, users, items, pandas, pyarrow = run.stdout.split()[-6:]
    assert int(read) == int(accepted) > 0 and int(users) > 0 and int(items) > 0
    assert (pandas, pyarrow) == ("False", "False")
