"""`make demo`: the full pipeline with the `demo` profile (MovieLens-100k, SmolLM2-135M-Instruct, a budget that
fits 15 minutes on 2 CPU cores): prepare -> popularity baseline -> catalog -> 6 minutes of sequence-level
training of the catalog scoring head -> evaluate -> register. Prints the metrics next to popularity's on the
same test targets, and how to query the champion. A re-run reuses every finished stage.
`--profile demo-generative` runs the paper's generative head (PPT -> PFT-S) instead."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state", type=Path, required=True, help="folder for data, models, runs, MLflow and Prefect")
    parser.add_argument("--ml100k", type=Path, help="local ml-100k folder (downloaded when missing)")
    parser.add_argument("--profile", default="demo", help="pipeline profile (see patchrec.profiles.PROFILES)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = parser.parse_args()
    (args.state / "prefect").mkdir(parents=True, exist_ok=True)  # PREFECT_HOME (Makefile); Prefect needs it to exist

    from patchrec.services import Services

    svc = Services(args.state)
    if svc.healthy():  # `make up` is running: record the demo there instead of in a temporary server
        os.environ["PREFECT_API_URL"] = svc.api
    from flows.pipeline import full_pipeline_flow
    from patchrec.data.download import ensure_ml100k
    from patchrec.profiles import parse_overrides
    from patchrec.stages import example_history

    overrides = parse_overrides(args.set)
    if args.profile.startswith(("demo", "ml-100k")):
        overrides.setdefault("data.raw", str(ensure_ml100k(args.ml100k, args.state / "raw")))
    t0 = time.perf_counter()
    res = full_pipeline_flow(args.profile, overrides, str(args.state))
    minutes = (time.perf_counter() - t0) / 60
    m, reg = res["metrics"], res["registry"]
    reused = [k for k, v in res["reused"].items() if v]
    print(f"\nfull-pipeline ({args.profile}) in {minutes:.1f} min; reused: {', '.join(reused) or 'nothing'}")
    print(f"  {'':<6}" + "".join(f"{f'HR@{k}':>9}{f'NDCG@{k}':>10}" for k in (5, 10, 20)))
    for split in ("val", "test"):
        print(f"  {split:<6}" + "".join(f"{m[f'{split}_hr_{k}']:>9.4f}{m[f'{split}_ndcg_{k}']:>10.4f}"
                                         for k in (5, 10, 20)))
    for kind in ("popularity", "sasrec"):
        if f"{kind}_test_hr_5" in m:
            print(f"  {kind[:6]:<6}" + "".join(f"{m[f'{kind}_test_hr_{k}']:>9.4f}{m[f'{kind}_test_ndcg_{k}']:>10.4f}"
                                                for k in (5, 10, 20)) + "   (test, same targets)")
    if m.get("popularity_test_hr_20"):
        print(f"  test HR@20 = {m['test_hr_20'] / m['popularity_test_hr_20']:.2f} x popularity's")
    print(f"  registry: {reg['name']} v{reg['version']}: {reg['reason']}")
    state = args.state
    example = ",".join(example_history(Path(res["data_dir"])))
    print("\nquery the champion:")
    print(f"  .venv/bin/patchrec recommend --state {state} --model models:/{reg['name']}@champion --history {example}")
    print("  make serve   # mlflow models serve on http://127.0.0.1:5001, then:")
    print(f"  .venv/bin/patchrec recommend --url http://127.0.0.1:5001 --history {example}")
    print("look: make mlflow-ui (http://127.0.0.1:5000), make up (Prefect UI on http://127.0.0.1:4200)")


if __name__ == "__main__":
    main()
