"""Token datasets: a corpus encoded once, cached as a memory-mapped array, split 90/10 like nanoGPT.

Main entry points::

    corpus = load_corpus("tinyshakespeare")
    tok = CharTokenizer.train(corpus.text)
    data = TokenDataset.from_corpus(corpus, tok)               # cached under cache_dir()/tokens
    g = torch.Generator().manual_seed(0)
    x, y = data.get_batch("train", batch_size=64, block_size=256, generator=g)   # (B, T) int64, y = x >> 1
    for x, y in data.iter_eval_batches("val", batch_size=64, block_size=256):
        ...   # every target token of "val" exactly once; y == IGNORE_INDEX (-1) where not counted

The first ``ceil(0.9 n)`` tokens are ``"train"``, the rest ``"val"``. The token file is keyed by the
corpus' SHA-256 and the tokenizer's fingerprint, written atomically, and reopened read-only as
``np.memmap`` (``uint16`` when the vocabulary fits, else ``uint32``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from mathlens.data.corpora import Corpus, cache_dir, check_corpus_length, load_corpus
from mathlens.errors import MathlensError
from mathlens.io import atomic_path

SPLITS = ("train", "val")
#: target value of positions that must not be counted (``F.cross_entropy(..., ignore_index=-1)``)
IGNORE_INDEX = -1


class TokenDataset:
    """A token stream with a train/val split.

    ``tokens: (n_tokens,)`` unsigned ints (a read-only ``np.memmap`` when cached);
    ``tokens[:n_train]`` is ``"train"``, ``tokens[n_train:]`` is ``"val"``.
    """

    def __init__(self, tokens: np.ndarray, vocab_size: int, n_train: int, name: str = "tokens", path=None):
        if not 0 <= n_train <= len(tokens):
            raise MathlensError(f"n_train must be in [0, {len(tokens)}], got {n_train}")
        self.tokens = tokens
        self.vocab_size = int(vocab_size)
        self.n_train = int(n_train)
        self.name = name
        self.path: Path | None = Path(path) if path is not None else None
        self.cached = False  # True when the tokens were read back from an existing cache file

    @classmethod
    def from_corpus(
        cls,
        corpus: Corpus | str | os.PathLike,
        tokenizer,
        *,
        train_fraction: float = 0.9,
        cache: bool = True,
        cache_root: str | os.PathLike | None = None,
    ) -> TokenDataset:
        """Encode ``corpus`` (a :class:`Corpus`, a corpus name or a path) with ``tokenizer``.

        With ``cache`` the ids go to ``<cache_root or cache_dir()>/tokens/<name>-<hash>.bin`` and are
        reused by later calls with the same text and tokenizer.
        """
        if not 0.0 < train_fraction < 1.0:
            raise MathlensError(f"train_fraction must be in (0, 1), got {train_fraction}")
        if not isinstance(corpus, Corpus):
            corpus = load_corpus(corpus)
        dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.uint32
        key = f"{corpus.sha256[:16]}-{tokenizer.kind}-{tokenizer.fingerprint()}"
        path = Path(cache_root or cache_dir()) / "tokens" / f"{_safe(corpus.name)}-{key}.{np.dtype(dtype).name}"
        if cache and path.is_file():
            tokens = np.memmap(path, dtype=dtype, mode="r")
            cached = True
        else:
            ids = tokenizer.encode_array(corpus.text).astype(dtype)
            if cache:
                with atomic_path(path) as tmp:
                    ids.tofile(tmp)
                tokens = np.memmap(path, dtype=dtype, mode="r")
            else:
                tokens = ids
            cached = False
        if len(tokens) < 2:
            raise MathlensError(f"corpus {corpus.name!r} encodes to {len(tokens)} token(s); need at least 2")
        n_train = min(max(math.ceil(train_fraction * len(tokens)), 1), len(tokens) - 1)
        data = cls(tokens, tokenizer.vocab_size, n_train, name=corpus.name, path=path if cache else None)
        data.cached = cached
        return data

    def split(self, split: str) -> np.ndarray:
        """``(n_split,)`` token ids of ``"train"`` or ``"val"`` (a view, no copy)."""
        if split == "train":
            return self.tokens[: self.n_train]
        if split == "val":
            return self.tokens[self.n_train :]
        raise MathlensError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")

    def __len__(self) -> int:
        return len(self.tokens)

    def get_batch(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        generator: torch.Generator | None = None,
        *,
        seed: int | None = None,
        device: str | torch.device = "cpu",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows: ``x, y: (batch_size, block_size)`` int64 with ``y[:, t] = x[:, t + 1]`` in the stream.

        Offsets are uniform on ``[0, n_split - block_size)``, drawn from ``generator`` (or a fresh one seeded
        with ``seed``); exactly one of the two must be given, so batches are reproducible.
        """
        data = self.split(split)
        _check_sizes(batch_size, block_size)
        check_corpus_length(len(data), block_size, what=f"the {split} split of {self.name!r}")
        g = _generator(generator, seed)
        ix = torch.randint(len(data) - block_size, (batch_size,), generator=g).numpy()
        window = np.asarray(data[ix[:, None] + np.arange(block_size + 1)], dtype=np.int64)
        window = torch.from_numpy(window)
        return _to_device(window[:, :-1].contiguous(), window[:, 1:].contiguous(), device)

    def iter_eval_batches(
        self,
        split: str,
        batch_size: int,
        block_size: int,
        *,
        device: str | torch.device = "cpu",
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """All of ``split`` in non-overlapping windows: ``x, y: (b <= batch_size, block_size)`` int64.

        Every target (token 1 .. n_split-1 of the split) appears in exactly one ``y`` entry ``>= 0``.
        When ``block_size`` does not divide ``n_split - 1`` the last window is the final ``block_size + 1``
        tokens, and its targets already counted are set to :data:`IGNORE_INDEX`. The exact mean loss is
        ``sum(loss_sum) / sum((y >= 0).sum())`` over the batches.
        """
        data = self.split(split)
        _check_sizes(batch_size, block_size)
        check_corpus_length(len(data), block_size, what=f"the {split} split of {self.name!r}")
        n_targets = len(data) - 1
        starts = list(range(0, n_targets - block_size + 1, block_size))
        covered = starts[-1] + block_size  # targets 0 .. covered-1 are in the full windows
        tail = covered < n_targets
        if tail:
            starts.append(n_targets - block_size)
        offs = np.arange(block_size + 1)
        for b0 in range(0, len(starts), batch_size):
            ix = np.asarray(starts[b0 : b0 + batch_size])
            window = torch.from_numpy(np.asarray(data[ix[:, None] + offs], dtype=np.int64))
            x, y = window[:, :-1].clone(), window[:, 1:].clone()  # y is edited below: no shared storage
            if tail and b0 + len(ix) == len(starts):
                n_new = n_targets - covered  # only the last n_new targets of the tail window are new
                y[-1, : block_size - n_new] = IGNORE_INDEX
            yield _to_device(x, y, device)

    @functools.cached_property
    def tokens_sha256(self) -> str:
        """sha256 of the token ids (as little-endian int64): what a resumed run must train on again."""
        return hashlib.sha256(np.ascontiguousarray(self.tokens, dtype="<i8").tobytes()).hexdigest()

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "tokens_sha256": self.tokens_sha256,
            "n_tokens": len(self.tokens),
            "n_train": self.n_train,
            "n_val": len(self.tokens) - self.n_train,
            "vocab_size": self.vocab_size,
            "path": str(self.path) if self.path else None,
        }


def _check_sizes(batch_size: int, block_size: int) -> None:
    if batch_size < 1 or block_size < 1:
        raise MathlensError(f"batch_size and block_size must be >= 1, got {batch_size} and {block_size}")


def _generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if (generator is None) == (seed is None):
        raise MathlensError("give exactly one of generator= or seed= for reproducible batches")
    return generator if generator is not None else torch.Generator().manual_seed(int(seed))


def _to_device(x: torch.Tensor, y: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    device = torch.device(device)
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:64] or "corpus"
