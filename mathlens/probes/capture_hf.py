"""Hugging Face adapters for :func:`mathlens.probes.capture.capture`: GPT-2 and Llama-style causal LMs.

* GPT-2 (``GPT2LMHeadModel``): q, k, v are the output of ``transformer.h[i].attn.c_attn`` split in three
  (Conv1D layout ``(in, out)``); the per-head output is the input of ``attn.c_proj``.
* Llama-style (``LlamaForCausalLM`` and models with the same layout): q, k, v are the outputs of
  ``model.layers[i].self_attn.{q,k,v}_proj``; the rotary embedding is applied here with the ``(cos, sin)``
  the model hands its attention module (``position_embeddings``), so the captured q, k equal what the model
  multiplies; grouped-query attention keeps ``n_kv_head`` key heads (query head ``h`` reads ``h // g``).

Residual states come from hooks on the blocks (so only selected layers are kept);
``hook_resid_pre`` of layer ``i`` equals ``output_hidden_states[i]``.
"""

from __future__ import annotations

from torch import Tensor

from mathlens.errors import MathlensError
from mathlens.flow.operators import apply_rope


def _heads(x: Tensor, dh: int) -> Tensor:
    """``(B, T, H*dh)`` -> ``(B, H, T, dh)``."""
    B, T, _ = x.shape
    return x.view(B, T, -1, dh).transpose(1, 2)


def _first(out):
    return out[0] if isinstance(out, tuple | list) else out


