"""Measurements of THEORY's checkable predictions 1, 4, 5, 9 on random instances (float64).

Each function takes a ``seed`` and returns a small dataclass with ``to_dict()``; all run in well under a second.

- :func:`paper_block_config`, :func:`random_block`: the corrected paper-form Lie step and a random θ for it.
- :func:`block_equivalence`: one Lie step = one Vaswani post-LN block, and the deviation each erratum causes.
- :func:`dt_absorption`: a step with dt = a dt = 1 step with W^O, W_j, b_j scaled by dt.
- :func:`sphere_residual`: distance of states from S1(σ1, σ2) (per-token mean and variance errors).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from mathlens.flow.block import FlowBlock
from mathlens.flow.config import FlowConfig
from mathlens.flow.continuous import ContinuousTransformer
from mathlens.flow.reference import to_vaswani, vaswani_post_ln_block


def paper_block_config(n_embd: int = 16, n_head: int = 2, n_tokens: int = 7, **overrides) -> FlowConfig:
    """The paper's step with errata 1-2 fixed: paper FFN form (u + dt(uW_j + b_j), square W_j), ReLU on the
    hidden layer only, per-feature biases, average residual, eps = 0, scalar σ1, σ2 shared by both LNs."""
    kw = dict(n_embd=n_embd, n_head=n_head, block_size=n_tokens, causal=False, ffn_form="paper", activation="relu",
              relu_on_last=False, ffn_bias_axis="feature", residual="average", norm_eps=0.0, norm_affine="scalar",
              share_norms=True, norm_position="post", scheme="lie", dt=1.0)
    kw.update(overrides)
    return FlowConfig(**kw)


@torch.no_grad()
def random_block(cfg: FlowConfig, seed: int, std: float = 0.3, bias_std: float = 0.5) -> FlowBlock:
    """A FlowBlock in float64 with weights ~ N(0, std²), biases ~ N(0, bias_std²), σ2 ∈ [0.5, 1.5], σ1 ~ N(0, ¼)."""
    gen = torch.Generator().manual_seed(seed)
    block = FlowBlock(cfg).double()
    for name, p in block.named_parameters():
        r = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        if name.endswith("sigma2"):
            p.copy_(0.5 + torch.rand(p.shape, generator=gen, dtype=torch.float64))
        elif name.endswith("sigma1"):
            p.copy_(0.5 * r)
        elif "norm" in name:
            p.copy_((1.0 + 0.2 * r) if name.endswith("weight") else 0.2 * r)
        else:
            p.copy_(r * (std if p.dim() >= 2 else bias_std))
    return block


def _random_state(seed: int, n_tokens: int, n_embd: int, batch: int = 3) -> Tensor:
    gen = torch.Generator().manual_seed(seed + 7919)
    return torch.randn(batch, n_tokens, n_embd, generator=gen, dtype=torch.float64)


def _variant(block: FlowBlock, **changes) -> FlowBlock:
    """The same θ under changed settings (parameters absent in the new config are left at their init)."""
    other = FlowBlock(dataclasses.replace(block.cfg, **changes)).double()
    other.load_state_dict(block.state_dict(), strict=False)
    return other


def _max(x: Tensor) -> float:
    return float(x.detach().abs().max())


@dataclass
class BlockEquivalence:
    """Max abs deviations (float64) from a textbook post-LN block, per erratum toggle (THEORY §5.3)."""

    corrected: float  # one corrected Lie step vs one Vaswani block: < 1e-12
    stacked: float  # n_layers steps (and the piecewise-constant ContinuousTransformer) vs n_layers blocks
    relu_on_last: float  # erratum 5: O(1)
    token_bias: float  # erratum 6: per-token biases b_j(x) vs the same block without FFN biases: O(1)
    token_bias_equivariance: float  # ‖B(Πu) − ΠB(u)‖ with per-token biases: O(1)
    feature_bias_equivariance: float  # same with per-feature biases: ~1e-15
    average_vs_sum: float  # ½(a + b) vs a + b before the LN at eps = 0: ~1e-15
    eps: float
    eps_deviation: float  # average vs sum at eps > 0: O(eps/β)
    eps_ratio_error: float  # |measured ratio − √((β+ε)/(β+4ε))| per token: ~1e-15
    eps_first_order_error: float  # max |measured relative change − (−3ε/(2β))|: O((ε/β)²)
    eps_relative_change: float  # mean measured relative change of LN output (centred)
    eps_relative_predicted: float  # mean −3ε/(2β)
    eps_over_beta_max: float  # max ε/β over tokens (the first-order error is ≤ 5(ε/β)²)
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def block_equivalence(seed: int = 0, n_tokens: int = 7, n_embd: int = 16, n_head: int = 2, n_layers: int = 3,
                      eps: float = 1e-3) -> BlockEquivalence:
    """Prediction 1 (and 5): the corrected Lie step is a Vaswani post-LN block; deviations per erratum."""
    cfg = paper_block_config(n_embd, n_head, n_tokens)
    u = _random_state(seed, n_tokens, n_embd)
    block = random_block(cfg, seed)
    corrected = _max(block(u) - vaswani_post_ln_block(u, to_vaswani(block)))

    blocks = [random_block(cfg, seed + 1000 * (i + 1)) for i in range(n_layers)]
    x = y = u
    for b in blocks:
        x, y = b(x), vaswani_post_ln_block(y, to_vaswani(b))
    z = ContinuousTransformer.from_blocks(blocks)(u, n_layers)
    stacked = max(_max(x - y), _max(z - y))

    relu_on_last = _max(_variant(block, relu_on_last=True)(u) - vaswani_post_ln_block(u, to_vaswani(block)))

    token = _variant(block, ffn_bias_axis="token")
    gen = torch.Generator().manual_seed(seed + 17)
    token.ffn.b_in_token.copy_(torch.randn(n_tokens, generator=gen, dtype=torch.float64))
    token.ffn.b_out_token.copy_(torch.randn(n_tokens, generator=gen, dtype=torch.float64))
    no_bias = _variant(block)
    no_bias.ffn.w_in.bias.zero_()
    no_bias.ffn.w_out.bias.zero_()
    token_bias = _max(token(u) - vaswani_post_ln_block(u, to_vaswani(no_bias)))
    perm = torch.randperm(n_tokens, generator=gen)
    token_eq = _max(token(u[:, perm]) - token(u)[:, perm])
    feature_eq = _max(block(u[:, perm]) - block(u)[:, perm])

    average_vs_sum = _max(block(u) - _variant(block, residual="sum")(u))

    avg, summ = _variant(block, norm_eps=eps), _variant(block, norm_eps=eps, residual="sum")
    out_avg, out_sum = avg(u), summ(u)
    mid = summ.norm_attn(u + summ.attention(u))
    v = mid + summ.feed_forward_step(mid, 1.0)  # input of the last LN in the sum form (a + b)
    beta = v.var(-1, unbiased=False)
    s1 = block.norm_attn.sigma1
    ratio = (out_avg - s1).norm(dim=-1) / (out_sum - s1).norm(dim=-1)
    exact = torch.sqrt((beta + eps) / (beta + 4 * eps))
    first = -1.5 * eps / beta
    return BlockEquivalence(
        corrected=corrected, stacked=stacked, relu_on_last=relu_on_last, token_bias=token_bias,
        token_bias_equivariance=token_eq, feature_bias_equivariance=feature_eq, average_vs_sum=average_vs_sum,
        eps=eps, eps_deviation=_max(out_avg - out_sum), eps_ratio_error=_max(ratio - exact),
        eps_first_order_error=_max(ratio - 1 - first), eps_relative_change=float((ratio - 1).mean()),
        eps_relative_predicted=float(first.mean()), eps_over_beta_max=float((eps / beta).max()), seed=seed)


@dataclass
class DtAbsorption:
    """Prediction 4: max |step_dt(u) − step_1(u; W^O, b^O, W_j, b_j scaled by dt)|."""

    dt: float
    max_diff: float
    step_change: float  # max |step_dt(u) − step_1(u)| without rescaling (shows dt matters)
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def dt_absorption(seed: int = 0, dt: float = 0.3, n_tokens: int = 7, n_embd: int = 16, n_head: int = 2) -> DtAbsorption:
    """A paper-form step with step dt equals a dt = 1 step with W^O ← dt W^O, W_j ← dt W_j, b_j ← dt b_j."""
    block = random_block(paper_block_config(n_embd, n_head, n_tokens, dt=dt), seed)
    unit = _variant(block, dt=1.0)
    rescaled = _variant(block, dt=1.0)
    for layer in (rescaled.attn.w_o, rescaled.ffn.w_in, rescaled.ffn.w_out):
        layer.weight.mul_(dt)
        layer.bias.mul_(dt)
    u = _random_state(seed, n_tokens, n_embd)
    return DtAbsorption(dt=dt, max_diff=_max(block(u) - rescaled(u)), step_change=_max(block(u) - unit(u)), seed=seed)


def sphere_residual(u: Tensor, sigma1, sigma2) -> dict:
    """Prediction 9: max over tokens of |mean_y u − σ1| and |var_y u − σ2²| for u: (..., N_y)."""
    mean = u.mean(-1)
    var = u.var(-1, unbiased=False)
    return {"mean_error": _max(mean - sigma1), "var_error": _max(var - sigma2**2)}
