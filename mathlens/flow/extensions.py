"""The paper's extensions (THEORY §7): the Vision Transformer and the convolutional Transformer.

ViT (§7.1): a learned pre-processing F and post-processing G around the flow 𝒩̄,

    u0 = F(R) = [v0 ; R E],     G(u) = [1, 0, …, 0] u B,     𝒩^{ViT} = G ∘ 𝒩̄ ∘ F,

R: (B, N_x − 1, D) flattened patches, E: (D, N_y) patch embedding, v0: (N_y,) class token, B: (N_y, d).

Convolutional Transformer (§7.2): each token is a whole image u(x, ·) on Ω_y ⊂ ℝ² (grayscale); Q, K, V are
convolutions with shared kernels, Q(x, y) = Σ_ξ W^Q(ξ) u(x, y − ξ) (circular boundary), and the score between
tokens x, x̃ is |Ω_y|^{-1/2} Σ_y Q(x, y) K(x̃, y): attention between tokens = between images. The FFN is a
convolution too, the projections act on each token image. With circular padding every operator commutes with
a common circular shift of all token images (prediction 14).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mathlens.errors import MathlensError
from mathlens.flow.config import FlowConfig
from mathlens.flow.continuous import ContinuousTransformer
from mathlens.flow.operators import ACTIVATIONS, attention_kernel, project_s1
from mathlens.flow.schemes import lie_step

# ----------------------------------------------------------------------------------------------- ViT (§7.1)


def patchify(images: Tensor, patch: int) -> Tensor:
    """images: (B, C, H, W) -> R: (B, (H/p)(W/p), C·p·p), patches in row-major order."""
    B, C, H, W = images.shape
    if H % patch or W % patch:
        raise MathlensError(f"patch size {patch} does not divide the image size {H}×{W}")
    return F.unfold(images, kernel_size=patch, stride=patch).transpose(1, 2)


def vit_embed(R: Tensor, E: Tensor, v0: Tensor) -> Tensor:
    """u0 = [v0 ; R E]: R: (B, N_x − 1, D), E: (D, N_y), v0: (N_y,) -> (B, N_x, N_y)."""
    return torch.cat([v0.expand(R.shape[0], 1, -1), R @ E], dim=1)


def vit_readout(u: Tensor, B_out: Tensor) -> Tensor:
    """G(u) = [1, 0, …, 0] u B: the class-token row mapped linearly. u: (B, N_x, N_y), B_out: (N_y, d) -> (B, d)."""
    return u[:, 0] @ B_out


class VisionFlowTransformer(nn.Module):
    """𝒩^{ViT} = G ∘ 𝒩̄ ∘ F with a :class:`ContinuousTransformer` as 𝒩̄ (non-causal).

    ``position=True`` adds a learned positional embedding to f (omitted by the paper: without it the output is
    invariant under permutations of the patches).
    """

    def __init__(self, cfg: FlowConfig, image_size: int, patch: int, channels: int = 1, n_out: int = 10,
                 n_controls: int = 4, T: float | None = None, interpolation: str = "piecewise", position: bool = False,
                 seed: int = 0):
        super().__init__()
        if image_size % patch:
            raise MathlensError(f"patch size {patch} does not divide the image size {image_size}")
        n_patches = (image_size // patch) ** 2
        if cfg.causal or cfg.block_size < n_patches + 1:
            raise MathlensError(f"the ViT flow needs causal = False and block_size ≥ {n_patches + 1} tokens")
        self.patch = patch
        gen = torch.Generator().manual_seed(seed)
        D, N_y = channels * patch * patch, cfg.n_embd
        self.E = nn.Parameter(torch.randn(D, N_y, generator=gen) / math.sqrt(D))
        self.v0 = nn.Parameter(torch.randn(N_y, generator=gen))
        self.B_out = nn.Parameter(torch.randn(N_y, n_out, generator=gen) / math.sqrt(N_y))
        self.pos = nn.Parameter(0.1 * torch.randn(n_patches + 1, N_y, generator=gen)) if position else None
        self.flow = ContinuousTransformer(cfg, n_controls, T if T is not None else float(n_controls), interpolation,
                                          seed=seed + 1)

    def initial_state(self, images: Tensor) -> Tensor:
        """F: images (B, C, H, W) -> u0 (B, N_x, N_y)."""
        u0 = vit_embed(patchify(images, self.patch), self.E, self.v0)
        return u0 if self.pos is None else u0 + self.pos

    def forward(self, images: Tensor, n_steps: int | None = None, scheme: str | None = None) -> Tensor:
        """images: (B, C, H, W) -> (B, n_out)."""
        return vit_readout(self.flow(self.initial_state(images), n_steps, scheme), self.B_out)


# ----------------------------------------------------------------------------- convolutional Transformer (§7.2)


def conv_field(u: Tensor, kernel: Tensor) -> Tensor:
    """Circular convolution of every token image: (W * u)(x, y) = Σ_ξ W(ξ) u(x, y − ξ).

    u: (B, N_x, H, W), kernel: (k, k) with k odd, ξ ∈ {−k//2 … k//2}² -> (B, N_x, H, W).
    """
    B, N, H, W = u.shape
    r = kernel.shape[-1] // 2
    x = F.pad(u.reshape(B * N, 1, H, W), (r, r, r, r), mode="circular")
    # conv2d is a correlation; flipping the kernel makes it the convolution of the paper
    return F.conv2d(x, kernel.flip(-1, -2)[None, None]).view(B, N, H, W)


def conv_attention_operator(u: Tensor, k_q: Tensor, k_k: Tensor, k_v: Tensor, causal: bool = False,
                            scale: float | None = None, need_weights: bool = False):
    """𝒜(u)(x) = Σ_x̃ Softmax_2(|Ω_y|^{-1/2} ⟨Q(x), K(x̃)⟩_{Ω_y}) V(x̃), tokens = images.

    u: (B, N_x, H, W) -> (𝒜(u): (B, N_x, H, W), γ: (B, 1, N_x, N_x) or None); scale defaults to 1/√(H·W).
    """
    B, N, H, W = u.shape
    q, k, v = (conv_field(u, w).reshape(B, 1, N, H * W) for w in (k_q, k_k, k_v))
    scale = 1.0 / math.sqrt(H * W) if scale is None else scale
    out, gamma = attention_kernel(q, k, v, scale, causal, need_weights=need_weights)
    return out.view(B, N, H, W), gamma


class ConvFlowBlock(nn.Module):
    """One Lie step (post-norm) of the convolutional Transformer; θ = conv kernels, biases, σ1, σ2.

    u: (B, N_x, H, W). Substeps: [token embedding u ← P(u + W^C * u + b^C), eqs. (44)-(45)] ->
    u ← P(u + dt 𝒜(u)) -> u ← P(u + dt 𝓕(u)), 𝓕(u) = W_2 * act(W_1 * u + b_1) + b_2. Runs
    :func:`mathlens.flow.schemes.lie_step` with this module as the ``ops``.
    """

    def __init__(self, kernel_size: int = 3, dt: float = 1.0, activation: str = "tanh",
                 token_embedding: bool = False, seed: int = 0):
        super().__init__()
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise MathlensError(f"kernel_size = {kernel_size} is invalid (must be odd and positive)")
        if not dt > 0:
            raise MathlensError(f"dt = {dt!r} is invalid (must be > 0)")
        if activation not in ACTIVATIONS:
            raise MathlensError(f"activation = {activation!r} is invalid (allowed: {', '.join(ACTIVATIONS)})")
        gen = torch.Generator().manual_seed(seed)
        std = 1.0 / kernel_size

        def kernel():
            return nn.Parameter(torch.randn(kernel_size, kernel_size, generator=gen) * std)

        self.dt, self.act = dt, ACTIVATIONS[activation]
        self.k_q, self.k_k, self.k_v, self.w_1, self.w_2 = (kernel() for _ in range(5))
        self.b_1, self.b_2 = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))
        self.sigma1, self.sigma2 = nn.Parameter(torch.tensor(0.0)), nn.Parameter(torch.tensor(1.0))
        self.w_c = kernel() if token_embedding else None
        self.b_c = nn.Parameter(torch.zeros(())) if token_embedding else None

    def project(self, u: Tensor) -> Tensor:
        """P_{S1}: each token image to mean σ1 and variance σ2² over its pixels."""
        return project_s1(u.flatten(-2), self.sigma1, self.sigma2).view_as(u)

    norm_attn = norm_ffn = project

    def attention(self, u: Tensor) -> Tensor:
        return conv_attention_operator(u, self.k_q, self.k_k, self.k_v)[0]

    def feed_forward(self, u: Tensor) -> Tensor:
        return conv_field(self.act(conv_field(u, self.w_1) + self.b_1), self.w_2) + self.b_2

    def feed_forward_step(self, u: Tensor, dt: float) -> Tensor:
        return u + dt * self.feed_forward(u)

    def forward(self, u: Tensor) -> Tensor:
        if u.dim() != 4:
            raise MathlensError(f"token images must have shape (batch, tokens, H, W), got {tuple(u.shape)}")
        if self.w_c is not None:
            u = self.project(u + conv_field(u, self.w_c) + self.b_c)
        return lie_step(u, self, dt=self.dt, norm_position="post", residual="euler")
