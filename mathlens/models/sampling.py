"""Next-token sampling: temperature, top-k and top-p (nucleus) by their definitions."""

from __future__ import annotations

import torch
from torch import Tensor

from mathlens.errors import MathlensError


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """MathlensError for temperature < 0, top_k < 1 or top_p outside (0, 1]."""
    if not temperature >= 0:  # NaN too
        raise MathlensError(f"temperature = {temperature!r} is invalid (must be ≥ 0; 0 is greedy decoding)")
    if top_k is not None and top_k < 1:
        raise MathlensError(f"top_k = {top_k!r} is invalid (must be ≥ 1)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise MathlensError(f"top_p = {top_p!r} is invalid (must be in (0, 1])")


def filter_logits(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> Tensor:
    """Logits (..., V) of the sampling distribution: divide by ``temperature``; keep the ``top_k`` largest;
    keep the smallest set of most likely tokens whose probability reaches ``top_p`` (the token that crosses
    the threshold is kept). Removed tokens get −inf. The row maximum is subtracted before the division (a shift,
    which softmax ignores), so a tiny temperature gives 0 and −inf — the greedy limit — instead of inf − inf."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        raise MathlensError("temperature = 0 has no sampling distribution (greedy decoding: sample_next)")
    tiny = torch.finfo(logits.dtype).tiny if logits.is_floating_point() else 0.0  # 1e-300 would round to 0 in float32
    logits = (logits - logits.amax(-1, keepdim=True)) / max(temperature, tiny)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p  # mass before this token ≥ p
        drop_sorted[..., 0] = False  # the most likely token always stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """Draw one token per row of ``logits: (B, V)`` -> (B, 1); temperature 0 is greedy (argmax)."""
    check_sampling(temperature, top_k, top_p)
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    probs = torch.softmax(filter_logits(logits.float(), temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator)
