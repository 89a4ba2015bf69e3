"""Run a model once and capture per-layer residual states, Q/K/V and attention weights.

One entry point, :func:`capture`, for ``mathlens.GPT`` (through its hook points) and for Hugging Face
causal LMs (GPT-2 and Llama-style: Llama, SmolLM2, Mistral/Qwen2 without sliding windows). Keys use
the GPT hook names for every kind of model, with shapes:

* ``hook_embed`` (B, T, D) the initial state; ``hook_final`` (B, T, D) after the final norm
* ``blocks.{i}.hook_resid_pre`` / ``hook_resid_mid`` / ``hook_resid_post`` (B, T, D)
* ``blocks.{i}.attn.hook_q`` (B, h, T, dh) for the selected heads ``h`` (after RoPE)
* ``blocks.{i}.attn.hook_k`` / ``hook_v`` (B, Hkv, T, dh) all key/value heads (after RoPE for k)
* ``blocks.{i}.attn.hook_z`` (B, h, T, dh) per-head attention output before the output projection
* ``blocks.{i}.attn.hook_pattern`` (B, h, T, T) softmax weights of the selected heads

The forward runs the decoder stack only (``GPT.hidden_states``, a Hugging Face model's ``base_model``): a
capture needs no logits, and the LM head is about a third of GPT-2's forward. Bounded memory: only the
selected layers/heads are kept, each moved to ``store_device`` (CPU by default) as soon as its layer has run;
attention weights are recomputed from the captured Q/K in chunks of query rows (``chunk_rows``), so the
forward pass keeps its fused attention kernel. ``pattern_source="eager"`` instead asks the model for its own
materialised weights (HF ``output_attentions`` with eager attention; a hook on GPT's ``hook_pattern``): every
selected layer's full weights inside the forward itself — a cross-check. No padding masks: every sequence is
causal and full length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mathlens.errors import MathlensError
from mathlens.probes.attention_stats import row_entropy, row_entropy_from_scores

WHAT = ("resid", "resid_post", "q", "k", "v", "z", "pattern")


@dataclass
class Capture:
    """Captured tensors (``tensors[key]``, keys as in the module docstring) and the model facts to read them.

    ``scales[i]`` is layer ``i``'s score scale, ``heads`` the selected query heads (indices into
    ``range(n_head)``), query head ``h`` reads key/value head ``h // (n_head // n_kv_head)``.
    """

    tensors: dict[str, Tensor]
    kind: str  # "gpt" | "gpt2" | "llama"
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    layers: list[int]
    heads: list[int]
    scales: dict[int, float]
    causal: bool = True
    alibi: bool = False
    _pattern_fns: dict = field(default_factory=dict, repr=False)

    def __getitem__(self, key: str) -> Tensor:
        if key not in self.tensors:
            raise MathlensError(f"{key!r} was not captured; captured: {', '.join(sorted(self.tensors)) or 'nothing'}")
        return self.tensors[key]

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def keys(self):
        return self.tensors.keys()

    def kv_index(self, heads: list[int] | None = None) -> list[int]:
        """The key/value head that each selected query head reads."""
        return kv_index(self.heads if heads is None else heads, self.n_head, self.n_kv_head)

    def keys_for_heads(self, layer: int, name: str = "k", batch: int | None = None) -> Tensor:
        """``blocks.{layer}.attn.hook_{name}`` with one key/value head per selected query head
        ``(B, h, T, dh)`` (a view, no copy, when that is every key head in order)."""
        t = self[f"blocks.{layer}.attn.hook_{name}"][:batch]
        kv = self.kv_index()
        return t if kv == list(range(t.shape[1])) else t[:, kv]

    def resid_states(self) -> list[Tensor]:
        """``[hook_embed, resid_post of each captured layer]`` (for the rank-collapse profile)."""
        out = [self["hook_embed"]] if "hook_embed" in self else []
        return out + [self[f"blocks.{i}.hook_resid_post"] for i in self.layers
                      if f"blocks.{i}.hook_resid_post" in self]

    def pattern(self, layer: int, chunk_rows: int = 256, dtype=torch.float64, device=None,
                batch: int | None = None, with_entropy: bool = False):
        """Attention weights ``(B, h, T, T)`` of the selected heads of ``layer``, recomputed from Q/K
        (for the first ``batch`` sequences only when given); ``with_entropy``: ``(P, H)`` with the row
        entropies ``H: (B, h, T)`` (see :func:`attention_pattern`)."""
        key = f"blocks.{layer}.attn.hook_pattern"
        if key in self.tensors:
            P = self.tensors[key][:batch].to(dtype)
            return (P, row_entropy(P)) if with_entropy else P
        q, k = self[f"blocks.{layer}.attn.hook_q"][:batch], self[f"blocks.{layer}.attn.hook_k"][:batch]
        if device is not None:
            q, k = q.to(device), k.to(device)
        if self.alibi:  # the model's own function: ALiBi slopes are per head, so it needs every head
            if self.heads != list(range(self.n_head)):
                raise MathlensError("ALiBi patterns of a subset of heads: pass 'pattern' in what= at capture")
            return attention_pattern(q, k, 0.0, self.causal, chunk_rows, dtype, pattern_fn=self._pattern_fns[layer],
                                     with_entropy=with_entropy)
        return attention_pattern(q, self.keys_for_heads(layer, batch=batch), self.scales[layer], self.causal,
                                 chunk_rows, dtype, with_entropy=with_entropy)

    def patterns(self, layers: list[int], chunk_rows: int = 256, dtype=torch.float64, device=None,
                 batch: int | None = None, with_entropy: bool = False):
        """The weights of several layers side by side, ``(B, len(layers)·h, T, T)`` with layer ``layers[j]``'s
        heads at columns ``j·h … (j+1)·h − 1``: one batched computation instead of one per layer
        (``with_entropy``: ``(P, H)`` as for :meth:`pattern`)."""
        if len(layers) == 1 or self.alibi:
            parts = [self.pattern(i, chunk_rows, dtype, device, batch, with_entropy) for i in layers]
            if not with_entropy:
                return torch.cat(parts, 1)
            return torch.cat([p for p, _ in parts], 1), torch.cat([H for _, H in parts], 1)
        scales = {self.scales[i] for i in layers}
        common = scales.pop() if len(scales) == 1 else None  # else each layer's q carries its own scale
        qs = [self[f"blocks.{i}.attn.hook_q"][:batch] for i in layers]
        q = torch.cat(qs if common else [qi * self.scales[i] for qi, i in zip(qs, layers)], 1)
        k = torch.cat([self.keys_for_heads(i, batch=batch) for i in layers], 1)
        if device is not None:
            q, k = q.to(device), k.to(device)
        return attention_pattern(q, k, common or 1.0, self.causal, chunk_rows, dtype, with_entropy=with_entropy)


def kv_index(heads: list[int], n_head: int, n_kv_head: int) -> list[int]:
    """The key/value head each query head in ``heads`` reads: ``h // (n_head // n_kv_head)`` (grouped queries)."""
    return [h // (n_head // n_kv_head) for h in heads]


def attention_pattern(q: Tensor, k: Tensor, scale: float, causal: bool = True, chunk_rows: int = 256,
                      dtype=torch.float64, out_device=None, pattern_fn=None, with_entropy: bool = False):
    """``softmax(scale · q kᵀ + causal mask)`` computed ``chunk_rows`` query rows at a time.

    ``q: (B, h, T, dh)``, ``k: (B, h, T, dh)`` (already one key head per query head) -> ``(B, h, T, T)``
    in ``dtype`` on ``out_device`` (default: ``q``'s device). ``pattern_fn(q_chunk, k_prefix)`` replaces the
    softmax (e.g. ``attn.pattern_from`` for ALiBi); query rows are the last rows of the keys given.
    ``with_entropy``: return ``(P, H)`` with the row entropies ``H: (B, h, T)`` taken from each chunk's scores
    while they are at hand (:func:`~mathlens.probes.attention_stats.row_entropy_from_scores`; from ``P``
    itself under ``pattern_fn``).
    """
    B, h, T, _ = q.shape
    chunk_rows = max(1, int(chunk_rows))
    # a finite mask: exp underflows to exactly 0 as for −inf, and 0 · mask stays 0 in the entropy's dot product
    masked = torch.finfo(dtype).min / 2

    def rows(start: int, end: int) -> tuple[Tensor, Tensor | None]:
        Tk = end if causal else T
        qc, kc = q[:, :, start:end].to(dtype), k[:, :, :Tk].to(dtype)
        if pattern_fn is not None:
            p = pattern_fn(qc, kc)
            return p, (row_entropy(p) if with_entropy else None)
        if not causal:
            s = (qc @ kc.transpose(-1, -2)).mul_(scale)
        else:  # scale · q kᵀ plus the additive causal mask in one fused baddbmm
            mask = torch.zeros(end - start, Tk, dtype=dtype, device=q.device)
            mask.masked_fill_(torch.ones_like(mask, dtype=torch.bool).triu(start + 1), masked)
            s = torch.baddbmm(mask.expand(B * h, -1, -1), qc.reshape(B * h, end - start, -1),
                              kc.reshape(B * h, Tk, -1).transpose(-1, -2), alpha=scale).view(B, h, end - start, Tk)
        p = torch.softmax(s, dim=-1)
        return p, (row_entropy_from_scores(p, s) if with_entropy else None)

    dev = out_device or q.device
    if chunk_rows >= T:  # one chunk: no zero-filled buffer, no copy
        p, H = rows(0, T)
        return (p.to(dev), H.to(dev)) if with_entropy else p.to(dev)
    out = torch.zeros(B, h, T, T, dtype=dtype, device=dev)
    H = torch.empty(B, h, T, dtype=dtype, device=dev) if with_entropy else None
    for start in range(0, T, chunk_rows):
        end = min(T, start + chunk_rows)
        p, Hc = rows(start, end)
        out[:, :, start:end, : end if causal else T] = p.to(dev)
        if with_entropy:
            H[:, :, start:end] = Hc.to(dev)
    return (out, H) if with_entropy else out


class _Recorder:
    """Receives tensors from an adapter's hooks, keeps what was asked, and moves it off the device."""

    def __init__(self, adapter, layers, heads, want, store_device, chunk_rows, pattern_dtype, eager):
        self.a, self.layers, self.heads, self.want = adapter, set(layers), heads, want
        self.store, self.chunk, self.dtype, self.eager = store_device, chunk_rows, pattern_dtype, eager
        self.tensors: dict[str, Tensor] = {}
        self.scratch: dict[int, dict[str, Tensor]] = {}
        self.all_heads = heads == list(range(adapter.n_head))
        self.recompute = "pattern" in want and not eager  # weights from q and k at the end of each block

    def keeps(self, state: str) -> bool:
        """Whether the residual state ``state`` ("embed", "resid_pre", …, "final") is kept: all of them with "resid",
        the embedding and each block's output with "resid_post" (what :meth:`Capture.resid_states` reads)."""
        return "resid" in self.want or ("resid_post" in self.want and state in ("embed", "resid_post"))

    def _sel(self, t: Tensor) -> Tensor:
        """The selected query heads of ``t: (B, H, ...)`` (no copy when all are selected)."""
        return t if self.all_heads else t[:, self.heads]

    def _put(self, key: str, t: Tensor) -> None:
        self.tensors[key] = t.detach().to(self.store) if self.store is not None else t.detach()

    def __call__(self, i: int | None, name: str, t: Tensor | None) -> None:
        if i is None:  # model-level: "embed" / "final"
            if self.keeps(name):
                self._put(f"hook_{name}", t)
            return
        if i not in self.layers:
            return
        if self.recompute and name in ("q", "k"):  # kept (on the device) until the block ends, for its weights
            self.scratch.setdefault(i, {})[name] = t
        if name in ("resid_pre", "resid_mid", "resid_post"):
            if self.keeps(name):
                self._put(f"blocks.{i}.hook_{name}", t)
        elif name in ("q", "z"):
            if name in self.want:
                self._put(f"blocks.{i}.attn.hook_{name}", self._sel(t))
        elif name in ("k", "v"):
            if name in self.want:
                self._put(f"blocks.{i}.attn.hook_{name}", t)
        elif name == "pattern_eager":
            if "pattern" in self.want:
                self._put(f"blocks.{i}.attn.hook_pattern", self._sel(t).to(self.dtype))
        elif name == "end" and self.recompute:
            self._pattern(i, self.scratch.pop(i))

    def _pattern(self, i: int, s: dict) -> None:
        fn = self.a.pattern_fn(i)
        q, k = s["q"], s["k"]
        if fn is not None:  # the model's own function needs every head (ALiBi slopes are per head)
            P = attention_pattern(q, k, 0.0, self.a.causal, self.chunk, self.dtype, self.store, pattern_fn=fn)
            P = self._sel(P)
        else:
            kv = kv_index(self.heads, self.a.n_head, self.a.n_kv_head)
            P = attention_pattern(self._sel(q), k[:, kv], self.a.scale(i), self.a.causal, self.chunk,
                                  self.dtype, self.store)
        self.tensors[f"blocks.{i}.attn.hook_pattern"] = P


def get_adapter(model):
    """The adapter that knows where ``model`` keeps its blocks, projections and scales."""
    from mathlens.probes import capture_hf

    if hasattr(model, "blocks") and len(model.blocks) and hasattr(model.blocks[0], "hook_resid_pre"):
        return _GPTAdapter(model)
    return capture_hf.hf_adapter(model)


@torch.no_grad()
def capture(model, idx: Tensor, layers: list[int] | None = None, heads: list[int] | None = None,
            what=("resid", "q", "k", "v", "pattern"), pattern_source: str = "recompute", chunk_rows: int = 256,
            store_device="cpu", pattern_dtype=torch.float64) -> Capture:
    """Run ``model`` on ``idx: (B, T)`` int64 once and return a :class:`Capture`.

    ``layers``/``heads``: which layers and query heads to keep (None: all); ``what``: subset of
    ``("resid", "resid_post", "q", "k", "v", "z", "pattern")`` ("resid": every residual state; "resid_post": only
    ``hook_embed`` and each block's ``hook_resid_post``, what :meth:`Capture.resid_states` returns);
    ``pattern_source``: ``"recompute"`` (from Q/K, chunked) or ``"eager"`` (the model's materialised weights);
    ``store_device``: where captured tensors go (None: stay on the model's device).
    """
    bad = set(what) - set(WHAT)
    if bad:
        raise MathlensError(f"unknown capture item(s) {sorted(bad)}; allowed: {', '.join(WHAT)}")
    if pattern_source not in ("recompute", "eager"):
        raise MathlensError(f"pattern_source must be 'recompute' or 'eager', got {pattern_source!r}")
    if idx.dim() != 2 or idx.dtype != torch.long:
        raise MathlensError(f"idx must be a (batch, tokens) int64 tensor, got {tuple(idx.shape)} {idx.dtype}")
    a = get_adapter(model)
    layers = list(range(a.n_layer)) if layers is None else sorted(set(int(i) for i in layers))
    heads = list(range(a.n_head)) if heads is None else [int(h) for h in heads]
    if any(not 0 <= i < a.n_layer for i in layers):
        raise MathlensError(f"layers must lie in 0..{a.n_layer - 1}, got {layers}")
    if any(not 0 <= h < a.n_head for h in heads):
        raise MathlensError(f"heads must lie in 0..{a.n_head - 1}, got {heads}")
    eager = pattern_source == "eager" and "pattern" in what
    rec = _Recorder(a, layers, heads, set(what), store_device, chunk_rows, pattern_dtype, eager)
    handles = a.attach(rec, layers, eager)
    try:
        a.forward(idx.to(a.device), eager, rec)
    finally:
        for hd in handles:
            hd.remove()
    return Capture(rec.tensors, a.kind, a.n_layer, a.n_head, a.n_kv_head, a.head_dim, layers, heads,
                   {i: a.scale(i) for i in layers}, a.causal, a.alibi,
                   {i: a.pattern_fn(i) for i in layers} if a.alibi else {})


class _GPTAdapter:
    """mathlens.GPT: every quantity is an identity hook module (see the GPT contract)."""

    kind = "gpt"

    def __init__(self, model):
        self.m = model
        attn = model.blocks[0].attn
        self.n_layer, self.n_head, self.n_kv_head = len(model.blocks), attn.n_head, attn.n_kv_head
        self.head_dim, self.causal = attn.head_dim, bool(attn.causal)
        self.alibi = getattr(attn, "alibi", None) is not None
        self.device = next(model.parameters()).device

    def scale(self, i: int) -> float:
        return float(self.m.blocks[i].attn.scale)

    def pattern_fn(self, i: int):
        return self.m.blocks[i].attn.pattern_from if self.alibi else None

    def attach(self, rec, layers, eager):
        """Forward hooks on the hook points that ``rec.want`` needs, only (each hooked module takes PyTorch's slower
        call path: ≈ 0.8 ms a forward for all of them on the CPU preset's 4 layers)."""
        m, hs, want, recompute = self.m, [], rec.want, rec.recompute
        fwd = lambda i, name: (lambda mod, inp, out: rec(i, name, out))
        if rec.keeps("embed"):
            hs.append(m.hook_embed.register_forward_hook(fwd(None, "embed")))
        if rec.keeps("final"):
            hs.append(m.hook_final.register_forward_hook(fwd(None, "final")))
        states = [name for name in ("resid_pre", "resid_mid", "resid_post") if rec.keeps(name)]
        for i in layers:
            b = m.blocks[i]
            for name in states:
                hs.append(getattr(b, f"hook_{name}").register_forward_hook(fwd(i, name)))
            for name in ("q", "k", "v", "z"):
                if name in want or (recompute and name in ("q", "k")):
                    hs.append(getattr(b.attn, f"hook_{name}").register_forward_hook(fwd(i, name)))
            if eager:
                hs.append(b.attn.hook_pattern.register_forward_hook(fwd(i, "pattern_eager")))
            if recompute:
                hs.append(b.register_forward_hook(fwd(i, "end")))
        return hs

    def forward(self, idx, eager, rec):
        self.m.hidden_states(idx)  # no logits: a capture needs none

    def qk_weights(self, i: int):
        """``(W_Q: (H, D, dh), W_K: (H, D, dh))``; key weights already mapped to each query head."""
        a = self.m.blocks[i].attn
        return _split_linear(a.w_q.weight, self.n_head, self.head_dim, self.n_kv_head, a.w_k.weight)


def _split_linear(wq: Tensor, n_head: int, dh: int, n_kv: int, wk: Tensor):
    """nn.Linear layout (out, in): ``W_Q,h = wq[h*dh:(h+1)*dh].T`` -> ``(H, D, dh)`` each (keys repeated for GQA)."""
    Wq = wq.detach().reshape(n_head, dh, -1).transpose(1, 2)
    Wk = wk.detach().reshape(n_kv, dh, -1).transpose(1, 2)
    return Wq, Wk.repeat_interleave(n_head // n_kv, dim=0)


def qk_weights(model, layer: int):
    """Per-head query/key maps of ``layer``: ``(W_Q, W_K)``, each ``(H, d_model, d_head)`` (``q_h = x W_Q[h]``)."""
    return get_adapter(model).qk_weights(layer)


__all__ = ["Capture", "attention_pattern", "capture", "get_adapter", "qk_weights"]
