"""The twice-differentiable attention of Hessian-vector products (curvature/attention_hvp.py): same function,
gradients and second derivatives as PyTorch's math backend (float64, to roundoff), torch's gradgradcheck, every
mask kind, GQA and several row chunks; in a model it keeps no (B, h, T, T) tensor in the graph."""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import mathlens
from mathlens.errors import MathlensError
from mathlens.probes.curvature import HessianOperator
from mathlens.probes.curvature import attention_hvp as ah
from mathlens.probes.curvature.operators import ParamSpace, relative_error


def _second_order(fn, q, k, v, go, tangents, **kw):
    """(output, ∂⟨o, go⟩/∂(q, k, v), directional derivative of that gradient along ``tangents``)."""
    o = fn(q, k, v, **kw)
    g = torch.autograd.grad((o * go).sum(), (q, k, v), create_graph=True)
    hv = torch.autograd.grad(sum((a * t).sum() for a, t in zip(g, tangents)), (q, k, v))
    return (o, *g, *hv)


@pytest.mark.parametrize("case", ["plain", "causal", "float_mask", "bool_mask", "hidden_row", "gqa_causal",
                                  "causal_chunks", "mask_chunks"])
def test_attention_matches_math_backend_to_second_order(case, monkeypatch):
    if case.endswith("chunks") or case == "gqa_causal":
        monkeypatch.setattr(ah, "CHUNK_ELEMENTS", 0)  # the minimum: 8 query rows a chunk
    g = torch.Generator().manual_seed(0)
    B, h, T, d = 2, 4, 19, 5  # 3 chunks of query rows (8, 8, 3) when chunked
    hk = 2 if case == "gqa_causal" else h

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    q, k, v = rnd(B, h, T, d).requires_grad_(), rnd(B, hk, T, d).requires_grad_(), rnd(B, hk, T, d).requires_grad_()
    kw = {"is_causal": "causal" in case, "enable_gqa": case == "gqa_causal"}
    if "float_mask" in case or case == "mask_chunks":
        kw["attn_mask"] = rnd(1, h, T, T)
    if case in ("bool_mask", "hidden_row"):
        mask = torch.rand(B, 1, T, T, generator=g) > 0.3
        mask[..., 0] = True  # every row sees a key ...
        if case == "hidden_row":
            mask[1, :, 3] = False  # ... but row 3 of sequence 1 (left padding): weights 0, not NaN
        kw["attn_mask"] = mask
    go, tangents = rnd(B, h, T, d), (rnd(B, h, T, d), rnd(B, hk, T, d), rnd(B, hk, T, d))
    with sdpa_kernel(SDPBackend.MATH):
        ref = _second_order(F.scaled_dot_product_attention, q, k, v, go, tangents, **kw)
    got = _second_order(ah.attention, q, k, v, go, tangents, **kw)
    for name, a, b in zip(("out", "dq", "dk", "dv", "Hq", "Hk", "Hv"), got, ref):
        assert torch.isfinite(a).all() and (a - b).abs().max() <= 1e-12 * max(1.0, b.abs().max()), name


