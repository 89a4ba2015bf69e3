"""Synthetic tasks with known answers (the answer is always the last target token).

* :class:`SparseBoolean` - ``n_bits`` random bits, ``label = f(bits[relevant])`` for ``f`` in
  ``and | or | parity | majority`` on ``n_relevant`` positions chosen by ``seed``; the sequence is
  ``b_1 .. b_T  SEP  label`` (tokens 0/1 bits, 2 = SEP).
* :class:`AssociativeRecall` - ``n_pairs`` key/value pairs (one fact + ``n_pairs - 1`` distractors) among
  filler tokens, then ``QUERY key`` -> the fact's value; ``distance`` = number of tokens between the fact's
  value and the QUERY token.
* :class:`ModularArithmetic` - ``a op b = c (mod p)``, ``op`` in ``+ - *``; the (op, a, b) triples are split
  into train/val by ``train_fraction`` with ``seed``; :meth:`~SyntheticTask.iter_eval_batches` walks the
  whole split.

Plus the sources of :mod:`mathlens.data.markov` (re-exported here). All share :class:`SyntheticTask`:
``get_batch(split, batch_size, generator=g) -> (x, y)``, ``answer_mask``, ``accuracy(logits, y)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mathlens.data.markov import EntropyEstimate, HiddenMarkovModel, MarkovChain
from mathlens.data.synthetic_base import SyntheticTask
from mathlens.errors import MathlensError

__all__ = [
    "AssociativeRecall",
    "EntropyEstimate",
    "HiddenMarkovModel",
    "MarkovChain",
    "ModularArithmetic",
    "SparseBoolean",
    "SyntheticTask",
]

BOOLEAN_FUNCTIONS = ("and", "or", "parity", "majority")


@dataclass(eq=False)
class SparseBoolean(SyntheticTask):
    """Next-token prediction of a Boolean function of ``n_relevant`` of ``n_bits`` positions."""

    n_bits: int = 32
    n_relevant: int = 3
    function: str = "parity"
    p_one: float = 0.5
    seed: int = 0

    SEP = 2

    def __post_init__(self):
        if self.function not in BOOLEAN_FUNCTIONS:
            raise MathlensError(f"unknown Boolean function {self.function!r}; known: {', '.join(BOOLEAN_FUNCTIONS)}")
        if not 1 <= self.n_relevant <= self.n_bits:
            raise MathlensError(f"n_relevant must be in [1, n_bits={self.n_bits}], got {self.n_relevant}")
        if not 0.0 < self.p_one < 1.0:
            raise MathlensError(f"p_one must be in (0, 1), got {self.p_one}")
        rng = np.random.default_rng(self.seed)
        self.relevant = np.sort(rng.choice(self.n_bits, self.n_relevant, replace=False))  # (s,) known support
        self.vocab_size = 3
        self.block_size = self.n_bits + 1  # x = bits + SEP, the last target is the label

    def label(self, bits: np.ndarray) -> np.ndarray:
        """``bits: (n, n_bits)`` in {0, 1} -> ``(n,)`` labels in {0, 1}."""
        r = np.asarray(bits)[:, self.relevant]
        s = r.sum(axis=1)
        if self.function == "and":
            return (s == self.n_relevant).astype(np.int64)
        if self.function == "or":
            return (s > 0).astype(np.int64)
        if self.function == "parity":
            return s % 2
        return (2 * s > self.n_relevant).astype(np.int64)  # majority (ties -> 0)

    def sample(self, n: int, rng: np.random.Generator, split: str = "train") -> np.ndarray:
        bits = (rng.random((n, self.n_bits)) < self.p_one).astype(np.int64)
        return np.concatenate([bits, np.full((n, 1), self.SEP), self.label(bits)[:, None]], axis=1)


@dataclass(eq=False)
class AssociativeRecall(SyntheticTask):
    """Recall the value stored with a queried key in a context of ``block_size`` tokens.

    Tokens: keys ``[0, n_keys)``, values ``[n_keys, n_keys + n_values)``, fillers after them (``n_fillers``
    random filler tokens; 1 = a single pad token), then the QUERY token (last id). ``distance=None`` draws
    the distance uniformly per example from every feasible value.
    """

    block_size: int = 64
    n_pairs: int = 8
    distance: int | None = None
    n_keys: int = 32
    n_values: int = 32
    n_fillers: int = 1
    seed: int = 0

    def __post_init__(self):
        self.body = self.block_size - 2  # sequence = body (pairs + fillers), QUERY, key, value
        if self.n_pairs < 1 or self.n_pairs > self.n_keys:
            raise MathlensError(f"n_pairs must be in [1, n_keys={self.n_keys}], got {self.n_pairs}")
        if 2 * self.n_pairs > self.body:
            raise MathlensError(f"{self.n_pairs} pairs do not fit in block_size {self.block_size} (need 2*n_pairs+2)")
        if self.n_values < 1 or self.n_fillers < 1:
            raise MathlensError("n_values and n_fillers must be >= 1")
        if self.distance is not None and not 0 <= self.distance <= self.body - 2:
            raise MathlensError(f"distance must be in [0, {self.body - 2}], got {self.distance}")
        self.filler0 = self.n_keys + self.n_values
        self.query_token = self.filler0 + self.n_fillers
        self.vocab_size = self.query_token + 1

    def sample(self, n: int, rng: np.random.Generator, split: str = "train") -> np.ndarray:
        seq = np.empty((n, self.block_size + 1), dtype=np.int64)
        for i in range(n):
            seq[i] = self._one(rng)
        return seq

    def _one(self, rng: np.random.Generator) -> np.ndarray:
        n_d, free = self.n_pairs - 1, self.body - 2

        def placements(d: int) -> list[int]:  # distractor pairs after the fact: 2 k <= d and 2 (n_d - k) <= free - d
            return [k for k in range(n_d + 1) if 2 * k <= d and 2 * (n_d - k) <= free - d]

        if self.distance is None:  # uniform over the distances that leave room for every distractor pair
            feasible = [d for d in range(free + 1) if placements(d)]
            d = int(rng.integers(0, free + 1)) if len(feasible) == free + 1 else int(rng.choice(feasible))
        else:
            d = self.distance
        ks = placements(d)
        if not ks:
            raise MathlensError(
                f"distance {d} leaves no room for {n_d} distractor pairs in block_size {self.block_size}"
            )
        k = int(rng.choice(ks))
        keys = rng.choice(self.n_keys, self.n_pairs, replace=False)  # keys[0] is the fact
        vals = rng.integers(self.n_keys, self.n_keys + self.n_values, self.n_pairs)

        def side(pairs: list[int], n_cells: int) -> list[int]:
            items = [("p", j) for j in pairs] + [("f", 0)] * (n_cells - 2 * len(pairs))
            out: list[int] = []
            for kind, j in (items[m] for m in rng.permutation(len(items))):
                out += (
                    [int(keys[j]), int(vals[j])] if kind == "p" else [self.filler0 + int(rng.integers(self.n_fillers))]
                )
            return out

        before = side(list(range(1 + k, self.n_pairs)), free - d)
        after = side(list(range(1, 1 + k)), d)
        body = before + [int(keys[0]), int(vals[0])] + after
        return np.asarray(body + [self.query_token, int(keys[0]), int(vals[0])], dtype=np.int64)


_OPS = {"+": np.add, "-": np.subtract, "*": np.multiply}


@dataclass(eq=False)
class ModularArithmetic(SyntheticTask):
    """``a op b = c (mod p)`` as 5 tokens: numbers ``[0, p)``, then ``+ - * =`` as ``p .. p+3``."""

    p: int = 97
    ops: tuple[str, ...] = ("+",)
    train_fraction: float = 0.5
    seed: int = 0

    def __post_init__(self):
        if self.p < 2:
            raise MathlensError(f"modulus p must be >= 2, got {self.p}")
        bad = [o for o in self.ops if o not in _OPS]
        if bad or not self.ops:
            raise MathlensError(f"ops must be a non-empty subset of + - *, got {list(self.ops)}")
        if not 0.0 < self.train_fraction < 1.0:
            raise MathlensError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        p = self.p
        self.ops = tuple(self.ops)
        self.vocab_size, self.block_size = p + 4, 4
        self.eq_token = p + 3
        o, a, b = np.meshgrid(np.arange(len(self.ops)), np.arange(p), np.arange(p), indexing="ij")
        triples = np.stack([o.ravel(), a.ravel(), b.ravel()], axis=1)  # (n_ops p^2, 3)
        perm = np.random.default_rng(self.seed).permutation(len(triples))
        n_train = int(round(self.train_fraction * len(triples)))
        n_train = min(max(n_train, 1), len(triples) - 1)
        self.splits = {
            "train": self._encode(triples[np.sort(perm[:n_train])]),
            "val": self._encode(triples[np.sort(perm[n_train:])]),
        }  # (n, 5) sequences

    def answer(self, op: str, a, b):
        """``c = a op b mod p`` (vectorised)."""
        return _OPS[op](np.asarray(a), np.asarray(b)) % self.p

    def _encode(self, triples: np.ndarray) -> np.ndarray:
        op_tok = np.asarray([self.p + "+-*".index(o) for o in self.ops])[triples[:, 0]]
        c = np.empty(len(triples), dtype=np.int64)
        for i, o in enumerate(self.ops):
            sel = triples[:, 0] == i
            c[sel] = self.answer(o, triples[sel, 1], triples[sel, 2])
        eq = np.full(len(triples), self.eq_token)
        return np.stack([triples[:, 1], op_tok, triples[:, 2], eq, c], axis=1).astype(np.int64)

    def sample(self, n: int, rng: np.random.Generator, split: str = "train") -> np.ndarray:
        data = self.splits[split]
        return data[rng.integers(0, len(data), n)]

    def eval_set(self, split: str, n_examples: int, seed: int) -> np.ndarray:
        return self.splits[split]  # the whole split, exactly once
