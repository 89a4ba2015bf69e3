"""A decoder-only language model on the causal flow.

    GPT = unembedding ∘ final norm ∘ (N_t steps of the splitting scheme) ∘ (token embedding + position)

Each block is one time step of :mod:`mathlens.flow` (``scheme`` = lie | strang | parallel,
``norm_position`` = pre | post) with its own controls θ^n. ``forward(idx, targets=None) -> (logits, loss)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mathlens.errors import MathlensError
from mathlens.flow.block import FlowBlock
from mathlens.flow.config import FlowConfig, check_choice, check_positive
from mathlens.flow.hooks import HookPoint
from mathlens.flow.layers import Norm, alibi_slopes
from mathlens.models.positional import POSITIONALS, Positional
from mathlens.models.sampling import sample_next


@dataclass
class GPTConfig(FlowConfig):
    """A GPT: the step settings of :class:`~mathlens.flow.config.FlowConfig` plus the model around the flow."""

    vocab_size: int = 50304
    n_layer: int = 12
    positional: str = "learned"
    rope_theta: float = 10000.0
    rope_fraction: float = 1.0  # share of each head's features that RoPE rotates (GPT-NeoX/Pythia: 0.25)
    tie_embeddings: bool = True
    final_norm: bool = True
    init_std: float = 0.02

    def __post_init__(self):
        super().__post_init__()
        check_positive("vocab_size", self.vocab_size)
        check_positive("n_layer", self.n_layer)
        check_choice("positional", self.positional, POSITIONALS)
        if not 0 < self.rope_fraction <= 1:
            raise MathlensError(f"rope_fraction = {self.rope_fraction!r} is invalid (allowed: 0 < rope_fraction ≤ 1)")
        if self.positional == "rope" and (self.rope_dim % 2 or self.rope_dim == 0):
            raise MathlensError(f"positional = 'rope' rotates head_dim · rope_fraction = {self.rope_dim} features per "
                                "head, which must be even and > 0")

    @property
    def rope_dim(self) -> int:
        """Features per head that RoPE rotates: ``int(head_dim · rope_fraction)`` (Hugging Face's rounding)."""
        return int(self.head_dim * self.rope_fraction)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, where: str = "model config") -> GPTConfig:
        from mathlens.config import from_dict

        return from_dict(cls, data, where)


class GPT(nn.Module):
    """Decoder-only LM. Hook points: ``hook_embed`` (u^0), ``blocks.{i}.*`` (see FlowBlock), ``hook_final``."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.pos = Positional(c.positional, c.block_size, c.n_embd, c.rope_dim, c.rope_theta,
                              angles_float32=c.hf_numerics)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(FlowBlock(c) for _ in range(c.n_layer))
        if c.positional == "alibi":
            slopes = alibi_slopes(c.n_head)
            for block in self.blocks:
                block.attn.set_alibi(slopes)
        self.ln_f = Norm(c.n_embd, c.norm if c.final_norm else "none", c.norm_affine, c.norm_eps, bias=c.bias,
                         upcast=c.hf_numerics)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.hook_embed, self.hook_final = HookPoint(), HookPoint()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """GPT-2 / nanoGPT initialisation: N(0, 0.02); output maps of each step scaled by 1/√(2 n_layer)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                scaled = name.endswith(("attn.w_o.weight", "ffn.w_out.weight", "ffn_pre.w_out.weight"))
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layer) if scaled else std)
            elif name.endswith(("norm_attn.weight", "norm_ffn.weight", "norm_pre.weight", "ln_f.weight", "sigma2")):
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and self.config.positional == "learned":
            n -= self.pos.weight.numel()
        return n

    def hidden_states(self, idx: Tensor) -> Tensor:
        """The final normalised state u: (B, T, D) for token ids idx: (B, T)."""
        B, T = idx.shape
        if T > self.config.block_size:
            raise MathlensError(f"sequence of length {T} is longer than the context block_size = {self.config.block_size}")
        u = self.wte(idx)
        pe = self.pos.embed(T, idx.device, u.dtype)
        if pe is not None:
            u = u + pe
        u = self.hook_embed(self.drop(u))
        rope = self.pos.rope(T, idx.device, u.dtype)
        for block in self.blocks:
            u = block(u, rope)
        return self.hook_final(self.ln_f(u))

    def forward(self, idx: Tensor, targets: Tensor | None = None):
        """idx: (B, T) int64 -> logits (B, T, V) and mean cross-entropy over targets ≠ −1 (or None)."""
        logits = self.lm_head(self.hidden_states(idx))
        loss = None
        if targets is not None:
            flat = logits.view(-1, logits.shape[-1])
            if flat.dtype not in (torch.float32, torch.float64):  # bf16/fp16 logits: the loss in float32
                flat = flat.float()
            loss = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-1)
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, seed: int | None = None) -> Tensor:
        """Append ``max_new_tokens`` sampled tokens to idx: (B, T). Same ``seed`` -> same tokens."""
        gen = None
        if seed is not None:
            gen = torch.Generator(device=idx.device)
            gen.manual_seed(seed)
        for _ in range(max_new_tokens):
            u = self.hidden_states(idx[:, -self.config.block_size:])
            logits = self.lm_head(u[:, -1, :])
            idx = torch.cat([idx, sample_next(logits, temperature, top_k, top_p, gen)], dim=1)
        return idx

    def to_hf(self):
        """The equivalent Hugging Face model (GPT2LMHeadModel or LlamaForCausalLM) with the same logits."""
        from mathlens.models.hf import to_hf

        return to_hf(self)
