"""The Continuous Transformer 𝒩_θ : f ↦ u(·, ·, T) with time-dependent controls θ(t) (THEORY §2.2-§3).

The controls θ(t) = {W^Q, W^K, W^V, W^O, W_j, b_j, σ1, σ2}(t) are functions of time stored as K control
points θ_k (trainable Parameters, shape (K, *shape of the parameter in one block)):

- ``interpolation="piecewise"``: θ(t) = θ_k on [kT/K, (k+1)T/K)  — K ordinary untied layers;
- ``"linear"``: piecewise linear through knots t_k = kT/(K−1);  ``"cubic"``: C¹ cubic Hermite (Catmull-Rom).

The same model is evaluated with any number of steps N_t (dt = T/N_t) and any scheme of
:mod:`mathlens.flow.schemes`: each step builds an ``ops`` object from θ frozen at t^{n−1} (``sample_at="left"``,
the paper's θ^n) or at t^{n−1/2} (``"midpoint"``, second order for smooth θ) and calls the scheme function.
Schemes: ``lie``, ``strang`` (Euler substeps), ``parallel`` (with post-norm this is the unsplit
Euler-projection scheme u ← P_{S1}(u + dt(𝒜 + 𝓕)(u))), ``strang_heun`` (Strang with Heun substeps on
the tangent-projected fields Π_{T_u S1}𝒜, Π_{T_u S1}𝓕, each followed by the projection = a retraction) and
``strang_heun_ambient`` (the same with Heun on the unprojected fields: still first order, THEORY §13).
:meth:`ContinuousTransformer.vector_field` is the right-hand side used by the RK4 reference solver.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from mathlens.errors import MathlensError
from mathlens.flow.block import FlowBlock
from mathlens.flow.config import FlowConfig, check_choice
from mathlens.flow.manifold import heun_step, tangent_project
from mathlens.flow.schemes import STEPS

INTERPOLATIONS = ("piecewise", "linear", "cubic")
CT_SCHEMES = ("lie", "strang", "parallel", "strang_heun", "strang_heun_ambient")
SAMPLE_AT = ("left", "midpoint")


def default_sample_at(scheme: str) -> str:
    """Where a step freezes θ by default: "midpoint" for the ``strang_heun`` variants (second order needs θ at
    t + dt/2; frozen at t their order is 1 for a time-dependent θ), "left" (the paper's θ^n) otherwise."""
    return "midpoint" if scheme.startswith("strang_heun") else "left"


def interpolation_weights(t: float, T: float, n_controls: int, kind: str) -> dict[int, float]:
    """θ(t) = Σ_k c_k θ_k: the coefficients {k: c_k} of the control points at time t ∈ [0, T]."""
    K = n_controls
    if kind == "piecewise":
        return {min(max(int(math.floor(t * K / T + 1e-9)), 0), K - 1): 1.0}
    s = min(max(t * (K - 1) / T, 0.0), K - 1.0)
    k = min(int(math.floor(s)), K - 2)
    lam = s - k
    if kind == "linear":
        return {k: 1.0 - lam, k + 1: lam}
    # cubic Hermite with Catmull-Rom slopes m_k = (θ_{k+1} − θ_{k−1})/2, one-sided at the ends
    h00, h10 = 2 * lam**3 - 3 * lam**2 + 1, lam**3 - 2 * lam**2 + lam
    h01, h11 = -2 * lam**3 + 3 * lam**2, lam**3 - lam**2
    w: dict[int, float] = {}

    def add(i, c):
        w[i] = w.get(i, 0.0) + c

    def slope(i, c):  # c · m_i as weights on control points
        lo, hi = max(i - 1, 0), min(i + 1, K - 1)
        add(hi, c / (hi - lo))
        add(lo, -c / (hi - lo))

    add(k, h00)
    add(k + 1, h01)
    slope(k, h10)
    slope(k + 1, h11)
    return w


class _StepOps:
    """The operator interface of :mod:`mathlens.flow.schemes` for one frozen θ (the template block).

    Strang's first half step uses the same 𝓕 and projection as the last (one equation, one 𝓕(t)).
    """

    def __init__(self, block: FlowBlock):
        self.block = block
        self.norm_attn, self.norm_ffn, self.norm_pre = block.norm_attn, block.norm_ffn, block.norm_ffn

    def attention(self, u: Tensor) -> Tensor:
        return self.block.attn(u)

    def feed_forward(self, u: Tensor) -> Tensor:
        return self.block.ffn(u)

    def feed_forward_step(self, u: Tensor, dt: float) -> Tensor:
        return self.block.ffn.step(u, dt)

    def feed_forward_pre(self, u: Tensor) -> Tensor:
        return self.feed_forward(u)

    def feed_forward_pre_step(self, u: Tensor, dt: float) -> Tensor:
        return self.feed_forward_step(u, dt)


class _HeunOps(_StepOps):
    """Each substep solved by one Heun step of the (unprojected, ambient) field; the projection follows."""

    def attention_step(self, u: Tensor, dt: float) -> Tensor:
        return heun_step(lambda v, _t: self.attention(v), u, 0.0, dt)

    def feed_forward_step(self, u: Tensor, dt: float) -> Tensor:
        return heun_step(lambda v, _t: self.feed_forward(v), u, 0.0, dt)


class _TangentHeunOps(_HeunOps):
    """Fields projected onto T_u S1, each substep solved by one Heun step (the projection follows)."""

    def attention(self, u: Tensor) -> Tensor:
        return tangent_project(self.block.attn(u), u)

    def feed_forward(self, u: Tensor) -> Tensor:
        return tangent_project(self.block.ffn(u), u)


class _Runner(nn.Module):
    """Runs a scheme (or the vector field) on the template block, whose parameters are set to θ(t) first."""

    def __init__(self, block: FlowBlock):
        super().__init__()
        self.block = block

    def forward(self, u: Tensor, dt: float, scheme: str, norm_position: str, residual: str, skip: bool,
                field: bool = False) -> Tensor:
        b = self.block
        if field:
            if norm_position == "pre":
                return b.attn(b.norm_attn(u)) + b.ffn(b.norm_ffn(u))
            return tangent_project(b.attn(u) + b.ffn(u), u)
        ops = {"strang_heun": _TangentHeunOps, "strang_heun_ambient": _HeunOps}.get(scheme, _StepOps)(b)
        step = STEPS["strang" if scheme.startswith("strang") else scheme]
        return step(u, ops, dt=dt, norm_position=norm_position, residual=residual, skip=skip)


class ContinuousTransformer(nn.Module):
    """𝒩_θ with controls θ(t) interpolated from ``n_controls`` points on [0, T]; u: (B, N_x, N_y).

    ``cfg`` gives the operators and every erratum flag (see :class:`FlowConfig`); ``cfg.scheme`` and
    ``cfg.norm_position`` are the defaults of :meth:`forward`; ``cfg.dt`` is not used (dt = T / n_steps).
    Positions enter only through the initial state f (the paper's model; no RoPE / ALiBi inside θ).
    The controls are ``self.controls[name]``: (K, *shape), ``name`` = a FlowBlock parameter name with "." -> "__".
    """

    def __init__(self, cfg: FlowConfig, n_controls: int = 4, T: float = 1.0, interpolation: str = "piecewise",
                 seed: int = 0, weight_std: float | None = None, bias_std: float = 0.0):
        super().__init__()
        check_choice("interpolation", interpolation, INTERPOLATIONS)
        if not isinstance(n_controls, int) or n_controls < 1:
            raise MathlensError(f"n_controls = {n_controls!r} is invalid (must be a positive integer)")
        if interpolation != "piecewise" and n_controls < 2:
            raise MathlensError(f"interpolation = {interpolation!r} needs n_controls ≥ 2, got {n_controls}")
        if not T > 0:
            raise MathlensError(f"T = {T!r} is invalid (must be > 0)")
        self.cfg, self.T, self.interpolation, self.n_controls = cfg, float(T), interpolation, n_controls
        template = FlowBlock(dataclasses.replace(cfg, scheme="lie"))
        self.__dict__["_runner"] = _Runner(template)  # not a submodule: its parameters are replaced by θ(t)
        self.names = [name for name, _ in template.named_parameters()]
        self._shapes = [p.shape for _, p in template.named_parameters()]
        self._sizes = [p.numel() for _, p in template.named_parameters()]
        self._slots = {name: (template.get_submodule(name.rpartition(".")[0]), name.rpartition(".")[2])
                       for name in self.names}
        self.controls = nn.ParameterDict({
            self._key(name): nn.Parameter(p.detach().unsqueeze(0).repeat(n_controls, *([1] * p.dim())))
            for name, p in template.named_parameters()
        })
        self.reset_controls(seed, weight_std, bias_std)

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    @torch.no_grad()
    def reset_controls(self, seed: int, weight_std: float | None = None, bias_std: float = 0.0,
                       sigma1: float = 0.0, sigma2: float = 1.0) -> None:
        """Independent random control points: matrices ~ N(0, weight_std²) (default weight_std = 1/√fan_in, so
        that the operators are O(1)), biases ~ N(0, bias_std²), norm gains 1 / σ2, shifts 0 / σ1 (constant in t)."""
        gen = torch.Generator().manual_seed(seed)
        for name in self.names:
            p = self.controls[self._key(name)]
            if name.endswith("sigma1"):
                p.fill_(sigma1)
            elif name.endswith("sigma2"):
                p.fill_(sigma2)
            elif "norm" in name:
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif p.dim() >= 3:
                std = weight_std if weight_std is not None else 1.0 / math.sqrt(p.shape[-1])
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * std)
            else:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * bias_std)

    @classmethod
    def from_blocks(cls, blocks, T: float | None = None) -> ContinuousTransformer:
        """Piecewise-constant controls from a stack of :class:`FlowBlock` (θ_k = block k); T defaults to
        K·cfg.dt, so that ``forward(u, n_steps=K)`` reproduces the stack."""
        blocks = list(blocks)
        if not blocks:
            raise MathlensError("from_blocks needs at least one FlowBlock")
        cfg = blocks[0].cfg
        if any(getattr(b.attn, "alibi", None) is not None for b in blocks):
            raise MathlensError("from_blocks: ALiBi score biases are not part of θ(t) (positions enter only through f)")
        model = cls(cfg, n_controls=len(blocks), T=T if T is not None else len(blocks) * cfg.dt)
        model.to(next(iter(blocks[0].parameters())).dtype)
        with torch.no_grad():
            for k, block in enumerate(blocks):
                params = dict(block.named_parameters())
                extra = sorted(set(params) - set(model.names))
                if extra:
                    raise MathlensError(f"from_blocks: parameters {extra} have no place in a Lie-step template "
                                        f"(scheme = {cfg.scheme!r}, norm_position = {cfg.norm_position!r})")
                for name in model.names:
                    model.controls[cls._key(name)][k].copy_(params[name])
        return model

    def _flat_controls(self) -> Tensor:
        """All control points side by side: (K, total number of entries of one block's θ)."""
        cached = self.__dict__.get("_flat_cache")
        if cached is not None:
            return cached
        return torch.cat([self.controls[self._key(n)].reshape(self.n_controls, -1) for n in self.names], dim=1)

    @contextmanager
    def cached_controls(self):
        """Concatenate the control points once for many evaluations (a forward pass, a reference solve).

        Do not change the controls inside the block; gradients flow through the cached tensor as usual."""
        self.__dict__["_flat_cache"] = None
        self.__dict__["_flat_cache"] = self._flat_controls()
        try:
            yield
        finally:
            self.__dict__["_flat_cache"] = None

    def controls_at(self, t: float) -> dict[str, Tensor]:
        """θ(t) = Σ_k c_k(t) θ_k as {parameter name of one block: tensor} (a piece itself is returned exactly)."""
        w = interpolation_weights(float(t), self.T, self.n_controls, self.interpolation)
        flat = self._flat_controls()
        if len(w) == 1 and next(iter(w.values())) == 1.0:
            values = flat[next(iter(w))]
        else:
            coef = torch.zeros(self.n_controls, dtype=flat.dtype, device=flat.device)
            for k, c in w.items():
                coef[k] = c
            values = coef @ flat
        return {name: v.view(shape) for name, v, shape in
                zip(self.names, torch.split(values, self._sizes), self._shapes)}

    def _call(self, u: Tensor, t: float, **kwargs) -> Tensor:
        c = self.cfg
        kw = dict(dt=0.0, scheme="lie", norm_position=c.norm_position, residual=c.residual, skip=c.skip)
        kw.update(kwargs)
        runner = self._runner
        if runner.training != self.training:  # the hidden template follows train() / eval() (dropout)
            runner.train(self.training)
        # Put θ(t) into the template (what torch.func.functional_call does, without its per-call bookkeeping;
        # tied parameters, e.g. share_norms, live in one module and are set once).
        for name, value in self.controls_at(t).items():
            module, attr = self._slots[name]
            module._parameters[attr] = value
        return runner(u, **kw)

    def vector_field(self, u: Tensor, t: float, norm_position: str | None = None) -> Tensor:
        """Right-hand side at time t: Π_{T_u S1}(𝒜(u) + 𝓕(u)) (post-norm) or 𝒜(Pu) + 𝓕(Pu) (pre-norm)."""
        return self._call(u, t, norm_position=norm_position or self.cfg.norm_position, field=True)

    def step(self, u: Tensor, t: float, dt: float, scheme: str | None = None, norm_position: str | None = None,
             sample_at: str | None = None) -> Tensor:
        """One step u(t) -> u(t + dt) of ``scheme`` with θ frozen at t (left) or t + dt/2 (midpoint); default
        :func:`default_sample_at` (midpoint for the second-order Heun variants, whose order a left θ would spoil)."""
        scheme = scheme or self.cfg.scheme
        check_choice("scheme", scheme, CT_SCHEMES)
        sample_at = sample_at or default_sample_at(scheme)
        check_choice("sample_at", sample_at, SAMPLE_AT)
        norm_position = norm_position or self.cfg.norm_position
        if scheme.startswith("strang_heun") and (norm_position != "post" or self.cfg.ffn_form != "standard"
                                        or self.cfg.residual != "euler"):
            raise MathlensError(f"scheme = {scheme!r} needs norm_position = 'post', ffn_form = 'standard' "
                                "and residual = 'euler'")
        ts = t + 0.5 * dt if sample_at == "midpoint" else t
        return self._call(u, ts, dt=dt, scheme=scheme, norm_position=norm_position)

    def forward(self, u0: Tensor, n_steps: int | None = None, scheme: str | None = None,
                norm_position: str | None = None, sample_at: str | None = None, return_trajectory: bool = False):
        """u0: (B, N_x, N_y) -> u(T): (B, N_x, N_y) after ``n_steps`` steps of size T / n_steps
        (default n_steps = n_controls); with ``return_trajectory`` the states (n_steps + 1, B, N_x, N_y)."""
        n_steps = self.n_controls if n_steps is None else n_steps
        if not isinstance(n_steps, numbers.Integral) or isinstance(n_steps, bool) or n_steps < 1:
            raise MathlensError(f"n_steps = {n_steps!r} is invalid (must be a positive integer)")
        if u0.dim() != 3 or u0.shape[-1] != self.cfg.n_embd:
            raise MathlensError(f"state must have shape (batch, tokens, {self.cfg.n_embd}), got {tuple(u0.shape)}")
        n_steps = int(n_steps)
        dt = self.T / n_steps
        u, states = u0, [u0]
        with self.cached_controls():
            for n in range(n_steps):
                u = self.step(u, n * dt, dt, scheme, norm_position, sample_at)
                if return_trajectory:
                    states.append(u)
        return torch.stack(states) if return_trajectory else u
