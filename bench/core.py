"""Core benchmarks of the method on the default model, each comparison measured in the same run:

- tokens per prompt (SFT-100, SFT-20, PFT-I(k=5), PFT-S(G=5), PFT-S(G=20)) on the paper's test samples;
- training samples/s: PFT-S vs SFT-100 (ours), and ours vs a naive authors'-style step (per-item Python
  loops, fp32, full-vocabulary logits) on the same batch;
- prompt assembly time as a share of a training step;
- ranking users/s at 20 beams: ours (one prefill per user, shared KV cache, tensorized trie; a batch of users
  decoded together, and one user at a time) vs plain `generate` with a Python `prefix_allowed_tokens_fn` trie walk;
- achieved training and batched-ranking FLOP/s vs the matmul peak measured in the same run;
- the catalog scoring head's training: padded vs packed vs packed + compiled steps, FLOP/s vs the bf16 peak, and
  tokens per trained target of each layout (`bench.scoring`).

    python -m bench.core [--train-steps 2] [--rank-users 32] [--rank-batch 32] [--base smollm2] [--only scoring]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from bench.report import header, write_report

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO.parent / "shared" / "data" / "patchrec-paper"
LAYOUTS = {  # name: (mode, max_history, k, group)
    "SFT-100": ("text", 100, 5, 5), "SFT-20": ("text", 20, 5, 5), "PFT-I(k=5)": ("item", 100, 5, 5),
    "PFT-S(G=5)": ("session", 100, 5, 5), "PFT-S(G=20)": ("session", 100, 5, 20),
}


def _prepared(name: str, work: Path, paper: Path = PAPER) -> Path:
    """The paper's processed `name` split, prepared once under `work` (reused while the raw files are unchanged)."""
    from patchrec.config import DataConfig
    from patchrec.data.prepare import prepare_data

    cfg = DataConfig(format="patchrec-paper", raw=paper / name, out=work / name)
    prepare_data(cfg)
    return cfg.out


def _dev():
    from patchrec.hardware import device

    return device()


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _batch(store, idx, s, mode, max_hist, k, group, targets=True):
    from patchrec.patching import prompt_batch

    hists, tg = zip(*(store.sample(int(i)) for i in idx))
    return prompt_batch([h[-max_hist:] for h in hists], s.catalog, s.pieces, s.model.get_input_embeddings(), mode,
                        k=k, group=group, targets=tg if targets else None)[0]


def tokens_per_prompt(setup_for, work: Path, paper: Path = PAPER) -> dict:
    from patchrec.data.sequences import SequenceStore

    out = {}
    for name in ("ml-1m", "ml-100k"):
        if not (paper / name).is_dir():
            continue
        data = _prepared(name, work, paper)
        s = setup_for(data)
        store = SequenceStore(data, max_history=100)
        idx = store.indices("test")
        res = {}
        with torch.no_grad():
            s.catalog.patches = _patches(s)
            for label, (mode, mh, k, g) in LAYOUTS.items():
                lens = [_batch(store, idx[i : i + 256], s, mode, mh, k, g, targets=False).lengths
                        for i in range(0, len(idx), 256)]
                res[label] = float(torch.cat(lens).float().mean())
        res["PFT-S(G=5) / SFT-100"] = res["PFT-S(G=5)"] / res["SFT-100"]
        out[name] = {"test_samples": int(len(idx)), "mean_prompt_tokens": res}
    return out


def _patches(s):
    from patchrec.patching import item_patches

    with torch.no_grad():
        return item_patches(s.model.get_input_embeddings(), s.catalog.title_ids, s.catalog.title_len)


