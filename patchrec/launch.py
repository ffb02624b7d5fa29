"""A stage's work as a typed job, run in this process or as `torchrun` ranks.

`run_job` is what the stages call: with a world size of 1 it executes the job here; otherwise it writes the job
file into the stage folder, launches `python -m torch.distributed.run ... -m patchrec.launch JOB`, streams the
ranks' output line by line (a Prefect task with `log_prints` puts it in the flow run's log), and turns a failure
into one error naming the failing rank and its exception (torchelastic's error files).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from patchrec.config import EvalConfig, LaunchConfig
from patchrec.contract import StageOutput
from patchrec.distributed import SINGLE, Dist, init_from_env
from patchrec.io import read_json, write_json
from patchrec.runtime import RunSpec

__all__ = ["EvalJob", "Job", "LaunchError", "TrainJob", "execute", "run_job"]

RESULT = "rank0_output.json"  # the job's StageOutput, written by rank 0 of a torchrun launch
# The agent's shared rendezvous store outlives a failed attempt, and a restarted rank can read the dead ranks'
# gloo addresses from it (connection refused); rank 0 then hosts a fresh store for every attempt instead.
_ENV = {"PYTHONUNBUFFERED": "1", "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
_REPORT_FIELD = re.compile(r"^\s*(rank|exitcode|traceback)\s*:\s*(.*)$")  # a field of torchrun's failure report


class LaunchError(RuntimeError):
    """A torchrun launch failed; the message names the failing rank and its error."""


class TrainJob(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["train"] = "train"
    data_dir: Path
    out_dir: Path
    spec: RunSpec
    init_from: Path | None = None
    catalog_file: Path | None = None
    sharding: Literal["ddp", "fsdp"] = "ddp"


class EvalJob(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["eval"] = "eval"
    data_dir: Path
    run_dir: Path
    out_dir: Path
    eval: EvalConfig
    catalog_file: Path | None = None


Job = Annotated[TrainJob | EvalJob, Field(discriminator="kind")]


def execute(job: TrainJob | EvalJob, dist: Dist = SINGLE, progress: bool = True) -> StageOutput:
    """Do the job as this process's rank (all ranks call it; rank 0 writes the outputs)."""
    if isinstance(job, TrainJob):
        from patchrec.training import train_run

        return train_run(job.data_dir, job.out_dir, job.spec, init_from=job.init_from, catalog_file=job.catalog_file,
                         progress=progress and dist.is_main, dist=dist)
    from patchrec.evaluation.split import evaluate_split
    from patchrec.runtime import Runtime

    runtime = Runtime.of_run(job.data_dir, job.run_dir, catalog_file=job.catalog_file)
    res = evaluate_split(runtime, job.data_dir, job.out_dir, job.eval, progress=progress and dist.is_main, dist=dist)
    return StageOutput(metrics=res.metrics, info={"samples": res.samples, "users_per_s": res.users_per_s,
                                                     "world_size": dist.world})


def run_job(job: TrainJob | EvalJob, launch: LaunchConfig = LaunchConfig(),
            echo: Callable[[str], None] = print) -> StageOutput:
    """Run `job` here (world size 1) or as `launch.world` torchrun ranks; return rank 0's output."""
    if launch.world == 1:
        return execute(job)
    if isinstance(job, TrainJob):
        job = job.model_copy(update={"sharding": launch.sharding})
    folder = Path(job.out_dir) / ".launch"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RESULT).unlink(missing_ok=True)  # from an earlier, interrupted launch
    write_json(job.model_dump(mode="json"), folder / "job.json")
    logs = folder / "logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launch.nproc_per_node}",
           f"--max-restarts={launch.max_restarts}", f"--log-dir={logs}"]
    if launch.nnodes == 1:
        cmd += ["--standalone"]
    else:
        cmd += [f"--nnodes={launch.nnodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={launch.rdzv_endpoint}",
                f"--rdzv-id=patchrec-{job.kind}-{Path(job.out_dir).name}"]
    cmd += ["-m", "patchrec.launch", str(folder / "job.json")]
    echo(f"launching {launch.world} ranks: {' '.join(cmd[1:])}")
    tail: deque[str] = deque(maxlen=200)  # torchrun's failure report comes last
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                          env={**os.environ, **_ENV}) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            echo(line.rstrip())
            tail.append(line)
        rc = proc.wait()
    if rc != 0 or not (folder / RESULT).is_file():
        cause = _root_cause(logs) or _reported_root_cause(tail) or f"torchrun exited with {rc}"
        raise LaunchError(f"{job.kind} stage {job.out_dir}: {cause}")
    return StageOutput.model_validate(read_json(folder / RESULT))


def _root_cause(logs: Path) -> str | None:
    """The first failure recorded by torchelastic under `logs` (`.../attempt_N/<rank>/error.json`)."""
    found = []
    for f in logs.rglob("error.json"):
        try:
            msg = json.loads(f.read_text())["message"]
        except (OSError, ValueError, KeyError):
            continue
        text = msg.get("message", "") if isinstance(msg, dict) else str(msg)
        stamp = msg.get("extraInfo", {}).get("timestamp", "0") if isinstance(msg, dict) else "0"
        found.append((int(stamp), f.parent.name, text))
    if not found:
        return None
    _, rank, text = min(found)
    return f"rank {rank} failed: {text.strip().splitlines()[-1] if text.strip() else 'no message'}"


def _reported_root_cause(lines: Iterable[str]) -> str | None:
    """The "Root Cause (first observed failure)" that torchrun prints when a rank died without an error file (killed
    by a signal, aborted in C++): its rank and what ended it, e.g. "Signal 6 (SIGABRT) received by PID 4840"."""
    fields: dict[str, str] = {}
    inside = False
    for line in lines:
        if "Root Cause (first observed failure)" in line:
            inside, fields = True, {}
        elif inside and (m := _REPORT_FIELD.match(line)):
            fields[m.group(1)] = m.group(2).strip()
        elif inside and line.startswith("====="):
            inside = False
    if "rank" not in fields:
        return None
    what = fields.get("traceback", "<N/A>")
    if what in ("", "<N/A>") or what.startswith("To enable traceback"):
        what = f"exit code {fields.get('exitcode', '?')}"
    return f"rank {fields['rank'].split()[0]} failed: {what}"


def _worker(argv: list[str]) -> None:
    """The entrypoint of every rank: join the group, do the job, rank 0 writes its output, then leave.

    A rank that has done its job leaves at once (`os._exit` after flushing), skipping the interpreter's
    teardown: whatever outlived `destroy_process_group` (C++ threads of the backend, the sharded model) is torn
    down there in no set order, and CI saw a finished FSDP rank abort in it with no Python frame on its stack
    ("terminate called without an active exception", exit -6), failing a run whose output was complete. A rank
    that fails exits normally, with its error recorded for `_root_cause`.
    """
    from pydantic import TypeAdapter
    from torch.distributed.elastic.multiprocessing.errors import record

    @record
    def main() -> None:
        job = TypeAdapter(Job).validate_python(read_json(Path(argv[0])))
        dist = init_from_env(job.sharding if isinstance(job, TrainJob) else "ddp")
        try:
            out = execute(job, dist)
            if dist.is_main:
                write_json(out.model_dump(mode="json"), Path(argv[0]).parent / RESULT)
            dist.barrier()  # no rank closes its connections while another still has a collective in flight
        finally:
            if dist.active:
                import torch.distributed as tdist

                tdist.destroy_process_group()

    main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    _worker(sys.argv[1:])
