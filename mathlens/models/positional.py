"""Positional encodings: how token position enters the initial condition f (or the attention kernel).

``learned`` and ``sinusoidal`` add a vector to the embedding (they only change f = u^0); ``rope``
rotates q and k (a relative-position kernel); ``alibi`` adds −m_h (x − x̃) to the scores; ``none``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

POSITIONALS = ("learned", "sinusoidal", "rope", "alibi", "none")


class Positional(nn.Module):
    """``embed(T)`` -> (T, D) vector added to token embeddings or None; ``rope(T)`` -> (cos, sin) or None."""

    def __init__(self, kind: str, block_size: int, n_embd: int, head_dim: int, rope_theta: float = 10000.0,
                 angles_float32: bool = False):
        super().__init__()
        self.kind = kind
        self.angles_float32 = angles_float32  # RoPE angles in float32 even for float64 models (HF Llama)
        if kind == "learned":
            self.weight = nn.Parameter(torch.zeros(block_size, n_embd))
        elif kind == "sinusoidal":
            pos = torch.arange(block_size, dtype=torch.float64)[:, None]
            freq = torch.exp(torch.arange(0, n_embd, 2, dtype=torch.float64) * (-math.log(10000.0) / n_embd))
            table = torch.zeros(block_size, n_embd, dtype=torch.float64)
            table[:, 0::2] = torch.sin(pos * freq)
            table[:, 1::2] = torch.cos(pos * freq)[:, : n_embd // 2]
            self.register_buffer("table", table.float(), persistent=False)
        self.head_dim, self.rope_theta = head_dim, rope_theta

    def embed(self, T: int, device, dtype) -> Tensor | None:
        if self.kind == "learned":
            return self.weight[:T]
        if self.kind == "sinusoidal":
            return self.table[:T].to(device=device, dtype=dtype)
        return None

    def rope(self, T: int, device, dtype) -> tuple[Tensor, Tensor] | None:
        """(cos, sin) of shape (T, head_dim), ``head_dim`` being the rotated features per head (all of them unless
        ``GPTConfig.rope_fraction`` < 1), computed in float32 (in float64 for float64 models unless
        ``angles_float32``, which reproduces Hugging Face Llama and GPT-NeoX exactly), then cast to ``dtype``."""
        if self.kind != "rope":
            return None
        work = torch.float64 if dtype == torch.float64 and not self.angles_float32 else torch.float32
        d = self.head_dim  # θ^(-2i/d) in float32 like HF, recomputed so that model.to(bf16) cannot round it
        inv_freq = 1.0 / (self.rope_theta ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
        t = torch.arange(T, device=device, dtype=work)
        freqs = torch.outer(t, inv_freq.to(work))
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)