def _naive_batch(store, idx, s, mode, max_hist, k, group):
    """The authors' way: a Python loop per sample and per item, one embedding call per item title."""
    from patchrec.patching import layout_kinds

    E = s.model.get_input_embeddings()
    dev = E.weight.device
    rows, labels = [], []
    for i in idx:
        h, t = store.sample(int(i))
        h = h[-max_hist:]
        kinds, groups = layout_kinds(torch.tensor([len(h)]), mode, k=k, group=group)
        emb, lab = [E(torch.tensor(s.pieces.prefix, device=dev))], [-100] * len(s.pieces.prefix)
        j = 0
        while j < len(h):
            e = j
            while kinds[j] == 2 and e + 1 < len(h) and kinds[e + 1] == 2 and groups[e + 1] == groups[j]:
                e += 1
            delim = s.pieces.seq_end if e == len(h) - 1 else s.pieces.item_sep
            if kinds[j] == 0:
                ids = s.catalog.title_ids[h[j], : s.catalog.title_len[h[j]]]
                emb.append(E(ids))
                lab += [-100] * len(ids)
            else:
                pats = [E(s.catalog.title_ids[it, : s.catalog.title_len[it]]).mean(0) for it in h[j : e + 1]]
                emb.append(torch.stack(pats).mean(0, keepdim=True))
                lab.append(-100)
            emb.append(E(torch.tensor([delim], device=dev)))
            lab.append(-100)
            j = e + 1
        tid = s.catalog.title_ids[t, : s.catalog.title_len[t]].tolist() + s.pieces.end
        emb += [E(torch.tensor(s.pieces.middle, device=dev)), E(torch.tensor(tid, device=dev))]
        lab += [-100] * len(s.pieces.middle) + tid
        rows.append(torch.cat(emb))
        labels.append(torch.tensor(lab, device=dev))
    S = max(r.shape[0] for r in rows)
    x = torch.zeros(len(rows), S, rows[0].shape[1], device=dev)
    y = torch.full((len(rows), S), -100, device=dev)
    m = torch.zeros(len(rows), S, dtype=torch.long, device=dev)
    for b, (r, lab) in enumerate(zip(rows, labels)):
        x[b, : len(r)], y[b, : len(lab)], m[b, : len(r)] = r, lab, 1
    return x, m, y


def train_speed(s, store, steps: int, batch: int) -> dict:
    from patchrec.config import TrainConfig
    from patchrec.hardware import use_bf16
    from patchrec.heads.generative import label_loss
    from patchrec.model import attach_trainable

    model = attach_trainable(s.model, TrainConfig(stage="pft", layout="session"), s.new_tokens)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    s.catalog.patches = _patches(s)
    idx = store.indices("train")
    # the longest histories first (100 items and more on MovieLens): the case patches are for
    idx = idx[np.argsort(-store.sample_pos[idx], kind="stable")][: max(steps, 1) * batch]
    bf16 = use_bf16("auto")
    # Matmul FLOPs per token: 2N forward + 2N backward (input grads) for the frozen non-embedding weights
    # under LoRA (6N with full fine-tuning); the embedding table is a lookup, the LM head runs on labels only.
    emb = model.get_input_embeddings().weight.numel()
    n_params = sum(p.numel() for p in model.parameters()) - emb
    flops_per_token = 4 * n_params
    res = {
        "bf16": bf16,
        "batch": batch,
        "steps": steps,
        "flops_note": "flops_per_s = 4 x non-embedding parameters x tokens / s "
        "(LoRA: frozen weights get no weight grads)",
    }

    def run(label, mode, mh, k, g, naive=False):
        assembly, total, tokens = 0.0, 0.0, 0
        for st in range(-1, steps):  # step -1: an untimed warm-up
            mb = idx[max(st, 0) * batch : (max(st, 0) + 1) * batch]
            _sync()
            t0 = time.perf_counter()
            with torch.autocast(_dev().type, dtype=torch.bfloat16, enabled=bf16 and not naive):
                if naive:
                    x, m, y = _naive_batch(store, mb, s, mode, mh, k, g)
                    t1 = time.perf_counter()
                    loss = model(inputs_embeds=x, attention_mask=m, labels=y).loss  # full-vocabulary logits
                else:
                    b = _batch(store, mb, s, mode, mh, k, g)
                    _sync()
                    t1 = time.perf_counter()
                    x, m = b.inputs_embeds, b.attention_mask
                    loss = label_loss(model, b)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            _sync()
            t2 = time.perf_counter()
            if st >= 0:
                assembly += t1 - t0
                total += t2 - t0
                tokens += int(m.sum())
        res[label] = {"samples_per_s": steps * batch / total, "s_per_step": total / steps,
                      "assembly_share": assembly / total, "tokens_per_step": tokens / steps,
                      "flops_per_s": flops_per_token * tokens / total}

    run("ours PFT-S(G=5)", "session", 100, 5, 5)
    run("ours SFT-100", "text", 100, 5, 5)
    run("naive PFT-S(G=5)", "session", 100, 5, 5, naive=True)
    res["PFT-S vs SFT-100"] = res["ours PFT-S(G=5)"]["samples_per_s"] / res["ours SFT-100"]["samples_per_s"]
    res["ours vs naive (PFT-S)"] = res["ours PFT-S(G=5)"]["samples_per_s"] / res["naive PFT-S(G=5)"]["samples_per_s"]
    return res


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    return matmul_flops(dtype, n, n, n, reps)


