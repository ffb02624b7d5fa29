"""Training throughput under torchrun: the same training stage (same global batches, same steps) with world
size 1 (this process, every core), world size 2 (two gloo ranks, torchrun's default of one thread each) under
DDP and under FSDP, measured in the same run. Prints JSON; writes bench/results/distributed-<device>.json.

    python -m bench.distributed                      # SmolLM2-135M, scoring head and PFT-S(5), 2 CPU cores
    python -m bench.distributed --base tiny --steps 4

`samples_per_s` is the training loop's own rate (targets trained per second of steps, as the stage reports
it); `wall_s` adds process start, model loading and the launch.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import torch

from bench.core import PAPER, REPO, _prepared
from bench.report import header, write_report
from patchrec.profiles import SCORING_RECIPE

HEADS = {  # name: TrainConfig fields
    "scoring (item patches)": {k: v for k, v in SCORING_RECIPE.items() if k not in ("batch_size", "epochs",
                                                                                      "checkpoint_every")},
    "generative PFT-S(5)": dict(stage="pft", layout="session", group=5, max_history=100, lora_dropout=0.0),
}


LAUNCHES = {"world_1": (1, "ddp"), "world_2": (2, "ddp"), "world_2_fsdp": (2, "fsdp")}  # name: (ranks, sharding)


def measure(data: Path, work: Path, base: str, steps: int, batch: int) -> dict:
    from patchrec.config import LaunchConfig, ModelConfig, TrainConfig
    from patchrec.launch import TrainJob, run_job
    from patchrec.runtime import RunSpec

    model = ModelConfig(base=base, cache_dir=REPO / ".state" / "models")
    out: dict = {}
    for name, fields in HEADS.items():
        train = TrainConfig(**fields, batch_size=batch, max_samples=steps * batch, checkpoint_every=10_000)
        spec = RunSpec(train=train, model=model)
        for launch, (world, sharding) in LAUNCHES.items():
            folder = work / f"{name.split()[0]}-{launch}"
            shutil.rmtree(folder, ignore_errors=True)
            t0 = time.perf_counter()
            res = run_job(TrainJob(data_dir=data, out_dir=folder, spec=spec),
                          LaunchConfig(nproc_per_node=world, sharding=sharding), echo=lambda line: None)
            out.setdefault(name, {})[launch] = {
                "samples_per_s": res.metrics["samples_per_s"], "steps": res.metrics["steps"],
                "samples": res.metrics["samples"], "final_loss": res.metrics["final_loss"],
                "wall_s": time.perf_counter() - t0}
        runs = out[name]
        one = runs["world_1"]
        for launch in LAUNCHES:
            if launch != "world_1":
                runs[f"speedup_{launch}"] = runs[launch]["samples_per_s"] / one["samples_per_s"]
        runs["same_samples"] = all(runs[launch]["samples"] == one["samples"] for launch in LAUNCHES)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="smollm2")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    p.add_argument("--batch", type=int, default=8, help="global micro-batch (windows or samples)")
    p.add_argument("--paper", type=Path, default=PAPER)
    p.add_argument("--work", type=Path, default=REPO / ".state" / "bench")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    data = _prepared("ml-100k", args.work, args.paper)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    report = {**header("distributed", argv), "base": args.base, "global_batch": args.batch, "steps": args.steps,
              "heads": measure(data, args.work / "distributed", args.base, args.steps, args.batch)}
    out = args.out or REPO / "bench" / "results" / f"distributed-{'gpu' if device != 'cpu' else 'cpu'}.json"
    write_report(report, out)
    return report


if __name__ == "__main__":
    main()
