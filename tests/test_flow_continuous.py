"""ContinuousTransformer: controls θ(t), schemes, layers as piecewise-constant controls, training, causality
(prediction 10) and bad input."""

import dataclasses

import pytest
import torch

from mathlens import GPT, GPTConfig
from mathlens.errors import MathlensError
from mathlens.flow import ContinuousTransformer, FlowBlock, FlowConfig
from mathlens.flow.continuous import interpolation_weights
from mathlens.flow.convergence import convergence_study
from mathlens.flow.studies import paper_block_config, random_block


def _cfg(**kw):
    base = dict(n_embd=8, n_head=2, d_ff=16, activation="tanh", causal=False, block_size=6, norm_affine="scalar",
                norm_eps=0.0, share_norms=True, norm_position="post")
    base.update(kw)
    return FlowConfig(**base)


def test_interpolation_weights():
    assert interpolation_weights(0.0, 1.0, 4, "piecewise") == {0: 1.0}
    assert interpolation_weights(0.75, 1.0, 4, "piecewise") == {3: 1.0}  # t^{n-1} of step 4 of 4
    assert interpolation_weights(1.0, 1.0, 4, "piecewise") == {3: 1.0}
    w = interpolation_weights(0.25, 1.0, 3, "linear")
    assert w[0] == pytest.approx(0.5) and w[1] == pytest.approx(0.5)
    for t in (0.0, 0.13, 0.5, 0.77, 1.0):  # cubic: partition of unity, reproduces linear data exactly
        w = interpolation_weights(t, 1.0, 5, "cubic")
        assert sum(w.values()) == pytest.approx(1.0, abs=1e-14)
        assert sum(c * (2.0 + 3.0 * k / 4) for k, c in w.items()) == pytest.approx(2.0 + 3.0 * t, abs=1e-13)
    w = interpolation_weights(0.5, 1.0, 5, "cubic")  # at a knot: the control point itself
    assert abs(w[2] - 1) < 1e-14 and sum(abs(c) for k, c in w.items() if k != 2) < 1e-14


def test_controls_at_knots_and_midpoints():
    m = ContinuousTransformer(_cfg(), n_controls=3, T=2.0, interpolation="linear", seed=0).double()
    P = m.controls["attn__w_q__weight"]
    assert torch.equal(m.controls_at(1.0)["attn.w_q.weight"], P[1])
    assert torch.allclose(m.controls_at(0.5)["attn.w_q.weight"], 0.5 * (P[0] + P[1]), atol=1e-15)


def test_piecewise_controls_are_untied_layers_of_a_gpt():
    cfg = GPTConfig(vocab_size=17, block_size=8, n_layer=3, n_head=2, n_embd=8, dropout=0.0)
    gpt = GPT(cfg).double()
    u = torch.randn(2, 8, 8, dtype=torch.float64)
    ref = u
    for b in gpt.blocks:
        ref = b(ref)
    flow = ContinuousTransformer.from_blocks(gpt.blocks)
    assert flow.T == 3.0 and flow.n_controls == 3
    assert (flow(u, 3) - ref).abs().max() < 1e-14


@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_every_scheme_runs_and_refines_towards_one_limit(norm_position):
    m = ContinuousTransformer(_cfg(norm_position=norm_position), n_controls=2, interpolation="cubic", seed=1).double()
    u0 = torch.nn.functional.layer_norm(torch.randn(1, 6, 8, dtype=torch.float64), (8,))
    schemes = ["lie", "strang", "parallel"] + (["strang_heun"] if norm_position == "post" else [])
    finals = {s: m(u0, 64, s) for s in schemes}
    for s in schemes:  # consistent schemes of one equation agree to O(dt)
        assert (finals[s] - finals["lie"]).abs().max() < 0.05
    traj = m(u0, 4, "lie", return_trajectory=True)
    assert traj.shape == (5, 1, 6, 8) and torch.equal(traj[0], u0)


def test_controls_are_trainable():
    torch.manual_seed(0)
    m = ContinuousTransformer(_cfg(), n_controls=3, interpolation="linear", seed=2).double()
    u0 = torch.randn(4, 6, 8, dtype=torch.float64)
    target = torch.nn.functional.layer_norm(torch.randn(4, 6, 8, dtype=torch.float64), (8,))
    losses = []
    for _ in range(15):  # plain gradient descent on the control points
        loss = (m(u0, 6) - target).pow(2).mean()
        m.zero_grad()
        loss.backward()
        losses.append(float(loss.detach()))
        with torch.no_grad():
            for p in m.parameters():
                p -= 0.5 * p.grad
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in m.named_parameters() if "sigma" not in n)
    assert losses[-1] < 0.9 * losses[0]


def test_dropout_follows_train_and_eval():
    m = ContinuousTransformer(_cfg(dropout=0.5), n_controls=2, seed=0).double()
    u0 = torch.randn(1, 6, 8, dtype=torch.float64)
    m.eval()
    assert torch.equal(m(u0), m(u0))
    m.train()
    torch.manual_seed(0)
    assert not torch.equal(m(u0), m(u0))


