"""Validation loss: exact over the whole split (default) or estimated from random batches."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mathlens.data.dataset import IGNORE_INDEX, TokenDataset
from mathlens.train.setup import DistInfo


@torch.no_grad()
def evaluate(model: nn.Module, data: TokenDataset, split: str, block_size: int, batch_size: int,
             device: torch.device, autocast=None, dist_info: DistInfo | None = None,
             iters: int = 0, seed: int = 0) -> float:
    """Mean next-token cross-entropy (nats/token) on ``split``.

    ``iters = 0``: every target token of the split exactly once (non-overlapping windows), i.e.
    ``Σ_t −log p(x_{t+1} | x_{≤t}) / n`` exactly; ``iters = k``: k random batches drawn from a generator
    seeded with ``seed`` (the training sampler is not touched). Batches are shared round-robin over ranks.
    """
    dist_info = dist_info or DistInfo()
    was_training = model.training
    model.eval()
    if iters == 0:
        batches = data.iter_eval_batches(split, batch_size, block_size)
    else:
        g = torch.Generator().manual_seed(seed)
        batches = (data.get_batch(split, batch_size, block_size, generator=g) for _ in range(iters))
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for i, (x, y) in enumerate(batches):
        if i % dist_info.world != dist_info.rank:
            continue
        x, y = x.to(device), y.to(device)
        with autocast() if autocast else torch.autocast(device.type, enabled=False):
            logits, _ = model(x)
        total += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="sum").double()
        count += (y != IGNORE_INDEX).sum()
    total, count = dist_info.all_sum(total), dist_info.all_sum(count)
    model.train(was_training)
    return float(total / count)
