"""What the hardware does fast. bf16 autocast is only a win where the CPU has native bf16 (AVX512-BF16 or
AMX) or on a GPU that supports it; on a plain AVX2 CPU, bf16 matmuls run hundreds of times slower than fp32."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import torch

__all__ = ["cpu_has_native_bf16", "device", "use_bf16"]


@functools.cache
def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def use_bf16(setting: bool | Literal["auto"]) -> bool:
    """Resolve a config's `bf16` ('auto' = on where the hardware has native bf16)."""
    if setting != "auto":
        return bool(setting)
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