def matmul_flops(dtype: torch.dtype, m: int, k: int, n: int, reps: int = 5) -> float:
    """FLOP/s of an (m x k) @ (k x n) product."""
    a, b = torch.randn(m, k, dtype=dtype, device=_dev()), torch.randn(k, n, dtype=dtype, device=_dev())
    a @ b
    _sync()
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync()
    return 2 * m * k * n * reps / (time.perf_counter() - t)


def rank_speed(s, store, users: int, batch: int = 32) -> dict:
    """Users/s at 20 beams, top 20, same users and precision: batched (`batch` users of similar prompt lengths
    decoded together), one user at a time (same code, batch 1), and `generate` with a
    `prefix_allowed_tokens_fn` trie walk."""
    from patchrec.hardware import use_bf16
    from patchrec.heads.generative.beam import rank_batch
    from patchrec.heads.generative.trie import TitleTrie

    model = s.model.eval()
    nonemb = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    trie = TitleTrie.build(s.catalog.title_ids, s.catalog.title_len, s.pieces.end[0])
    s.catalog.patches = _patches(s)
    idx = store.indices("test")[:users]
    root: dict = {}
    for i in range(len(s.catalog.title_len)):
        node = root
        for t in s.catalog.title_ids[i, : s.catalog.title_len[i]].tolist() + s.pieces.end:
            node = node.setdefault(t, {})

    def allowed(_, sent):
        node = root
        for t in sent.tolist():  # with inputs_embeds, `sent` holds only the generated tokens
            node = node.get(t, {})
        return list(node) or [s.pieces.end[0]]

    def timed(fn) -> float:
        _sync()
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast(_dev().type, dtype=torch.bfloat16, enabled=use_bf16("auto")):
            fn()
        _sync()
        return time.perf_counter() - t0

    res: dict = {"users": len(idx), "batch": batch, "bf16": use_bf16("auto")}
    for label, (mode, mh, k, g) in (("PFT-S(G=20)", LAYOUTS["PFT-S(G=20)"]), ("SFT-100", LAYOUTS["SFT-100"])):
        prompts = [_batch(store, [i], s, mode, mh, k, g, targets=False) for i in idx]
        prompts.sort(key=lambda b: b.inputs_embeds.shape[1])  # batches of similar lengths, as evaluation forms them
        embeds = [b.inputs_embeds for b in prompts]
        tokens = {"prefill": 0, "decode": 0}  # positions the batched ranking computes: its FLOPs
        forward = model.forward

        def counting(*a, **kw):
            if kw.get("input_ids") is not None:
                tokens["decode"] += kw["input_ids"].shape[0]
            else:
                tokens["prefill"] += kw["inputs_embeds"].shape[0] * kw["inputs_embeds"].shape[1]
            return forward(*a, **kw)

        with torch.no_grad():  # untimed warm-up of both paths (first calls build the CPU kernels' plans)
            timed(lambda: rank_batch(model, embeds[:batch], trie, 20, 20))
            first = prompts[0]
            timed(lambda: model.generate(inputs_embeds=first.inputs_embeds, attention_mask=first.attention_mask,
                                         num_beams=20, max_new_tokens=4, do_sample=False, pad_token_id=s.pieces.pad))
        model.forward = counting
        try:
            batched = timed(lambda: [rank_batch(model, embeds[i : i + batch], trie, 20, 20)
                                     for i in range(0, len(embeds), batch)])
        finally:
            del model.forward
        vocab, dim = model.get_input_embeddings().weight.shape
        flops = 2 * nonemb * (tokens["prefill"] + tokens["decode"]) + 2 * vocab * dim * tokens["decode"]
        single = timed(lambda: [rank_batch(model, [e], trie, 20, 20) for e in embeds])
        generate = timed(lambda: [model.generate(inputs_embeds=b.inputs_embeds, attention_mask=b.attention_mask,
                                                 num_beams=20, num_return_sequences=20, max_new_tokens=64,
                                                 prefix_allowed_tokens_fn=allowed, do_sample=False,
                                                 eos_token_id=s.pieces.end[0], pad_token_id=s.pieces.pad)
                                  for b in prompts])
        res[label] = {"batched_users_per_s": len(idx) / batched, "one_user_users_per_s": len(idx) / single,
                      "generate_users_per_s": len(idx) / generate, "speedup_batched": generate / batched,
                      "speedup_one_user": generate / single, "batched_prefill_positions": tokens["prefill"],
                      "batched_decode_rows": tokens["decode"], "batched_flops_per_s": flops / batched}
    return res


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="smollm2")
    p.add_argument("--train-steps", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--rank-users", type=int, default=32)
    p.add_argument("--rank-batch", type=int, default=32, help="users decoded together by the batched ranking")
    p.add_argument("--paper", type=Path, default=PAPER, help="the paper's processed data (ml-1m, ml-100k)")
    p.add_argument("--work", type=Path, default=REPO / ".state" / "bench")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "core.json")
    p.add_argument("--only", choices=["scoring"], help="run only this section (write it with --out elsewhere)")
    p.add_argument("--scoring-rounds", type=int, default=4, help="interleaved rounds of the scoring-head variants")
    p.add_argument("--scoring-steps", type=int, default=3, help="training steps of each variant in a round")
    p.add_argument("--scoring-rank-users", type=int, default=256, help="test users the scoring head ranks")
    p.add_argument("--scoring-rank-chunk", type=int, default=65_536, help="catalog items scored at a time")
    args = p.parse_args(argv)
    from patchrec.config import ModelConfig
    from patchrec.data.sequences import SequenceStore
    from patchrec.prompts import PromptConfig
    from patchrec.runtime import Base, read_items

    mcfg = ModelConfig(base=args.base, cache_dir=REPO / ".state" / "models")

    def setup_for(data: Path) -> Base:
        return Base(read_items(data / "items.parquet").title.astype(str).tolist(), mcfg, PromptConfig())

    report: dict = {**header("core", argv), "base": args.base}
    from bench import scoring

    def bf16_peak() -> float:
        gpu = torch.cuda.is_available()
        return matmul_peak(torch.bfloat16, n=8192 if gpu else 2048, reps=20 if gpu else 3)

    report["scoring_training"] = scoring.run(args.work, args.paper, args.base, mcfg.cache_dir, args.scoring_rounds,
                                             args.scoring_steps, bf16_peak)
    report["scoring_ranking"] = scoring.ranking(args.work, args.paper, args.base, mcfg.cache_dir,
                                                args.scoring_rank_users, 64, args.scoring_rank_chunk)
    if args.only == "scoring":
        write_report(report, args.out)
        return report
    report["tokens_per_prompt"] = tokens_per_prompt(setup_for, args.work, args.paper)
    data = args.work / "ml-100k"
    store = SequenceStore(data, max_history=100)
    from patchrec.hardware import use_bf16

    gpu = torch.cuda.is_available()
    report["peak_matmul_flops"] = {  # a small bf16 problem where bf16 is emulated (it runs ~300x slower)
        "fp32": matmul_peak(torch.float32, n=8192 if gpu else 2048, reps=20 if gpu else 5),
        "bf16": matmul_peak(torch.bfloat16, n=8192 if gpu else (2048 if use_bf16("auto") else 512),
                            reps=20 if gpu else 2)}
    report["training"] = train_speed(setup_for(data), store, args.train_steps, args.batch)
    best = max(report["peak_matmul_flops"].values())
    report["training"]["ours PFT-S(G=5)"]["fraction_of_matmul_peak"] = (
        report["training"]["ours PFT-S(G=5)"]["flops_per_s"] / best
    )
    report["ranking"] = rank_speed(setup_for(data), store, args.rank_users, args.rank_batch)
    for row in (report["ranking"][label] for label in ("PFT-S(G=20)", "SFT-100")):
        row["batched_fraction_of_matmul_peak"] = row["batched_flops_per_s"] / best
    write_report(report, args.out)
    return report


if __name__ == "__main__":
    main()
