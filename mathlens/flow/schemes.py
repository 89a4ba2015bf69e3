"""Operator-splitting schemes: one time step u^{n} -> u^{n+1} of the continuous Transformer.

The equation (THEORY §2.2, sign corrected):  u_t ∈ 𝒜(u) + 𝓕(u) − N_{S1}(u) [− N_{S2}(u)].
A scheme composes substeps of the operators held by ``ops`` (a :class:`FlowBlock`, or any object with
``attention(u)``, ``feed_forward(u)``, ``feed_forward_step(u, dt)``, ``norm_attn``/``norm_ffn`` and, for
Strang, ``feed_forward_pre``/``feed_forward_pre_step``/``norm_pre``; optionally ``attention_step(u, dt)``,
a higher-order solver of the attention substep used instead of the explicit Euler step):

- :func:`lie_step` — the paper's sequential (Lie–Trotter) splitting (13)-(17). ``norm_position="post"``:
  u ← P(u + dt𝒜(u));  u ← P(combine(u, FFN substeps)) = Vaswani's post-LN block at dt = 1.
  ``"pre"``: normalisation inside the operators, u ← u + dt𝒜(Pu); u ← u + dt𝓕(Pu) (GPT-2 / Llama).
- :func:`strang_step` — Strang–Marchuk / Macaron: ½ step of 𝓕, full step of 𝒜, ½ step of 𝓕.
- :func:`parallel_step` — the parallel splitting of App. C (59): v_k = u + K·dt·A_k(u), u ← mean_k v_k
  = u + dt(𝒜(u) + 𝓕(u)) for K = 2 (GPT-J / PaLM parallel block), then P for post-norm.

``hook(name, x)`` exposes intermediate states (the per-substep capture points).
"""

from __future__ import annotations

from torch import Tensor

from mathlens.flow.operators import euler


def _identity_hook(name: str, x: Tensor) -> Tensor:
    return x


def attention_substep(u: Tensor, ops, dt: float, skip: bool) -> Tensor:
    """Substep 1, eq. (13): explicit Euler step of the attention operator (no skip: dt𝒜(u)).

    If ``ops`` has ``attention_step(u, dt)`` (e.g. a Heun step of the tangent-projected field), it is used.
    """
    solver = getattr(ops, "attention_step", None)
    if skip and solver is not None:
        return solver(u, dt)
    a = ops.attention(u)
    return euler(u, a, dt) if skip else dt * a


def feed_forward_substeps(u: Tensor, ops, dt: float, skip: bool, pre: bool = False) -> Tensor:
    """Substeps 2+j, eq. (15): the FFN substeps (their own Euler skip included; none without skip)."""
    if not skip:
        return dt * (ops.feed_forward_pre(u) if pre else ops.feed_forward(u))
    return ops.feed_forward_pre_step(u, dt) if pre else ops.feed_forward_step(u, dt)


def combine(u_mid: Tensor, y: Tensor, residual: str) -> Tensor:
    """Substep 3+J, eq. (16): "average" ½(y + u_mid) (paper), "sum" y + u_mid, "euler" y (skip inside y)."""
    if residual == "average":
        return 0.5 * (y + u_mid)
    if residual == "sum":
        return y + u_mid
    return y


def lie_step(u: Tensor, ops, dt: float = 1.0, norm_position: str = "post", residual: str = "euler",
             skip: bool = True, hook=_identity_hook) -> Tensor:
    """One Lie (sequential) splitting step. u: (B, T, D) -> (B, T, D)."""
    if norm_position == "pre":
        a = ops.attention(ops.norm_attn(u))
        u = hook("resid_mid", euler(u, a, dt) if skip else dt * a)
        f = ops.feed_forward(ops.norm_ffn(u))
        return euler(u, f, dt) if skip else dt * f
    u = hook("attn_step", attention_substep(u, ops, dt, skip))
    u = hook("resid_mid", ops.norm_attn(u))  # substep 2, eq. (14): projection onto S1
    y = hook("ffn_step", feed_forward_substeps(u, ops, dt, skip))
    return ops.norm_ffn(combine(u, y, residual))  # substeps 3+J, 4+J: (16), (17)


def strang_step(u: Tensor, ops, dt: float = 1.0, norm_position: str = "post", residual: str = "euler",
                skip: bool = True, hook=_identity_hook) -> Tensor:
    """One Strang–Marchuk (Macaron) step: 𝓕 for dt/2, 𝒜 for dt, 𝓕 for dt/2."""
    if norm_position == "pre":  # without skip each substep's output is only its increment, as in lie_step
        f = 0.5 * dt * ops.feed_forward_pre(ops.norm_pre(u))
        u = u + f if skip else f
        a = ops.attention(ops.norm_attn(u))
        u = hook("resid_mid", euler(u, a, dt) if skip else dt * a)
        f = 0.5 * dt * ops.feed_forward(ops.norm_ffn(u))
        return u + f if skip else f
    y = feed_forward_substeps(u, ops, 0.5 * dt, skip, pre=True)
    u = ops.norm_pre(combine(u, y, residual))
    u = hook("attn_step", attention_substep(u, ops, dt, skip))
    u = hook("resid_mid", ops.norm_attn(u))
    y = hook("ffn_step", feed_forward_substeps(u, ops, 0.5 * dt, skip))
    return ops.norm_ffn(combine(u, y, residual))


def parallel_step(u: Tensor, ops, dt: float = 1.0, norm_position: str = "post", residual: str = "euler",
                  skip: bool = True, hook=_identity_hook) -> Tensor:
    """The parallel splitting (59) with K = 2: u ← u + dt(𝒜(u) + 𝓕(u)) (pre-norm: of P u), then P (post)."""
    if norm_position == "pre":
        inc = dt * (ops.attention(ops.norm_attn(u)) + ops.feed_forward(ops.norm_ffn(u)))
        return u + inc if skip else inc
    inc = dt * (ops.attention(u) + ops.feed_forward(u))
    return ops.norm_attn(u + inc if skip else inc)


STEPS = {"lie": lie_step, "strang": strang_step, "parallel": parallel_step}