def _hidden_arg(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


class _HFAdapter:
    causal = True
    alibi = False

    def __init__(self, model, blocks, attn_of, final_norm):
        self.m, self.blocks, self.attn_of, self.final_norm = model, blocks, attn_of, final_norm
        self.device = next(model.parameters()).device
        self.n_layer = len(blocks)

    def scale(self, i: int) -> float:
        return float(self.attn_of(i).scaling)

    def pattern_fn(self, i: int):
        return None

    def _common(self, rec, layers):
        hs = [self.blocks[0].register_forward_pre_hook(
            lambda mod, args, kwargs: rec(None, "embed", _hidden_arg(args, kwargs)), with_kwargs=True)]
        hs.append(self.final_norm.register_forward_hook(lambda mod, inp, out: rec(None, "final", out)))
        for i in layers:
            def pre(mod, args, kwargs, i=i):
                self._pre[i] = _hidden_arg(args, kwargs)
                rec(i, "resid_pre", self._pre[i])

            def attn_out(mod, args, out, i=i):
                if rec.keeps("resid_mid"):
                    rec(i, "resid_mid", self._pre[i] + _first(out))
                if self._eager and len(out) > 1 and out[1] is not None:
                    rec(i, "pattern_eager", out[1])

            def post(mod, args, out, i=i):
                rec(i, "resid_post", _first(out))
                rec(i, "end", None)
                self._pre.pop(i, None)

            hs.append(self.blocks[i].register_forward_pre_hook(pre, with_kwargs=True))
            hs.append(self.attn_of(i).register_forward_hook(attn_out))
            hs.append(self.blocks[i].register_forward_hook(post))
        return hs

    def forward(self, idx, eager, rec):
        prev = self.m.config._attn_implementation
        if eager and prev != "eager":
            self.m.set_attn_implementation("eager")
        try:
            # the decoder stack only: a capture needs no logits (the LM head is a third of GPT-2's forward)
            out = self.m.base_model(input_ids=idx, use_cache=False, output_attentions=eager)
        finally:
            if eager and prev != "eager":
                self.m.set_attn_implementation(prev)
        if eager and out.attentions is not None:  # models that return weights only through the output
            for i in sorted(rec.layers):
                key = f"blocks.{i}.attn.hook_pattern"
                if key not in rec.tensors and "pattern" in rec.want:
                    rec(i, "pattern_eager", out.attentions[i])


class GPT2Adapter(_HFAdapter):
    kind = "gpt2"

    def __init__(self, model):
        tr = model.transformer
        super().__init__(model, tr.h, lambda i: tr.h[i].attn, tr.ln_f)
        cfg = model.config
        self.n_head = self.n_kv_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.d = cfg.n_embd

    def scale(self, i: int) -> float:
        a = self.attn_of(i)
        if hasattr(a, "scaling"):
            return float(a.scaling)
        s = self.head_dim**-0.5 if a.scale_attn_weights else 1.0
        return s / (i + 1) if a.scale_attn_by_inverse_layer_idx else s

    def attach(self, rec, layers, eager):
        self._pre, self._eager = {}, eager
        hs = self._common(rec, layers)
        for i in layers:
            a = self.attn_of(i)

            def qkv(mod, inp, out, i=i):
                q, k, v = out.split(self.d, dim=2)
                rec(i, "q", _heads(q, self.head_dim))
                rec(i, "k", _heads(k, self.head_dim))
                rec(i, "v", _heads(v, self.head_dim))

            hs.append(a.c_attn.register_forward_hook(qkv))
            hs.append(a.c_proj.register_forward_pre_hook(
                lambda mod, args, i=i: rec(i, "z", _heads(args[0], self.head_dim))))
        return hs

    def qk_weights(self, i: int):
        """Conv1D layout ``(in, out)``: ``W_Q,h = c_attn.weight[:, h*dh:(h+1)*dh]`` -> ``(H, D, dh)`` each."""
        w = self.attn_of(i).c_attn.weight.detach()
        D, dh, H = self.d, self.head_dim, self.n_head
        Wq = w[:, :D].reshape(D, H, dh).permute(1, 0, 2)
        Wk = w[:, D:2 * D].reshape(D, H, dh).permute(1, 0, 2)
        return Wq, Wk


class LlamaAdapter(_HFAdapter):
    kind = "llama"

    def __init__(self, model):
        inner = model.model
        super().__init__(model, inner.layers, lambda i: inner.layers[i].self_attn, inner.norm)
        cfg = model.config
        self.n_head, self.n_kv_head = cfg.num_attention_heads, cfg.num_key_value_heads or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
            raise MathlensError("sliding-window attention is not supported by capture")

    def attach(self, rec, layers, eager):
        self._pre, self._eager, self._raw = {}, eager, {}
        hs = self._common(rec, layers)
        for i in layers:
            a = self.attn_of(i)
            raw = self._raw.setdefault(i, {})

            def keep(name, i=i, raw=raw):
                return lambda mod, inp, out: raw.__setitem__(name, _heads(out, self.head_dim))

            def attn_pre(mod, args, kwargs, i=i, raw=raw):
                raw["cos_sin"] = kwargs.get("position_embeddings", args[1] if len(args) > 1 else None)

            def qk(mod, inp, out, i=i, raw=raw):  # runs before the attention module's own output hook
                cos, sin = raw.pop("cos_sin")
                rec(i, "q", apply_rope(raw.pop("q"), cos.unsqueeze(1), sin.unsqueeze(1)))
                rec(i, "k", apply_rope(raw.pop("k"), cos.unsqueeze(1), sin.unsqueeze(1)))
                rec(i, "v", raw.pop("v"))

            for name in ("q", "k", "v"):
                hs.append(getattr(a, f"{name}_proj").register_forward_hook(keep(name)))
            hs.append(a.register_forward_pre_hook(attn_pre, with_kwargs=True))
            hs.append(a.o_proj.register_forward_pre_hook(
                lambda mod, args, i=i: rec(i, "z", _heads(args[0], self.head_dim))))
            hs.append(a.register_forward_hook(qk))
        return hs

    def qk_weights(self, i: int):
        """nn.Linear layout ``(out, in)``: ``W_Q,h = q_proj.weight[h*dh:(h+1)*dh].T`` -> ``(H, D, dh)`` each."""
        a = self.attn_of(i)
        from mathlens.probes.capture import _split_linear

        return _split_linear(a.q_proj.weight, self.n_head, self.head_dim, self.n_kv_head, a.k_proj.weight)


def hf_adapter(model):
    """Pick the adapter for a Hugging Face causal LM; MathlensError for layouts we do not know."""
    tr = getattr(model, "transformer", None)
    if tr is not None and hasattr(tr, "h") and hasattr(tr.h[0].attn, "c_attn"):
        if getattr(tr.h[0].attn, "is_cross_attention", False):
            raise MathlensError("GPT-2 cross-attention blocks are not supported by capture")
        return GPT2Adapter(model)
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is not None and hasattr(layers[0], "self_attn") and hasattr(layers[0].self_attn, "q_proj"):
        if hasattr(layers[0].self_attn, "q_norm"):
            raise MathlensError(f"{type(model).__name__}: q/k normalisation is not supported by capture")
        return LlamaAdapter(model)
    raise MathlensError(f"capture does not know the layout of {type(model).__name__} "
                        "(supported: mathlens.GPT, GPT-2, Llama-style causal LMs)")