def _causal_gap(fn, n=6, d=8, k=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(2, n, d, generator=gen, dtype=torch.float64)
    v = u.clone()
    v[:, k:] += torch.randn(2, n - k, d, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        a, b = fn(u), fn(v)
    return float((a[:, :k] - b[:, :k]).abs().max()), float((a[:, k:] - b[:, k:]).abs().max())


@pytest.mark.parametrize("scheme", ["lie", "strang", "parallel"])
@pytest.mark.parametrize("norm_position", ["pre", "post"])
def test_prediction10_causality_through_every_scheme(scheme, norm_position):
    cfg = _cfg(causal=True, norm_position=norm_position, scheme=scheme, norm_eps=1e-5, norm_affine="vector",
               share_norms=False)
    blocks = [random_block(cfg, seed=s) for s in range(3)]

    def stack(u):
        for b in blocks:
            u = b(u)
        return u

    past, future = _causal_gap(stack)
    assert past <= 1e-15 and future > 1e-3
    m = ContinuousTransformer(dataclasses.replace(cfg, scheme="lie"), n_controls=2, interpolation="linear",
                              seed=3).double()
    schemes = [scheme] + (["strang_heun"] if (scheme == "strang" and norm_position == "post") else [])
    for s in schemes:
        past, future = _causal_gap(lambda u, s=s: m(u, 5, s))
        assert past <= 1e-15 and future > 1e-3


def test_prediction10_causality_with_per_token_biases_and_for_the_gpt():
    cfg = paper_block_config(8, 2, 6, causal=True, ffn_bias_axis="token", relu_on_last=True)
    block = random_block(cfg, seed=5)
    past, future = _causal_gap(block)
    assert past <= 1e-15 and future > 1e-3
    for norm_position in ("pre", "post"):
        gpt = GPT(GPTConfig(vocab_size=23, block_size=8, n_layer=2, n_head=2, n_embd=8, dropout=0.0,
                            norm_position=norm_position)).double()
        idx = torch.randint(0, 23, (2, 8), generator=torch.Generator().manual_seed(0))
        idx2 = idx.clone()
        idx2[:, 5:] = (idx2[:, 5:] + 1) % 23
        a, b = gpt(idx)[0], gpt(idx2)[0]
        assert (a[:, :5] - b[:, :5]).abs().max() <= 1e-15 and (a[:, 5:] - b[:, 5:]).abs().max() > 1e-6


def test_bad_input_names_the_problem():
    with pytest.raises(MathlensError, match="n_head = 3 does not divide n_embd = 8"):
        FlowConfig(n_embd=8, n_head=3)
    with pytest.raises(MathlensError, match="scheme = 'rk4' is invalid"):
        FlowConfig(n_embd=8, n_head=2, scheme="rk4")
    with pytest.raises(MathlensError, match="positional = 'spiral' is invalid"):
        GPTConfig(vocab_size=5, n_layer=1, n_head=2, n_embd=8, positional="spiral")
    for dt in (0.0, -0.5):
        with pytest.raises(MathlensError, match="dt = .* is invalid"):
            FlowConfig(n_embd=8, n_head=2, dt=dt)
    gpt = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(MathlensError, match="length 5 is longer than the context block_size = 4"):
        gpt(torch.zeros(1, 5, dtype=torch.long))
    m = ContinuousTransformer(_cfg(), n_controls=2)
    with pytest.raises(MathlensError, match="n_steps = 0 is invalid"):
        m(torch.zeros(1, 6, 8), 0)
    with pytest.raises(MathlensError, match="scheme = 'rk4' is invalid"):
        m(torch.zeros(1, 6, 8), 2, "rk4")
    with pytest.raises(MathlensError, match=r"state must have shape \(batch, tokens, 8\)"):
        m(torch.zeros(6, 8), 2)
    with pytest.raises(MathlensError, match="strang_heun' needs norm_position = 'post'"):
        m(torch.zeros(1, 6, 8), 2, "strang_heun", norm_position="pre")
    with pytest.raises(MathlensError, match="interpolation = 'spline' is invalid"):
        ContinuousTransformer(_cfg(), interpolation="spline")
    with pytest.raises(MathlensError, match="needs n_controls ≥ 2"):
        ContinuousTransformer(_cfg(), n_controls=1, interpolation="linear")
    with pytest.raises(MathlensError, match="T = 0.0 is invalid"):
        ContinuousTransformer(_cfg(), T=0.0)
    with pytest.raises(MathlensError, match="at least 3 positive step counts"):
        convergence_study("lie", n_steps_list=(4, 8))
    alibi = GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=8, positional="alibi"))
    with pytest.raises(MathlensError, match="ALiBi score biases are not part of θ"):
        ContinuousTransformer.from_blocks(alibi.blocks)
    with pytest.raises(MathlensError, match="have no place in a Lie-step template"):
        ContinuousTransformer.from_blocks([FlowBlock(_cfg(scheme="strang"))])


def test_heun_schemes_freeze_theta_at_midpoints_by_default_and_the_reference_needs_constant_sigmas():
    from mathlens.flow.convergence import convergence_model, reference_solution

    model, u0 = convergence_model(seed=0)
    # second order needs θ(t + dt/2): the default now says so, instead of silently giving order 1
    assert torch.equal(model(u0, 8, "strang_heun"), model(u0, 8, "strang_heun", sample_at="midpoint"))
    assert torch.equal(model(u0, 8, "lie"), model(u0, 8, "lie", sample_at="left"))
    with torch.no_grad():  # a σ2 that changes in t: the retraction to the initial std would be wrong
        next(p for n, p in model.controls.items() if n.endswith("sigma2"))[1].fill_(2.0)
    with pytest.raises(MathlensError, match="constant σ1, σ2"):
        reference_solution(model, u0, n_steps=4)
