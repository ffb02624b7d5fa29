"""`make bench-gpu`'s script runs end to end on a CPU with a tiny shape and writes its JSON."""

from __future__ import annotations

import json

import pytest
import torch

from patchrec.config import DataConfig, load_source
from patchrec.data.prepare import prepare_data
from patchrec.model import build_tiny

pytestmark = pytest.mark.slow  # trains and ranks (seconds), and runs `generate` for the comparison


def test_bench_gpu_runs_on_cpu_with_a_tiny_shape(tmp_path):
    from bench import gpu

    data = tmp_path / "data"
    prepare_data(DataConfig(format="generic", raw="examples/tiny/raw", out=data, protocol="loo", min_history=2,
                            max_future_days=3650.0, source=load_source("examples/tiny/source.yaml")))
    import pandas as pd

    _, tok = build_tiny(pd.read_parquet(data / "items.parquet").title.tolist())
    tok.save_pretrained(tmp_path / "tok")
    out = tmp_path / "gpu.json"
    gpu.main(["--shapes", "tiny", "--data", str(data), "--tokenizer", str(tmp_path / "tok"), "--work",
              str(tmp_path / "work"), "--train-steps", "1", "--batch", "2", "--rank-users", "3", "--rank-batch", "2",
              "--out", str(out), "--cpu"])
    report = json.loads(out.read_text())
    assert report["machine"]["device"] == "cpu"
    tiny = report["shapes"]["tiny"]
    assert tiny["training"]["ours PFT-S(G=5)"]["samples_per_s"] > 0
    assert tiny["training"]["ours PFT-S(G=5)"]["fraction_of_matmul_peak"] > 0
    for layout in ("PFT-S(G=20)", "SFT-100"):
        assert tiny["ranking"][layout]["batched_users_per_s"] > 0 and tiny["ranking"][layout]["speedup_batched"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU machine's answer")
@pytest.mark.parametrize("module", ["gpu", "quality"])
def test_the_gpu_commands_stop_at_once_without_cuda(module, tmp_path):
    """`make bench-gpu` and `make quality-gpu` on a machine without CUDA: one line, before any work."""
    import importlib

    argv = [] if module == "gpu" else ["--require-cuda", "--work", str(tmp_path)]
    with pytest.raises(SystemExit, match="no CUDA device") as exc:
        importlib.import_module(f"bench.{module}").main(argv + ["--out", str(tmp_path / "out.json")])
    assert "make " in str(exc.value)
    assert not any(tmp_path.iterdir())  # nothing prepared, trained or written
