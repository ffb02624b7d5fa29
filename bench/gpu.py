"""`make bench-gpu`: the core benchmarks (training samples/s PFT-S vs SFT-100 and its share of the bf16 matmul
peak, ranking users/s batched vs `generate`) on randomly initialised models of real shapes, in one run that
fits about 8 minutes on one GPU. Writes JSON with the device name to bench/results/gpu-<device>.json.

    python -m bench.gpu                                   # SmolLM2-135M and Llama-3.2-1B shapes, on the GPU
    python -m bench.gpu --shapes tiny --data DIR --out F --cpu  # seconds on a CPU (what the test runs)

The shapes' tokenizer is SmolLM2's (a larger vocabulary keeps its rows, so the LM head costs what it would);
`--tokenizer` takes another local one. Data: the paper's ml-100k split (`--paper`), or any prepared folder
(`--data`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bench.core import PAPER, REPO, _dev, _prepared, matmul_peak, rank_speed, train_speed
from bench.report import header, require_cuda, write_report

SHAPES = {  # LlamaConfig fields of the shapes measured
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True),
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                         intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=0, tie_word_embeddings=True),
}


def random_model(shape: str, tokenizer: Path, out: Path) -> Path:
    """A randomly initialised Llama of `shape` with `tokenizer`, saved as a local model folder."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer)
    fields = dict(SHAPES[shape])
    fields["vocab_size"] = max(fields["vocab_size"], len(tok))
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**fields, max_position_embeddings=4096))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["smollm2-135m", "llama-3.2-1b"], choices=sorted(SHAPES))
    p.add_argument("--tokenizer", type=Path, help="a local tokenizer folder (default: SmolLM2's, converted once)")
    p.add_argument("--data", type=Path, help="a prepared data folder (default: the paper's ml-100k)")
    p.add_argument("--paper", type=Path, default=PAPER)
    p.add_argument("--work", type=Path, default=REPO / ".state" / "bench-gpu")
    p.add_argument("--train-steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rank-users", type=int, default=64)
    p.add_argument("--rank-batch", type=int, default=32)
    p.add_argument("--out", type=Path)
    p.add_argument("--cpu", action="store_true", help="run without a GPU (the tiny smoke run); otherwise no CUDA "
                   "device stops it at once")
    args = p.parse_args(argv)
    if not args.cpu:
        require_cuda("make bench-gpu")
    from patchrec.config import ModelConfig
    from patchrec.data.sequences import SequenceStore
    from patchrec.model import ensure_smollm2
    from patchrec.prompts import PromptConfig
    from patchrec.runtime import Base, read_items

    t_start = time.perf_counter()
    data = args.data or _prepared("ml-100k", args.work, args.paper)
    tokenizer = args.tokenizer or ensure_smollm2(REPO / ".state" / "models")
    store = SequenceStore(data, max_history=100)
    titles = read_items(data / "items.parquet").title.astype(str).tolist()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    report: dict = {**header("gpu", argv), "shapes": {}}
    gpu = _dev().type == "cuda"
    report["peak_matmul_flops"] = {"bf16": matmul_peak(torch.bfloat16, n=8192 if gpu else 512, reps=20 if gpu else 2),
                                   "fp32": matmul_peak(torch.float32, n=8192 if gpu else 512, reps=20 if gpu else 2)}
    peak = max(report["peak_matmul_flops"].values())
    for shape in args.shapes:
        folder = random_model(shape, tokenizer, args.work / "models" / shape)
        t0 = time.perf_counter()

        def setup(folder: Path = folder) -> Base:
            return Base(titles, ModelConfig(base=str(folder)), PromptConfig())

        train = train_speed(setup(), store, args.train_steps, args.batch)
        train["ours PFT-S(G=5)"]["fraction_of_matmul_peak"] = train["ours PFT-S(G=5)"]["flops_per_s"] / peak
        report["shapes"][shape] = {"training": train, "ranking": rank_speed(setup(), store, args.rank_users,
                                                                          args.rank_batch),
                                   "seconds": time.perf_counter() - t0}
    report["seconds"] = time.perf_counter() - t_start
    out = args.out or REPO / "bench" / "results" / f"gpu-{device.lower().replace(' ', '-')}.json"
    write_report(report, out)
    return report


if __name__ == "__main__":
    main()
