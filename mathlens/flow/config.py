"""Settings of one splitting step (one Transformer block), shared by the GPT and the flow.

Every paper-literal choice listed in the errata (THEORY §5.3, §12) is a field here, defaulting to the
corrected / standard form:

=================  =================================  ==================================
field              corrected default                  paper-literal value
=================  =================================  ==================================
ffn_form           "standard" (act(uW1+b1)W2+b2)       "paper" (u + dt(uW_j + b_j), square)
relu_on_last       False                               True  (ReLU after the last FFN layer)
ffn_bias_axis      "feature"                           "token" (b_j(x, t), breaks equivariance)
residual           "euler" (u + dt·F(u))               "average" (½(u^{(2+J)/M} + u^{2/M}))
norm_eps           1e-5 (practical) / 0 exact          0
norm_affine        "vector" (γ, β per feature)         "scalar" (σ1, σ2)
share_norms        False                               True (σ^{n-1} for both LNs of a step)
attn_scale         None = 1/√d_k                       1.0 (eq. (29) drops the factor)
=================  =================================  ==================================
"""

from __future__ import annotations

from dataclasses import dataclass

from mathlens.errors import MathlensError

SCHEMES = ("lie", "strang", "parallel")
NORM_POSITIONS = ("pre", "post")
NORMS = ("layernorm", "rmsnorm", "none")
ACTIVATION_NAMES = ("relu", "gelu", "gelu_tanh", "silu", "tanh", "swiglu")


def check_choice(field: str, value, allowed) -> None:
    if value not in allowed:
        raise MathlensError(f"{field} = {value!r} is invalid (allowed: {', '.join(map(str, allowed))})")


def check_positive(field: str, value, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise MathlensError(f"{field} = {value!r} is invalid (must be {'≥ 0' if allow_zero else '> 0'})")


@dataclass
class FlowConfig:
    """One step of the operator splitting = one block. Width N_y = ``n_embd``."""

    n_embd: int = 768
    n_head: int = 12
    n_kv_head: int | None = None  # grouped-query attention when < n_head
    head_dim: int | None = None  # None -> n_embd // n_head
    d_ff: int | None = None  # None -> 4 n_embd (standard) / n_embd (paper form)
    activation: str = "gelu"
    bias: bool = True
    block_size: int = 1024
    causal: bool = True
    attn_scale: float | None = None
    scheme: str = "lie"
    norm_position: str = "pre"
    norm: str = "layernorm"
    norm_affine: str = "vector"
    norm_eps: float = 1e-5
    share_norms: bool = False
    ffn_form: str = "standard"
    ffn_bias_axis: str = "feature"
    relu_on_last: bool = False
    residual: str = "euler"
    skip: bool = True
    dt: float = 1.0
    dropout: float = 0.0
    hf_numerics: bool = False  # RMSNorm and RoPE angles in float32 whatever the dtype, like HF Llama

    def __post_init__(self):
        for f in ("n_embd", "n_head", "block_size"):
            check_positive(f, getattr(self, f))
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        check_positive("n_kv_head", self.n_kv_head)
        if self.head_dim is None:
            if self.n_embd % self.n_head:
                raise MathlensError(
                    f"n_head = {self.n_head} does not divide n_embd = {self.n_embd} (choose a divisor or set head_dim)"
                )
            self.head_dim = self.n_embd // self.n_head
        if self.n_head % self.n_kv_head:
            raise MathlensError(f"n_kv_head = {self.n_kv_head} does not divide n_head = {self.n_head}")
        check_choice("activation", self.activation, ACTIVATION_NAMES)
        check_choice("scheme", self.scheme, SCHEMES)
        check_choice("norm_position", self.norm_position, NORM_POSITIONS)
        check_choice("norm", self.norm, NORMS)
        check_choice("norm_affine", self.norm_affine, ("vector", "scalar", "none"))
        check_choice("ffn_form", self.ffn_form, ("standard", "paper"))
        check_choice("ffn_bias_axis", self.ffn_bias_axis, ("feature", "token", "none"))
        check_choice("residual", self.residual, ("euler", "average", "sum"))
        check_positive("dt", self.dt)
        check_positive("norm_eps", self.norm_eps, allow_zero=True)
        if not 0.0 <= self.dropout < 1.0:
            raise MathlensError(f"dropout = {self.dropout!r} is invalid (must be in [0, 1))")
        if self.d_ff is None:
            self.d_ff = self.n_embd if self.ffn_form == "paper" else 4 * self.n_embd
        check_positive("d_ff", self.d_ff)
        if self.ffn_form == "paper":
            if self.d_ff != self.n_embd:
                raise MathlensError(f"ffn_form = 'paper' needs d_ff = n_embd = {self.n_embd} (square W_j), got {self.d_ff}")
            if self.activation == "swiglu":
                raise MathlensError("ffn_form = 'paper' does not support activation = 'swiglu'")
        if self.norm_position == "pre" and (self.ffn_form == "paper" or self.residual != "euler"):
            raise MathlensError("norm_position = 'pre' needs ffn_form = 'standard' and residual = 'euler'")
        if not self.skip and (self.ffn_form == "paper" or self.residual != "euler"):
            raise MathlensError("skip = false needs ffn_form = 'standard' and residual = 'euler'")

    @property
    def n_rep(self) -> int:
        return self.n_head // self.n_kv_head
