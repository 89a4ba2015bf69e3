"""Tiny float64 models shared by the curvature tests (helpers only; this module holds no tests)."""

import torch
import torch.nn.functional as F
from torch import nn


class TinyMLP(nn.Module):
    def __init__(self, d_in=3, d_hidden=4, d_out=2, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(d_in, d_hidden).double()
        self.fc2 = nn.Linear(d_hidden, d_out).double()

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class TinyAttention(nn.Module):
    """One causal softmax attention head + readout; ``fused`` uses F.scaled_dot_product_attention."""

    def __init__(self, d=4, n_head=2, vocab=5, fused=False, seed=0, bias=True):
        super().__init__()
        torch.manual_seed(seed)
        self.n_head, self.head_dim = n_head, d // n_head
        self.emb = nn.Embedding(vocab, d).double()
        self.w_q = nn.Linear(d, d, bias=bias).double()
        self.w_k = nn.Linear(d, d, bias=bias).double()
        self.w_v = nn.Linear(d, d, bias=False).double()
        self.out = nn.Linear(d, vocab).double()
        self.fused = fused

    def forward(self, idx):
        B, T = idx.shape
        x = self.emb(idx)
        q, k, v = (w(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2) for w in (self.w_q, self.w_k, self.w_v))
        if self.fused:
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = q @ k.transpose(-1, -2) / self.head_dim**0.5
            s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
            z = torch.softmax(s, -1) @ v
        return self.out(x + z.transpose(1, 2).reshape(B, T, -1))


def mlp_problem(n=12, seed=0):
    model = TinyMLP(seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    X = torch.randn(n, 3, generator=g, dtype=torch.float64)
    Y = torch.randn(n, 2, generator=g, dtype=torch.float64)
    batches = [(X[: n // 2], Y[: n // 2]), (X[n // 2:], Y[n // 2:])]
    loss_fn = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()  # F.mse_loss has no forward-over-reverse
    return model, loss_fn, batches


def attention_problem(fused=False, seed=0):
    model = TinyAttention(fused=fused, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    idx = torch.randint(0, 5, (3, 6), generator=g)
    tgt = torch.randint(0, 5, (3, 6), generator=g)
    loss_fn = lambda m, b: F.cross_entropy(m(b[0]).reshape(-1, 5), b[1].reshape(-1))
    return model, loss_fn, [(idx, tgt)]


def dense_hessian(model, loss_fn, batches):
    """Reference Hessian ``(n_params, n_params)`` by torch.autograd.functional.hessian on the flat vector."""
    from torch.func import functional_call

    names = [n for n, p in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    w0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, b):
            return loss_fn(self.m, b)

    wrapper = M()

    def f(w):
        ps = {"m." + n: c.view(s) for n, c, s in zip(names, torch.split(w, sizes), shapes)}
        return sum(functional_call(wrapper, ps, (b,)) for b in batches) / len(batches)

    return torch.autograd.functional.hessian(f, w0)
