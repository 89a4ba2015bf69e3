"""THEORY §7: the ViT as pre-/post-processing around the flow and the convolutional Transformer (prediction 14)."""

import math

import pytest
import torch

from mathlens.errors import MathlensError
from mathlens.flow import FlowConfig, attention_operator
from mathlens.flow.extensions import (
    ConvFlowBlock,
    VisionFlowTransformer,
    conv_attention_operator,
    conv_field,
    patchify,
    vit_embed,
    vit_readout,
)


def _vit_cfg():
    return FlowConfig(n_embd=8, n_head=2, d_ff=16, activation="gelu", causal=False, block_size=17,
                      norm_position="pre", dropout=0.0)


def _images(seed, n=3, size=8):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, size, size, generator=gen, dtype=torch.float64)


def test_vit_pre_and_post_processing_maps():
    imgs = _images(0)
    R = patchify(imgs, 2)
    assert R.shape == (3, 16, 4)
    assert torch.equal(R[0, 1], imgs[0, 0, 0:2, 2:4].reshape(-1))  # second patch of the first row
    E, v0, B = torch.randn(4, 8, dtype=torch.float64), torch.randn(8, dtype=torch.float64), torch.randn(8, 5,
                                                                                                        dtype=torch.float64)
    u0 = vit_embed(R, E, v0)
    assert u0.shape == (3, 17, 8) and torch.equal(u0[:, 0], v0.expand(3, 8))
    assert (u0[:, 1:] - R @ E).abs().max() == 0
    u = torch.randn(3, 17, 8, dtype=torch.float64)
    e1 = torch.zeros(17, dtype=torch.float64)
    e1[0] = 1
    assert (vit_readout(u, B) - (e1 @ u) @ B).abs().max() < 1e-14


def test_vit_without_positions_is_invariant_to_patch_permutations():
    model = VisionFlowTransformer(_vit_cfg(), image_size=8, patch=2, n_out=5, n_controls=2).double()
    imgs = _images(1)
    out = model(imgs)
    assert out.shape == (3, 5)
    u0 = model.initial_state(imgs)
    perm = torch.cat([torch.zeros(1, dtype=torch.long), 1 + torch.randperm(16, generator=torch.Generator().manual_seed(0))])
    permuted = vit_readout(model.flow(u0[:, perm]), model.B_out)
    assert (permuted - out).abs().max() < 1e-12  # class-token read-out of a permutation-equivariant flow
    positional = VisionFlowTransformer(_vit_cfg(), image_size=8, patch=2, n_out=5, n_controls=2, position=True).double()
    u0 = positional.initial_state(imgs)
    moved = vit_readout(positional.flow(u0[:, perm] - positional.pos[perm] + positional.pos), positional.B_out)
    assert (moved - positional(imgs)).abs().max() > 1e-3
    loss = model(imgs).pow(2).mean()
    loss.backward()
    assert model.E.grad.abs().sum() > 0 and model.v0.grad.abs().sum() > 0


def test_vit_bad_input():
    with pytest.raises(MathlensError, match="patch size 3 does not divide the image size 8"):
        VisionFlowTransformer(_vit_cfg(), image_size=8, patch=3)
    with pytest.raises(MathlensError, match="causal = False"):
        VisionFlowTransformer(FlowConfig(n_embd=8, n_head=2, block_size=17), image_size=8, patch=2)


def _token_images(seed, n_tokens=5, size=8):
    """Synthetic tokens: Gaussian blobs at random centres on a periodic 8×8 grid plus noise."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")
    centres = torch.randint(0, size, (n_tokens, 2), generator=gen)
    blobs = torch.stack([torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 4.0) for cy, cx in centres.tolist()])
    return (blobs + 0.1 * torch.randn(n_tokens, size, size, generator=gen, dtype=torch.float64))[None]


def test_conv_field_is_a_convolution_with_circular_boundary():
    u = _token_images(0)
    kernel = torch.randn(3, 3, dtype=torch.float64)
    expected = sum(kernel[a + 1, b + 1] * torch.roll(u, shifts=(a, b), dims=(-2, -1))
                   for a in (-1, 0, 1) for b in (-1, 0, 1))  # Σ_ξ W(ξ) u(y − ξ)
    assert (conv_field(u, kernel) - expected).abs().max() < 1e-13


def test_conv_attention_is_attention_with_circulant_weights_and_fewer_parameters():
    u = _token_images(1)
    gen = torch.Generator().manual_seed(2)
    kq, kk, kv = (torch.randn(3, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    out, _ = conv_attention_operator(u, kq, kk, kv)
    basis = torch.eye(64, dtype=torch.float64).view(1, 64, 8, 8)
    dense = [conv_field(basis, k).reshape(64, 64) for k in (kq, kk, kv)]  # row m = image of e_m
    ref, _ = attention_operator(u.reshape(1, 5, 64), *dense, None, n_heads=1, scale=1 / math.sqrt(64))
    assert (out.reshape(1, 5, 64) - ref).abs().max() < 1e-13
    # parameters of a whole conv step: 5 kernels k² + 2 biases + σ1, σ2 (dense Q/K/V alone: 3 (HW)² = 12288)
    assert sum(p.numel() for p in ConvFlowBlock(kernel_size=3).parameters()) == 5 * 9 + 4


def test_prediction14_shift_equivariance():
    u = _token_images(3)
    gen = torch.Generator().manual_seed(4)
    kq, kk, kv = (torch.randn(3, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    shift = (2, -3)

    def roll(x):
        return torch.roll(x, shifts=shift, dims=(-2, -1))

    assert (conv_field(roll(u), kq) - roll(conv_field(u, kq))).abs().max() < 1e-13
    _, g = conv_attention_operator(u, kq, kk, kv, need_weights=True)
    _, g_shift = conv_attention_operator(roll(u), kq, kk, kv, need_weights=True)
    assert (g - g_shift).abs().max() < 1e-14  # scores invariant to a common shift of all token images
    # a dense (non-circulant) W^Q breaks it
    wq = torch.randn(64, 64, generator=gen, dtype=torch.float64) / 8
    dense = (u.reshape(1, 5, 64) @ wq).reshape(1, 5, 8, 8)
    assert (roll(dense) - (roll(u).reshape(1, 5, 64) @ wq).reshape(1, 5, 8, 8)).abs().max() > 1e-2
    block = ConvFlowBlock(kernel_size=3, dt=0.5, token_embedding=True, seed=5).double()
    out = block(u)
    assert (block(roll(u)) - roll(out)).abs().max() < 1e-12
    flat = out.flatten(-2)  # post-norm: every token image lies on S1(σ1, σ2)
    assert (flat.mean(-1) - block.sigma1).abs().max() < 1e-12
    assert (flat.var(-1, unbiased=False) - block.sigma2**2).abs().max() < 1e-12


def test_conv_block_bad_input():
    with pytest.raises(MathlensError, match="kernel_size = 4 is invalid"):
        ConvFlowBlock(kernel_size=4)
    with pytest.raises(MathlensError, match="dt = 0 is invalid"):
        ConvFlowBlock(dt=0)
    with pytest.raises(MathlensError, match=r"shape \(batch, tokens, H, W\)"):
        ConvFlowBlock()(torch.zeros(5, 8, 8))
