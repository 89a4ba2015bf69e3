"""Linear operators on the flat parameter space: the Hessian of a training loss and its Gauss–Newton part.

The loss is ``L(w) = mean_b loss_fn(model, batch_b)`` over a fixed list of batches, with ``w`` the
trainable parameters of ``model`` flattened into one vector ``w: (n_params,)``.  Every operator
offers ``matvec(v: (n_params,)) -> (n_params,)``, ``size``, ``dtype``, ``device`` and counts its
products in ``n_matvecs``; algorithms (``algorithms.py``) only ever see this interface.

Hessian–vector products, three ways:

* ``"double_backward"`` — exact: ``Hv = ∇_w ⟨∇_w L, v⟩`` (``torch.autograd.grad`` with
  ``create_graph=True``). With ``reuse_graph`` the first-order graph of each batch (the forward, the
  backward and ``∇_w L``) is built by the first product and kept, so every later product is one backward
  through it: for a linear map ``Y = XW`` that is 6 matrix products against the gradient's 3 (Pearlmutter's
  R-op count) instead of 9 when the graph is rebuilt. The default (``None``) reuses it when there is one
  batch: the memory held is then what a single product needs at its peak anyway.
* ``"jvp"`` — exact, forward-over-reverse: ``Hv = d/dt ∇L(w + t v)|_{t=0}`` by ``torch.func.jvp`` of
  ``torch.func.grad`` through ``torch.func.functional_call``.
* ``"finite_difference"`` — central differences of gradients,
  ``Hv ≈ (∇L(w + h v) − ∇L(w − h v)) / (2h)`` with ``h = τ · max(‖w‖, 1) / ‖v‖`` (a relative step:
  the perturbation ``h v`` has norm ``τ · max(‖w‖, 1)``). Error O(τ²) truncation + O(eps/τ) round-off;
  the balance point is ``τ ∝ eps^{1/3}``; the default ``τ = 0.2·eps^{1/3}`` (9.8e-4 in float32, 1.2e-6
  in float64) — the constant measured on a 4-layer GPT in float32 (``benchmarks/hvp_cost.py``: error
  7e-5 at τ = 1e-3 vs 1.4e-3 at eps^{1/3}, because the gradient's own rounding error is ≫ eps).  Only first
  derivatives are taken, so it works with fused ``scaled_dot_product_attention``; cost: two gradients.
  ``fd_scheme="forward"``: ``(∇L(w + h v) − ∇L(w)) / h`` with ``∇L(w)`` computed once and cached —
  one gradient per product, error O(τ) + O(eps/τ), default ``τ = 0.3·sqrt(eps)`` (1e-4 in float32).

Attention (``attention=``): PyTorch's fused SDPA kernels have neither a double backward nor forward-mode AD, so
the exact methods swap them for a twice-differentiable attention that computes the same function:

* ``"recompute"`` (the default for ``"double_backward"``): :mod:`attention_hvp`'s attention, whose backward
  passes recompute the weights in chunks; the kept graph holds ``q, k, v, O, dO`` instead of three ``(B, h, T, T)``
  tensors per layer;
* ``"math"`` (the default for ``"jvp"``, which needs forward-mode AD): PyTorch's math backend
  (``sdpa_kernel(SDPBackend.MATH)``: materialised softmax);
* ``"model"``: the model as it is; an exact product through fused attention raises :class:`MathlensError`
  naming the fix (``attention="recompute"`` or ``method="finite_difference"``).

Every evaluation runs the model in ``eval()`` mode (dropout off, so that the operator is a fixed
symmetric matrix) and restores each module's training flag afterwards.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel

from mathlens.errors import MathlensError
from mathlens.probes.curvature.attention_hvp import twice_differentiable_attention

HVP_METHODS = ("double_backward", "jvp", "finite_difference")
ATTENTION = ("auto", "recompute", "math", "model")


def attention_context(attention: str, method: str):
    """The context an exact product runs in: ``attention`` as in the module doc (``"auto"``: ``"recompute"`` for
    the double backward, ``"math"`` for forward-mode AD, the model as it is for finite differences)."""
    if attention not in ATTENTION:
        raise MathlensError(f"unknown attention {attention!r}; choose one of {ATTENTION}")
    if attention == "auto":
        attention = {"double_backward": "recompute", "jvp": "math"}.get(method, "model")
    if attention == "recompute":
        if method == "jvp":
            raise MathlensError("attention='recompute' has no forward-mode AD (needed by method='jvp' and the "
                                "Gauss–Newton product); use attention='math'")
        return twice_differentiable_attention()
    return sdpa_kernel(SDPBackend.MATH) if attention == "math" else contextlib.nullcontext()


class ParamSpace:
    """The trainable parameters of a model as one flat vector ``w: (n_params,)``.

    Tied parameters appear once (``named_parameters`` de-duplicates them). ``names``/``shapes`` give
    the layout; ``flatten`` and ``unflatten`` convert between a list of tensors and the vector.
    """

    def __init__(self, model: nn.Module):
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise MathlensError("the model has no trainable parameters (requires_grad=False everywhere)")
        dtypes = {p.dtype for _, p in named}
        if len(dtypes) != 1:
            raise MathlensError(f"parameters have mixed dtypes {sorted(map(str, dtypes))}; cast the model first")
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.shapes = [tuple(p.shape) for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.size = sum(self.numels)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device

    def flatten(self, tensors: Iterable[torch.Tensor]) -> torch.Tensor:
        """List of tensors shaped like the parameters -> ``(n_params,)``."""
        return torch.cat([t.reshape(-1) for t in tensors])

    def unflatten(self, vec: torch.Tensor) -> list[torch.Tensor]:
        """``vec: (n_params,)`` -> list of views shaped like the parameters."""
        if vec.shape != (self.size,):
            raise MathlensError(f"vector has shape {tuple(vec.shape)}, expected ({self.size},)")
        return [c.view(s) for c, s in zip(torch.split(vec, self.numels), self.shapes)]

    def as_dict(self, vec: torch.Tensor, prefix: str = "", copy: bool = False) -> dict[str, torch.Tensor]:
        """``vec: (n_params,)`` -> ``{prefix + name: tensor}`` for ``torch.func.functional_call``.

        ``copy=True`` gives separate tensors rather than views of ``vec`` (forward-mode AD wants that).
        """
        return {prefix + n: (t.clone() if copy else t) for n, t in zip(self.names, self.unflatten(vec))}

    def get(self) -> torch.Tensor:
        """The current parameters as a detached copy ``(n_params,)``."""
        return self.flatten([p.detach() for p in self.params]).clone()

    @torch.no_grad()
    def set_(self, vec: torch.Tensor) -> None:
        """Copy ``vec: (n_params,)`` into the model's parameters (in place)."""
        for p, t in zip(self.params, self.unflatten(vec)):
            p.copy_(t)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put every module in eval mode for the duration; restore each module's own flag afterwards."""
    flags = [(m, m.training) for m in model.modules()]
    model.train(False)
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


