"""Prompt text per domain, rendered once with the base model's chat template into token-id pieces.

A sample is: prefix (system + user text up to the history, then SEQ_START) · history units ·
middle (the rest of the user turn and the assistant header) · target title · end-of-turn.
Only the target title and the end-of-turn token carry loss. No wall-clock date is ever rendered.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

__all__ = ["PromptConfig", "PromptPieces", "render_pieces", "tokenize_titles"]

_HISTORY = "[HISTORY]"
_SENTINEL = "PATCHRECSENTINEL"


class PromptConfig(BaseModel):
    """System and instruction text; `[HISTORY]` marks where the history goes."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    system: str = "You are a helpful assistant in movie recommendations."
    instruction: str = (
        "A user has watched [HISTORY]. Please recommend one movie for this user to watch next with its title "
        "only and without any explanation."
    )

    def model_post_init(self, _: object) -> None:
        if self.instruction.count(_HISTORY) != 1:
            raise ValueError(f"instruction must contain {_HISTORY} exactly once: {self.instruction!r}")


@dataclass(frozen=True)
class PromptPieces:
    prefix: list[int]  # ends with SEQ_START
    middle: list[int]  # after the history, up to where the answer starts
    end: list[int]  # the end-of-turn token after the answer
    seq_start: int
    item_sep: int
    seq_end: int
    pad: int


def render_pieces(tok, cfg: PromptConfig, ids: dict[str, int]) -> PromptPieces:
    """Split the chat-templated prompt around the history and the answer, and tokenize each piece."""
    user = cfg.instruction.replace(_HISTORY, _SENTINEL)
    messages = [{"role": "system", "content": cfg.system}, {"role": "user", "content": user}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages + [{"role": "assistant", "content": _SENTINEL}], tokenize=False)
    before, after = text.split(_SENTINEL)
    answer_tail = full.split(_SENTINEL)[-1]

    def enc(s: str) -> list[int]:
        return tok(s, add_special_tokens=False).input_ids if s else []

    end = enc(answer_tail)[:1]
    if not end:
        raise ValueError("the chat template puts nothing after the assistant answer; no end-of-turn token")
    return PromptPieces(enc(before) + [ids["seq_start"]], enc(after), end, ids["seq_start"], ids["item_sep"],
                        ids["seq_end"], ids["pad"])


def tokenize_titles(tok, titles: list[str]) -> list[list[int]]:
    """Each title tokenized on its own, without special tokens; an empty result is an error."""
    out = tok(titles, add_special_tokens=False).input_ids
    empty = [t for t, ids in zip(titles, out) if not ids]
    if empty:
        raise ValueError(f"{len(empty)} title(s) tokenize to nothing, e.g. {empty[:3]}")
    return out
