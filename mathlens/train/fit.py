"""In-memory training for controlled experiments: ``train_model(config, data, steps, ...) -> (model, FitResult)``.

The same optimiser groups and schedule as :func:`mathlens.train.train` (``make_optimizer``, ``lr_at``), but
the data is any object with ``get_batch(split, batch_size, block_size, generator=..., device=...)`` — a
:class:`~mathlens.data.TokenDataset` or a synthetic task with a known answer — and no run directory is
required. Reproducible bit for bit on CPU for a given ``seed``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from mathlens.errors import MathlensError
from mathlens.models.gpt import GPT, GPTConfig
from mathlens.train.config import OptimConfig
from mathlens.train.optim import lr_at, make_optimizer
from mathlens.train.setup import autocast_for

SYNC_EVERY = 50  # steps between divergence checks on an accelerator (each check waits for the device)


@dataclass
class FitResult:
    steps: int
    final_train_loss: float
    wall_time_s: float
    losses: list[float] = field(default_factory=list)  # training loss of every step

    def to_dict(self) -> dict:
        return asdict(self)


def _sync_every(device: torch.device, callbacks) -> int:
    """Steps between divergence checks: every step on the CPU (free) and when callbacks need the loss."""
    return 1 if callbacks or device.type == "cpu" else SYNC_EVERY


def _check_finite(losses: torch.Tensor, start: int, stop: int) -> None:
    """Raise at the first non-finite loss among steps ``start … stop − 1`` (one device→host transfer)."""
    bad = ~torch.isfinite(losses[start:stop])
    if bool(bad.any()):
        step = start + int(bad.nonzero()[0, 0])
        raise MathlensError(f"training diverged at step {step}: loss = {float(losses[step])} (lower the learning rate)")


def train_model(config: GPTConfig, data, steps: int, batch_size: int = 16, lr: float = 1e-3, optimizer: str = "adamw",
                seed: int = 0, device: str = "cpu", weight_decay: float = 0.1, warmup: int | None = None,
                grad_clip: float = 1.0, out_dir: str | Path | None = None, callbacks=(),
                answers_only: bool = False, dtype: str = "auto") -> tuple[GPT, FitResult]:
    """Train a fresh ``GPT(config)`` for ``steps`` AdamW/SGD steps (warm-up then cosine decay to lr/10).

    ``callbacks``: ``cb(step, model, logs) -> dict | None`` after each step, as in :func:`mathlens.train.train`.
    ``out_dir``: when given, the final weights are saved there (safetensors) with the result as JSON.
    ``answers_only``: a synthetic task's loss on its answer positions only (``get_batch(answers_only=True)``).
    ``dtype``: as ``run.dtype`` of :func:`mathlens.train.train`: ``"auto"`` is bf16 autocast on CUDA (weights stay
    float32) and float32 elsewhere. On an accelerator without callbacks the losses stay on the device and are
    checked for divergence every ``SYNC_EVERY`` steps, so the host never waits for the device inside the loop.
    """
    torch.manual_seed(seed)
    device = torch.device(device)
    model = GPT(config).to(device)
    warmup = max(1, steps // 10) if warmup is None else warmup
    ocfg = OptimConfig(name=optimizer, lr=lr, weight_decay=weight_decay, warmup_iters=warmup,
                       min_lr=lr / 10, grad_clip=grad_clip)
    opt = make_optimizer(model, ocfg, device.type)
    gen = torch.Generator().manual_seed(seed)
    _, amp = autocast_for(dtype, device)
    every = _sync_every(device, callbacks)
    losses = torch.zeros(steps, dtype=torch.float32, device=device)
    t0 = time.perf_counter()
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, ocfg, steps)
        x, y = data.get_batch("train", batch_size, config.block_size, generator=gen, device=device,
                              **({"answers_only": True} if answers_only else {}))
        with amp():
            _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        losses[step] = loss.detach()
        if (step + 1) % every == 0 or step + 1 == steps:
            _check_finite(losses, step // every * every, step + 1)  # the steps since the last check
        for cb in callbacks:  # updates done, as train(); every == 1 here, so this loss has been checked
            cb(step + 1, model, {"train_loss": float(losses[step]), "lr": opt.param_groups[0]["lr"]})
    losses = losses.tolist()
    result = FitResult(steps, losses[-1] if losses else float("nan"), time.perf_counter() - t0, losses)
    if out_dir is not None:
        from safetensors.torch import save_model

        from mathlens.io import atomic_path, write_json

        out = Path(out_dir)
        with atomic_path(out / "model.safetensors") as tmp:
            save_model(model, str(tmp))
        write_json(out / "fit.json", {"config": config.to_dict(), "result": result.to_dict()})
    return model.eval(), result
