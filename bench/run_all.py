"""`make bench`: run every benchmark of the project; each writes its JSON to bench/results/."""

from __future__ import annotations

from bench import core, distributed, ingest

BENCHMARKS = [ingest.main, core.main, distributed.main]

if __name__ == "__main__":
    for run in BENCHMARKS:
        run([])
