"""Suites: the scale at which every experiment runs, and its seeds."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from mathlens.errors import MathlensError


@dataclass(frozen=True)
class Suite:
    name: str
    seeds: tuple[int, ...]
    n_layer: int
    n_embd: int
    n_head: int
    block_size: int
    batch_size: int
    train_steps: int
    lr: float
    eval_batches: int
    batch_small: int = 8  # claim 12: small- vs large-batch training
    batch_large: int = 128
    device: str = "cpu"
    corpus: str = "tinyshakespeare"
    budget_s: int = 180

    def to_dict(self) -> dict:
        return asdict(self)


SUITES = {
    # every experiment at the smallest useful scale: the test run uses it (≤ 3 min on 2 CPU cores)
    "quick": Suite("quick", (0, 1, 2), n_layer=2, n_embd=48, n_head=4, block_size=64, batch_size=16,
                   train_steps=150, lr=3e-3, eval_batches=4, batch_large=64, budget_s=180),
    # `mathlens validate` with no arguments: ≤ 15 min on 2 CPU cores
    "default": Suite("default", (0, 1, 2), n_layer=3, n_embd=64, n_head=4, block_size=128, batch_size=16,
                     train_steps=300, lr=2e-3, eval_batches=8, batch_large=64, budget_s=900),
    # larger models on one GPU (≤ 15 min on an H100)
    "gpu": Suite("gpu", (0, 1, 2, 3, 4), n_layer=6, n_embd=384, n_head=6, block_size=256, batch_size=64,
                 train_steps=2000, lr=1e-3, eval_batches=20, batch_small=16, batch_large=512, device="cuda",
                 budget_s=900),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise MathlensError(f"unknown suite {name!r} (allowed: {', '.join(SUITES)})")
    return SUITES[name]