@pytest.mark.parametrize("case", ["mask_with_gradient", "broadcast_kv_heads", "dropout", "bfloat16", "mask_1d"])
def test_calls_it_does_not_cover_run_the_math_backend_under_the_swap(case):
    """Inside twice_differentiable_attention every call has a double backward: the ones the recompute attention does
    not cover go to PyTorch's math backend (a fused kernel would fail), with the same first and second derivatives."""
    g = torch.Generator().manual_seed(3)
    dtype = torch.bfloat16 if case == "bfloat16" else torch.float64
    B, h, T, d = 2, 2, 6, 4
    q = torch.randn(B, h, T, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    k = torch.randn(B, 1 if case == "broadcast_kv_heads" else h, T, d, generator=g, dtype=torch.float64).to(dtype)
    v = torch.randn_like(k)
    k.requires_grad_(), v.requires_grad_()
    kw = {"dropout_p": 0.5} if case == "dropout" else {}
    if case == "mask_with_gradient":
        kw["attn_mask"] = torch.randn(T, T, generator=g, dtype=dtype).requires_grad_()
    if case == "mask_1d":
        kw["attn_mask"] = torch.randn(T, generator=g, dtype=dtype)

    def hvp():
        torch.manual_seed(0)  # the same dropout mask both times
        o = F.scaled_dot_product_attention(q, k, v, **kw)
        inputs = (q, k, v) + ((kw["attn_mask"],) if case == "mask_with_gradient" else ())
        grads = torch.autograd.grad(o.float().square().sum(), inputs, create_graph=True)
        return grads + torch.autograd.grad(sum(gr.float().sum() for gr in grads), inputs)

    with sdpa_kernel(SDPBackend.MATH):
        ref = hvp()
    with ah.twice_differentiable_attention():
        got = hvp()
    assert all(torch.equal(a, b) for a, b in zip(got, ref))


def test_attention_passes_gradgradcheck(monkeypatch):
    monkeypatch.setattr(ah, "CHUNK_ELEMENTS", 0)  # 8 query rows a chunk: 2 chunks
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 11, 3, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(3))

    def fn(a, b, c):
        return ah.attention(a, b, c, is_causal=True)

    assert torch.autograd.gradcheck(fn, (q, k, v))
    assert torch.autograd.gradgradcheck(fn, (q, k, v))


def _gpt_problem(T=12):
    torch.manual_seed(0)
    model = mathlens.GPT(mathlens.GPTConfig(vocab_size=11, block_size=T, n_layer=2, n_head=2, n_embd=16))
    g = torch.Generator().manual_seed(2)
    batch = (torch.randint(0, 11, (3, T), generator=g), torch.randint(0, 11, (3, T), generator=g))
    return model, (lambda m, b: m(b[0], targets=b[1])[1]), [batch]


def test_recompute_hvp_equals_math_hvp_and_keeps_no_attention_matrix():
    """On a GPT (float32, fused attention in its forward) the default product equals the math backend's to float32
    roundoff, and its first-order graph holds no (B, h, T, T) tensor, where the math backend's holds several."""
    T = 12  # ≠ n_embd, so (T, T) is only an attention shape
    model, loss_fn, batches = _gpt_problem(T)
    v = torch.randn(ParamSpace(model).size, generator=torch.Generator().manual_seed(3))
    shapes = {}
    for attention in ("recompute", "math"):
        seen = []

        def pack(t, seen=seen):
            seen.append(tuple(t.shape))
            return t

        op = HessianOperator(model, loss_fn, batches, attention=attention, reuse_graph=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            shapes[attention] = (op.matvec(v), seen)
    assert relative_error(shapes["recompute"][0], shapes["math"][0]) <= 2e-5
    square = [s for s in shapes["math"][1] if len(s) == 4 and s[-2:] == (T, T)]
    assert len(square) >= 2 * 2  # at least two per layer
    assert not [s for s in shapes["recompute"][1] if len(s) >= 2 and s[-2:] == (T, T)]


def test_recompute_hvp_on_a_hugging_face_model_equals_math():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=13, n_positions=8, n_embd=8, n_layer=1, n_head=2, resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).double()
    x = torch.randint(0, 13, (2, 8), generator=torch.Generator().manual_seed(4))

    def loss_fn(m, b):
        return m(input_ids=b, labels=b).loss

    v = torch.randn(ParamSpace(model).size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = HessianOperator(model, loss_fn, [x], attention="recompute").matvec(v)
    ref = HessianOperator(model, loss_fn, [x], attention="math").matvec(v)
    assert relative_error(got, ref) <= 1e-10


def test_attention_setting_is_validated():
    model, loss_fn, batches = _gpt_problem()
    with pytest.raises(MathlensError, match="unknown attention"):
        HessianOperator(model, loss_fn, batches, attention="flash")
    with pytest.raises(MathlensError, match="no forward-mode AD"):
        HessianOperator(model, loss_fn, batches, method="jvp", attention="recompute")
