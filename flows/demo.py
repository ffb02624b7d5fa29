"""`make demo`: run the prepare-data flow on MovieLens-100k and print the table counts."""

from __future__ import annotations

import argparse
from pathlib import Path

from patchrec.config import DataConfig
from patchrec.data.download import ensure_ml100k
from flows.prepare_data import prepare_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", type=Path, required=True, help="folder for data and run outputs")
    parser.add_argument("--ml100k", type=Path, help="local ml-100k folder (downloaded when missing)")
    args = parser.parse_args()
    raw = ensure_ml100k(args.ml100k, args.state / "raw")
    cfg = DataConfig(format="movielens-100k", raw=raw, out=args.state / "data" / "ml-100k", min_rating=4.0)
    s = prepare_data(cfg)
    print()
    print(f"prepare-data on {raw} -> {cfg.out}")
    print(f"  rows read {s['rows_read']:,} = accepted {s['rows_accepted']:,} + quarantined {s['rows_quarantined']:,}"
          f" + deduplicated {s['rows_deduplicated']:,} + filtered {s['rows_filtered']:,}")
    for table in ("users", "items", "interactions"):
        print(f"  {table:<13}{s[table]:>9,}")
    print(f"  samples ({s['protocol']}): " + ", ".join(f"{k} {v:,}" for k, v in s["samples"].items()))


if __name__ == "__main__":
    main()