class _LossModule(nn.Module):
    """Wraps ``loss_fn(model, batch)`` as a module so ``functional_call`` can swap the parameters."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


def _is_fused_attention_error(err: BaseException) -> bool:
    text = str(err)
    return "scaled_dot_product" in text or "flash_attention" in text or "efficient_attention" in text


class ModelLoss:
    """``L(w) = mean_b loss_fn(model, batch_b)`` as a function of the flat parameters ``w``.

    ``value(w)``, ``value_and_grad(w)`` never modify the model (they use ``functional_call``);
    ``w=None`` means the model's current parameters ``self.w0``.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, batches: Iterable):
        self.model = model
        self.loss_fn = loss_fn
        self.batches = list(batches)
        if not self.batches:
            raise MathlensError("batches is empty: give at least one batch to evaluate the loss on")
        self.space = ParamSpace(model)
        self.module = _LossModule(model, loss_fn)
        self.w0 = self.space.get()

    def _check_scalar(self, loss) -> torch.Tensor:
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise MathlensError("loss_fn(model, batch) must return a scalar tensor")
        return loss.reshape(())

    def batch_loss(self, w: torch.Tensor, batch) -> torch.Tensor:
        """Loss on one batch at parameters ``w: (n_params,)`` (differentiable in ``w``)."""
        return self._check_scalar(functional_call(self.module, self.space.as_dict(w, "model."), (batch,)))

    @torch.no_grad()
    def value(self, w: torch.Tensor | None = None) -> float:
        w = self.w0 if w is None else w
        with eval_mode(self.model):
            return float(sum(self.batch_loss(w, b) for b in self.batches)) / len(self.batches)

    def value_and_grad(self, w: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        """``(L(w), ∇L(w): (n_params,))`` with first-order autograd only (fused attention is fine)."""
        w = (self.w0 if w is None else w).detach().requires_grad_(True)
        total, g = 0.0, None  # one flat gradient buffer: no zero-filled accumulator, in-place sum and mean
        with eval_mode(self.model):
            for b in self.batches:
                loss = self.batch_loss(w, b)
                (gb,) = torch.autograd.grad(loss, w)
                total += float(loss.detach())
                g = gb if g is None else g.add_(gb)
        n = len(self.batches)
        return total / n, (g.div_(n) if n > 1 else g)


class _Operator:
    """Common interface: ``matvec``, ``size``, ``dtype``, ``device``, ``n_matvecs``."""

    size: int
    dtype: torch.dtype
    device: torch.device

    def __init__(self):
        self.n_matvecs = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if v.shape != (self.size,):
            raise MathlensError(f"vector has shape {tuple(v.shape)}, expected ({self.size},)")
        self.n_matvecs += 1
        return self._matvec(v.to(dtype=self.dtype, device=self.device))

    __matmul__ = matvec

    def dense(self) -> torch.Tensor:
        """The full matrix ``(size, size)``, column by column (tests and tiny models only)."""
        eye = torch.eye(self.size, dtype=self.dtype, device=self.device)
        return torch.stack([self.matvec(e) for e in eye], dim=1)


class MatrixOperator(_Operator):
    """A dense symmetric matrix ``A: (n, n)`` as an operator (tests, benchmarks, synthetic spectra)."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = A
        self.size = A.shape[0]
        self.dtype = A.dtype
        self.device = A.device

    def _matvec(self, v):
        return self.A @ v


class HessianOperator(_Operator):
    """``H = ∇²_w L(w)`` at the model's current parameters; ``matvec`` by ``method`` (see module doc).

    ``fd_step``: the relative finite-difference step τ (default ``0.2·eps^{1/3}`` of the dtype for
    ``fd_scheme="central"``, ``0.3·eps^{1/2}`` for ``"forward"``). ``reuse_graph`` (double backward only): keep
    each batch's first-order graph between products (None: when there is a single batch); :meth:`release`
    frees it. The parameters must not change while the operator is in use.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable, batches: Iterable,
                 method: str = "double_backward", attention: str = "auto", fd_step: float | None = None,
                 fd_scheme: str = "central", reuse_graph: bool | None = None):
        super().__init__()
        if method not in HVP_METHODS:
            raise MathlensError(f"unknown Hessian-vector method {method!r}; choose one of {HVP_METHODS}")
        self.loss = ModelLoss(model, loss_fn, batches)
        self.model, self.method, self.attention = model, method, attention
        attention_context(attention, method)  # validates the pair now
        space = self.loss.space
        self.space, self.size, self.dtype, self.device = space, space.size, space.dtype, space.device
        if fd_scheme not in ("central", "forward"):
            raise MathlensError(f"fd_scheme must be 'central' or 'forward', got {fd_scheme!r}")
        self.fd_scheme, self._g0 = fd_scheme, None
        self.reuse_graph = len(self.loss.batches) == 1 if reuse_graph is None else bool(reuse_graph)
        self._graphs: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # (w, ∇L) of each batch, with its graph
        eps = torch.finfo(self.dtype).eps
        default = 0.2 * eps ** (1 / 3) if fd_scheme == "central" else 0.3 * eps**0.5
        self.fd_step = float(default) if fd_step is None else float(fd_step)
        if not self.fd_step > 0:
            raise MathlensError(f"fd_step must be > 0, got {fd_step}")

    def _matvec(self, v):
        try:
            with attention_context(self.attention, self.method), eval_mode(self.model):
                return getattr(self, "_hvp_" + self.method)(v)
        except (RuntimeError, NotImplementedError) as err:
            if _is_fused_attention_error(err):
                raise MathlensError(
                    f"Hessian-vector product by {self.method!r} is not supported by fused attention "
                    "(no double backward / forward AD); use attention='recompute' (double backward) or 'math', or "
                    "method='finite_difference'") from err
            if self.method == "jvp" and ("forward AD" in str(err) or "ZeroTensors" in str(err)):
                raise MathlensError(
                    "forward-over-reverse failed inside loss_fn: an op lacks forward-mode AD of its backward in "
                    "PyTorch (e.g. F.mse_loss with reduction='mean', F.huber_loss); use method='double_backward' "
                    "or write the loss with elementary ops") from err
            raise

    def _first_order(self, b) -> tuple[torch.Tensor, torch.Tensor]:
        """``(w, ∇_w loss(batch b))`` with the gradient's graph (``create_graph=True``), ``w: (n_params,)`` a fresh
        leaf on the parameters: the gradient and every product come out flat, with no per-parameter lists to join."""
        w = self.loss.w0.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(self.loss.batch_loss(w, b), w, create_graph=True)
        return w, g

    def _hvp_double_backward(self, v):
        if self.reuse_graph and self._graphs is None:
            self._graphs = [self._first_order(b) for b in self.loss.batches]
        hv = None
        for j, b in enumerate(self.loss.batches):
            w, g = self._graphs[j] if self.reuse_graph else self._first_order(b)
            if g.requires_grad:
                (h,) = torch.autograd.grad(torch.dot(g, v), w, retain_graph=self.reuse_graph, allow_unused=True)
            else:  # a loss linear in w: its gradient has no graph, its Hessian is zero
                h = None
            h = torch.zeros_like(w) if h is None else h
            hv = h if hv is None else hv.add_(h)
        n = len(self.loss.batches)
        return hv.div_(n) if n > 1 else hv

    def release(self) -> None:
        """Free the first-order graphs kept by ``reuse_graph`` (the next product rebuilds them)."""
        self._graphs = None

    def _hvp_jvp(self, v):
        primals = self.space.as_dict(self.loss.w0, "model.", copy=True)
        tangents = self.space.as_dict(v, "model.", copy=True)
        hv = torch.zeros_like(v)
        for b in self.loss.batches:
            def f(p, b=b):
                return self.loss._check_scalar(functional_call(self.loss.module, p, (b,)))
            _, h = jvp(grad(f), (primals,), (tangents,))
            hv += torch.cat([h["model." + n].reshape(-1) for n in self.space.names])
        return hv / len(self.loss.batches)

    def fd_h(self, v: torch.Tensor) -> float:
        """The absolute step ``h = τ · max(‖w‖, 1) / ‖v‖``."""
        vn = float(v.norm())
        return self.fd_step * max(float(self.loss.w0.norm()), 1.0) / vn if vn > 0 else 0.0

    def _hvp_finite_difference(self, v):
        h = self.fd_h(v)
        if h == 0.0:
            return torch.zeros_like(v)
        _, g_plus = self.loss.value_and_grad(self.loss.w0 + h * v)
        if self.fd_scheme == "forward":
            if self._g0 is None:
                self._g0 = self.loss.value_and_grad(self.loss.w0)[1]
            return (g_plus - self._g0) / h
        _, g_minus = self.loss.value_and_grad(self.loss.w0 - h * v)
        return (g_plus - g_minus) / (2 * h)


