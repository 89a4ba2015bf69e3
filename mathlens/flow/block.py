"""One splitting step with its own controls θ^n: :class:`FlowBlock` = one Transformer block."""

from __future__ import annotations

from torch import Tensor, nn

from mathlens.flow.config import FlowConfig
from mathlens.flow.hooks import HookPoint
from mathlens.flow.layers import Attention, FeedForward, Norm
from mathlens.flow.schemes import STEPS


class FlowBlock(nn.Module):
    """Holds θ^n (attention, feed-forward, projections) and advances the state by one step of ``cfg.scheme``.

    Hook points: ``hook_resid_pre`` (input), ``hook_attn_step`` (post-norm: after substep 1, before its
    projection), ``hook_resid_mid`` (after the attention part), ``hook_ffn_step`` (post-norm: after the FFN
    substeps, before (16)), ``hook_resid_post`` (output). All (B, T, D).
    """

    def __init__(self, cfg: FlowConfig):
        super().__init__()
        self.cfg = cfg
        self.step_fn = STEPS[cfg.scheme]

        def norm():
            return Norm(cfg.n_embd, cfg.norm, cfg.norm_affine, cfg.norm_eps, bias=cfg.bias, upcast=cfg.hf_numerics)

        self.norm_attn = norm()
        self.attn = Attention(cfg)
        if not (cfg.scheme == "parallel" and cfg.norm_position == "post"):
            self.norm_ffn = self.norm_attn if cfg.share_norms else norm()
        self.ffn = FeedForward(cfg)
        if cfg.scheme == "strang":
            self.norm_pre = self.norm_attn if cfg.share_norms else norm()
            self.ffn_pre = FeedForward(cfg)
        for name in ("resid_pre", "attn_step", "resid_mid", "ffn_step", "resid_post"):
            setattr(self, f"hook_{name}", HookPoint())
        self._rope = None

    # the operator interface used by mathlens.flow.schemes
    def attention(self, u: Tensor) -> Tensor:
        return self.attn(u, self._rope)

    def feed_forward(self, u: Tensor) -> Tensor:
        return self.ffn(u)

    def feed_forward_step(self, u: Tensor, dt: float) -> Tensor:
        return self.ffn.step(u, dt)

    def feed_forward_pre(self, u: Tensor) -> Tensor:
        return self.ffn_pre(u)

    def feed_forward_pre_step(self, u: Tensor, dt: float) -> Tensor:
        return self.ffn_pre.step(u, dt)

    def _hook(self, name: str, x: Tensor) -> Tensor:
        return getattr(self, f"hook_{name}")(x)

    def forward(self, u: Tensor, rope=None) -> Tensor:
        """u: (B, T, D) -> (B, T, D); ``rope`` = (cos, sin) of shape (T, head_dim) or None."""
        self._rope = rope
        c = self.cfg
        u = self.hook_resid_pre(u)
        out = self.step_fn(u, self, dt=c.dt, norm_position=c.norm_position, residual=c.residual, skip=c.skip,
                           hook=self._hook)
        self._rope = None
        return self.hook_resid_post(out)
