"""Ingestion benchmark: events/s and peak memory, patchrec vs pandas and vs DuckDB's bare CSV -> Parquet copy.

Each measurement runs in a fresh subprocess so that its peak RSS (ru_maxrss) is its own. The pandas
baseline reads the same file in the same run: `sep='::'` needs pandas' python engine, which is what a
plain pandas user gets for MovieLens `::` files; ml-100k's tab-separated file uses the C engine.
`duckdb_copy` is the practical limit: DuckDB alone reads the same file with explicit types and writes
it as Parquet (no checks, no keys, no quarantine). patchrec's time splits into `import_seconds` (its
imports) and `ingest_seconds` (the ingest call on a fresh state).

    python -m bench.ingest [--events 20000000] [--ml100k ../shared/data/ml-100k] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb

from bench.report import header, write_report

REPO = Path(__file__).resolve().parents[1]

_OURS = """
import json, resource, sys, time
from pathlib import Path
t = time.perf_counter()
from patchrec.config import DataConfig
from patchrec.data.ingest import ingest
t_import = time.perf_counter()
out = Path(sys.argv[3])
limit = {"memory_limit": sys.argv[4]} if len(sys.argv) > 4 else {}  # else DataConfig's default
r = ingest(DataConfig(format=sys.argv[1], raw=sys.argv[2], out=out, rebuild=True, **limit), out / "generation", None)
t_end = time.perf_counter()
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": t_end - t, "import_seconds": t_import - t, "ingest_seconds": t_end - t_import,
                  "rows": r.rows_read, "peak_rss_mb": rss}))
"""

_PANDAS = """
import json, resource, sys, time
import pandas as pd
t = time.perf_counter()
sep, engine = sys.argv[2], sys.argv[3]
df = pd.read_csv(sys.argv[1], sep=sep, engine=engine, header=None, names=["user", "item", "rating", "ts"])
df.to_parquet(sys.argv[4])
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": dt, "rows": len(df), "peak_rss_mb": rss}))
"""


_DUCKDB = """
import json, resource, sys, time
t = time.perf_counter()
import duckdb
con = duckdb.connect()
sql = ("copy (select * from read_csv(?, delim = ?, header = false, "
       "columns = {'user': 'BIGINT', 'item': 'BIGINT', 'rating': 'DOUBLE', 'ts': 'BIGINT'})) to '"
       + sys.argv[3].replace("'", "''") + "' (format parquet)")
con.execute(sql, [sys.argv[1], sys.argv[2]])
n = con.execute("select count(*) from read_parquet(?)", [sys.argv[3]]).fetchone()[0]
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": dt, "rows": n, "peak_rss_mb": rss}))
"""


def _run(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["events_per_s"] = res["rows"] / res["seconds"]
    return res


def make_dat_log(folder: Path, events: int, users: int = 200_000, items: int = 20_000) -> Path:
    """A synthetic MovieLens `::` log (ratings.dat + movies.dat) of `events` rows."""
    folder.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect()
    con.sql(
        "copy (select (hash(i) % $users) + 1 as u, (hash(i * 7 + 1) % $items) + 1 as m, (i % 5) + 1 as r, "
        "900000000 + i as t from range($n) tbl(i)) to $out (format csv, delimiter '::', header false)",
        params={"users": users, "items": items, "n": events, "out": str(folder / "ratings.dat")},
    )
    con.sql(
        "copy (select i as id, 'Movie ' || i || ' (1999)' as title, 'Drama' as genres "
        "from range(1, $items + 1) tbl(i)) "
        "to $out (format csv, delimiter '::', header false, quote '')",
        params={"items": items, "out": str(folder / "movies.dat")},
    )
    return folder


def _best(runs: list[dict]) -> dict:
    """The fastest of a side's runs (its own RSS with it), and every run's seconds."""
    best = min(runs, key=lambda r: r["seconds"])
    return {**best, "seconds_all": [round(r["seconds"], 3) for r in runs]}


def compare(name: str, fmt: str, raw: Path, data_file: Path, sep: str, engine: str, work: Path,
            large_memory: str | None = None, repeats: int = 1) -> dict:
    """patchrec (DataConfig's default memory_limit), pandas and the DuckDB copy on one file; with `large_memory`,
    patchrec again with that memory_limit (the speed a larger DuckDB buffer buys).

    Each side runs `repeats` times, the sides interleaved round by round so that the machine's drift hits all
    alike; each side's figure is its fastest run (`seconds_all` lists every run)."""
    sides: dict[str, list[dict]] = {"patchrec": [], "pandas": [], "duckdb_copy": [], "patchrec_large_memory": []}
    for rep in range(repeats):
        sides["patchrec"].append(_run(_OURS, fmt, str(raw), str(work / f"{name}-out{rep}")))
        sides["pandas"].append(_run(_PANDAS, str(data_file), sep, engine, str(work / f"{name}-pandas.parquet")))
        sides["duckdb_copy"].append(_run(_DUCKDB, str(data_file), sep, str(work / f"{name}-duckdb.parquet")))
        if large_memory:
            big = _run(_OURS, fmt, str(raw), str(work / f"{name}-out-big{rep}"), large_memory)
            sides["patchrec_large_memory"].append({"memory_limit": large_memory, **big})
    ours, base, bare = _best(sides["patchrec"]), _best(sides["pandas"]), _best(sides["duckdb_copy"])
    res = {"dataset": name, "file_mb": round(data_file.stat().st_size / 2**20, 1), "repeats": repeats,
           "patchrec": ours, "pandas": base, "duckdb_copy": bare,
           "speedup_events_per_s": ours["events_per_s"] / base["events_per_s"],
           "seconds_vs_duckdb_copy": ours["seconds"] / bare["seconds"]}
    if large_memory:
        res["patchrec_large_memory"] = _best(sides["patchrec_large_memory"])
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events", type=int, default=20_000_000)
    p.add_argument("--small-events", type=int, default=2_000_000, help="second size, to show memory is flat")
    p.add_argument("--ml100k", type=Path, default=REPO.parent / "shared" / "data" / "ml-100k")
    p.add_argument("--large-memory", default="2GB", help="also run patchrec with this DuckDB memory_limit ('' = no)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each side, interleaved; the fastest is reported")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ingest.json")
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="patchrec-bench-") as tmp:
        work = Path(tmp)
        if (args.ml100k / "u.data").is_file():
            results.append(compare("ml-100k", "movielens-100k", args.ml100k, args.ml100k / "u.data", "\t", "c", work,
                                   repeats=args.repeats))
        for n in (args.small_events, args.events):
            raw = make_dat_log(work / f"dat{n}", n)
            results.append(
                compare(f"synthetic-dat-{n}", "movielens-dat", raw, raw / "ratings.dat", "::", "python", work,
                        large_memory=args.large_memory, repeats=args.repeats)
            )
            (raw / "ratings.dat").unlink()
    report = {**header("ingest", argv), "results": results}
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
