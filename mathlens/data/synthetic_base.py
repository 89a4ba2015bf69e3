"""Common interface of the synthetic sources (:mod:`mathlens.data.markov`, :mod:`mathlens.data.synthetic`).

A task fixes its ``vocab_size`` and ``block_size`` (length of ``x``); its own ``seed`` fixes the task
(transition matrix, relevant bits, train/test pairs), while the ``generator``/``seed`` passed to
``get_batch`` fixes the draw. Batches look like :meth:`TokenDataset.get_batch`'s, so a trainer can use
either::

    x, y = task.get_batch("train", batch_size, generator=g)        # (B, T) int64, y = next tokens
    acc = task.accuracy(logits, y)                                  # on the answer positions only
    task.answer_mask                                                # (T,) bool: which y are answers
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from mathlens.errors import MathlensError

IGNORE_INDEX = -1


class SyntheticTask:
    """Base class; subclasses set ``vocab_size``, ``block_size`` and implement :meth:`sample`."""

    vocab_size: int
    block_size: int

    def sample(self, n: int, rng: np.random.Generator, split: str = "train") -> np.ndarray:
        """``seq: (n, block_size + 1)`` int64 token sequences (``x = seq[:, :-1]``, ``y = seq[:, 1:]``)."""
        raise NotImplementedError

    @property
    def answer_mask(self) -> np.ndarray:
        """``(block_size,)`` bool: the positions of ``y`` that hold a known answer (default: only the last)."""
        mask = np.zeros(self.block_size, dtype=bool)
        mask[-1] = True
        return mask

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int | None = None,
        generator: torch.Generator | None = None,
        *,
        seed: int | None = None,
        device: str | torch.device = "cpu",
        answers_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x, y: (batch_size, block_size)`` int64; with ``answers_only`` the non-answer targets are -1."""
        _check_split(split)
        if block_size is not None and block_size != self.block_size:
            raise MathlensError(f"this task has block_size {self.block_size}, got block_size={block_size}")
        if batch_size < 1:
            raise MathlensError(f"batch_size must be >= 1, got {batch_size}")
        if (generator is None) == (seed is None):
            raise MathlensError("give exactly one of generator= or seed= for reproducible batches")
        if generator is None:
            generator = torch.Generator().manual_seed(int(seed))
        draw = int(torch.randint(2**62, (1,), generator=generator))
        # the split is part of the stream: a val batch never repeats the train batch of the same seed
        rng = np.random.default_rng(draw if split == "train" else [draw, 3])
        return self._xy(self.sample(batch_size, rng, split), device, answers_only)

    def iter_eval_batches(
        self,
        split: str,
        batch_size: int,
        block_size: int | None = None,
        *,
        n_examples: int = 1024,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed evaluation set of ``n_examples`` sequences drawn with ``seed`` (tasks with a finite
        split, like modular arithmetic, yield the whole split instead)."""
        _check_split(split)
        if block_size is not None and block_size != self.block_size:
            raise MathlensError(f"this task has block_size {self.block_size}, got block_size={block_size}")
        seq = self.eval_set(split, n_examples, seed)
        for i in range(0, len(seq), batch_size):
            yield self._xy(seq[i : i + batch_size], device, False)

    def eval_set(self, split: str, n_examples: int, seed: int) -> np.ndarray:
        return self.sample(n_examples, np.random.default_rng([seed, 1 + (split == "val")]), split)

    def accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        """Fraction of answer positions where ``argmax(logits) == y``. ``logits: (B, T, V)``, ``y: (B, T)``."""
        mask = torch.as_tensor(self.answer_mask, device=y.device).expand_as(y) & (y >= 0)
        return float((logits.argmax(-1) == y)[mask].float().mean())

    def _xy(self, seq: np.ndarray, device, answers_only: bool) -> tuple[torch.Tensor, torch.Tensor]:
        seq = torch.from_numpy(np.ascontiguousarray(seq, dtype=np.int64))
        x, y = seq[:, :-1].clone(), seq[:, 1:].clone()  # y may be edited: no shared storage
        if answers_only:
            y[:, ~torch.from_numpy(self.answer_mask)] = IGNORE_INDEX
        return x.to(device), y.to(device)


def _check_split(split: str) -> None:
    if split not in ("train", "val"):
        raise MathlensError(f"unknown split {split!r}; known: train, val")


def categorical(cum: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: ``cum: (n, V)`` row-wise cumulative probabilities, ``u: (n,)`` uniforms -> ``(n,)``."""
    return np.minimum((u[:, None] >= cum).sum(axis=1), cum.shape[1] - 1)


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats along ``axis`` (0 log 0 = 0)."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log(p), 0.0).sum(axis=axis)


def stationary_distribution(Q: np.ndarray) -> np.ndarray:
    """``pi: (S,)`` with ``pi Q = pi``, ``sum(pi) = 1`` for a row-stochastic ``Q: (S, S)`` (irreducible,
    so ``pi`` is unique; periodic chains are fine since this solves the linear system)."""
    S = len(Q)
    A = np.vstack([Q.T - np.eye(S), np.ones((1, S))])
    b = np.zeros(S + 1)
    b[-1] = 1.0
    pi = np.linalg.lstsq(A, b, rcond=None)[0]
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()
