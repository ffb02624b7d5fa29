"""What every benchmark's JSON starts with (the machine's facts, the command, the date) and how it is written."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from patchrec.io import write_json

__all__ = ["header", "machine", "require_cuda", "write_report"]


def machine() -> dict[str, Any]:
    """The facts a figure depends on: device, cores, threads, the CPU's bf16 support, versions."""
    import torch

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "threads": torch.get_num_threads(), "cpu_bf16": sorted(flags & {"avx512_bf16", "amx_bf16", "avx2"}),
            "torch": torch.__version__}


def header(benchmark: str, argv: list[str] | None) -> dict[str, Any]:
    """The first keys of a benchmark's report."""
    args = argv if argv is not None else sys.argv[1:]
    return {"benchmark": benchmark, "command": f"python -m bench.{benchmark} " + " ".join(args),
            "machine": machine(), "date": time.strftime("%Y-%m-%d", time.gmtime())}


def write_report(report: dict[str, Any], out: Path) -> Path:
    """Write the report atomically and print it (benchmarks print JSON)."""
    write_json(report, Path(out))
    print(json.dumps(report, indent=2, default=str))
    return Path(out)


def require_cuda(command: str) -> None:
    """Stop at once, with one line, where `command` is a GPU run and torch sees no CUDA device (it would otherwise
    run for hours on the CPU)."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit(f"{command}: no CUDA device (torch {torch.__version__}, torch.cuda.is_available() is False); "
                         "run it on a GPU machine with a CUDA build of torch (GPU_PYTHON=...)")