OUTPUT_LOSSES = ("cross_entropy", "mse")


class GaussNewtonOperator(_Operator):
    """Generalised Gauss–Newton ``G = mean_b J_bᵀ H_out J_b`` (PSD), ``J_b = ∂f_b/∂w``.

    ``output_fn(model, batch) -> outputs`` or ``(outputs, targets)``: ``outputs: (..., C)`` the model's
    outputs (logits for cross-entropy). ``H_out`` of both losses does not depend on the targets.
    The loss per batch is ``F.cross_entropy`` (mean over the N rows) or ``F.mse_loss`` (mean over
    all elements), so ``H_out`` is ``(diag(p) − p pᵀ)/N`` per row, or ``2 I / numel``.
    ``Jv`` by ``torch.func.jvp``, ``Jᵀu`` by ``torch.func.vjp``. For linear models with MSE, G = H.
    """

    def __init__(self, model: nn.Module, output_fn: Callable, batches: Iterable, loss: str = "cross_entropy",
                 attention: str = "math"):
        super().__init__()
        if loss not in OUTPUT_LOSSES:
            raise MathlensError(f"unknown output loss {loss!r}; choose one of {OUTPUT_LOSSES}")
        attention_context(attention, "jvp")  # validates: forward-mode AD takes 'auto' (= 'math'), 'math' or 'model'
        self.model, self.output_fn, self.kind, self.attention = model, output_fn, loss, attention
        self.batches = list(batches)
        if not self.batches:
            raise MathlensError("batches is empty: give at least one batch to evaluate the loss on")
        self.space = ParamSpace(model)
        self.size, self.dtype, self.device = self.space.size, self.space.dtype, self.space.device
        self.module = _LossModule(model, lambda m, b: _outputs(output_fn(m, b)))
        self.w0 = self.space.get()

    def _h_out(self, out: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        if self.kind == "mse":
            return 2.0 * u / out.numel()
        logits, uu = out.reshape(-1, out.shape[-1]), u.reshape(-1, out.shape[-1])
        p = torch.softmax(logits, dim=-1)
        hu = p * uu - p * (p * uu).sum(-1, keepdim=True)
        return (hu / logits.shape[0]).reshape(out.shape)

    def _matvec(self, v):
        ctx = attention_context(self.attention, "jvp")
        primals = self.space.as_dict(self.w0, "model.", copy=True)
        tangents = self.space.as_dict(v, "model.", copy=True)
        gv = torch.zeros_like(v)
        with ctx, eval_mode(self.model):
            for b in self.batches:
                def f(p, b=b):
                    return functional_call(self.module, p, (b,))
                out, jv = jvp(f, (primals,), (tangents,))
                _, pullback = vjp(f, primals)
                (jt,) = pullback(self._h_out(out.detach(), jv.detach()))
                gv += torch.cat([jt["model." + n].reshape(-1) for n in self.space.names])
        return gv / len(self.batches)


def _outputs(res) -> torch.Tensor:
    return res[0] if isinstance(res, tuple | list) else res


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` (``‖a‖`` when ``b`` is zero)."""
    nb = float(b.norm())
    return float((a - b).norm()) / (nb if nb > 0 else max(float(a.norm()), math.ulp(1.0)))
