"""Sources with a known entropy rate: Markov chains of order k and hidden Markov models.

A model's per-token cross-entropy (nats) can never go below the source's entropy rate; these sources
say what that floor is.

* :class:`MarkovChain` - ``P: (V^k, V)``, row ``s`` = distribution of the next token after the k-tuple
  ``s`` (base-V digits, most recent token last), rows ~ Dirichlet(concentration * 1). Exact entropy rate
  ``H = sum_s pi_s H(P_s.)`` with ``pi`` the stationary law of the k-tuple chain. :meth:`MarkovChain.bayes_loss`
  is the exact mean cross-entropy of the Bayes-optimal predictor over a window of ``block_size`` targets
  (positions with fewer than k tokens of context cost ``H(X_j | X_<j) >= H``).
* :class:`HiddenMarkovModel` - hidden chain ``A: (S, S)``, emissions ``B: (S, V)``. The entropy rate has no
  closed form; :meth:`HiddenMarkovModel.entropy_rate_estimate` uses the forward algorithm on long samples,
  ``-1/n log p(x_1..n) -> H`` almost surely (Shannon-McMillan-Breiman); the estimate is biased upward by
  O(1/n) (``H(X_1..n)/n >= H``) and comes with a standard error over independent sequences.

Sequences start in the stationary law, so every window is a stationary sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from mathlens.data.synthetic_base import SyntheticTask, categorical, entropy, stationary_distribution
from mathlens.errors import MathlensError


@dataclass
class EntropyEstimate:
    """A Monte-Carlo estimate in nats per token with its standard error."""

    value: float
    stderr: float
    n_tokens: int

    def to_dict(self) -> dict:
        return {"value": float(self.value), "stderr": float(self.stderr), "n_tokens": int(self.n_tokens)}


@dataclass(eq=False)
class MarkovChain(SyntheticTask):
    """Order-``order`` Markov source on ``vocab_size`` tokens; pass ``transition`` to fix ``P`` by hand."""

    vocab_size: int = 16
    order: int = 1
    concentration: float = 1.0
    block_size: int = 64
    seed: int = 0
    transition: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        V, k = self.vocab_size, self.order
        if V < 1 or k < 1 or self.block_size < 1:
            raise MathlensError("MarkovChain needs vocab_size >= 1, order >= 1, block_size >= 1")
        if V**k > 4096:
            raise MathlensError(f"MarkovChain has vocab_size**order = {V**k} states; at most 4096 supported")
        if self.transition is None:
            if self.concentration <= 0:
                raise MathlensError(f"concentration must be > 0, got {self.concentration}")
            rng = np.random.default_rng(self.seed)
            self.transition = rng.dirichlet(np.full(V, float(self.concentration)), size=V**k)
        P = np.asarray(self.transition, dtype=np.float64)
        if P.shape != (V**k, V) or (P < 0).any() or not np.allclose(P.sum(1), 1.0):
            raise MathlensError(f"transition must be a row-stochastic ({V**k}, {V}) matrix")
        self.transition = P
        self.n_states = V**k
        self._next = (np.arange(self.n_states)[:, None] * V + np.arange(V)[None, :]) % self.n_states
        Q = np.zeros((self.n_states, self.n_states))
        np.add.at(Q, (np.repeat(np.arange(self.n_states), V), self._next.ravel()), P.ravel())
        self.stationary = stationary_distribution(Q)  # (V^k,) law of the last k tokens
        self._cum = np.cumsum(P, axis=1)

    @property
    def answer_mask(self) -> np.ndarray:
        return np.ones(self.block_size, dtype=bool)  # every next token is a target

    @property
    def entropy_rate(self) -> float:
        """``H = sum_s pi_s H(P_s.)`` in nats per token."""
        return float(self.stationary @ entropy(self.transition))

    def conditional_entropies(self, n: int) -> np.ndarray:
        """``h: (n,)``, ``h[j-1] = H(X_j | X_0..X_{j-1})`` for j = 1..n under the stationary law (nats)."""
        V, k = self.vocab_size, self.order
        joint = self.stationary.reshape((V,) * k)  # axes = X_0 .. X_{k-1}
        H = [float(entropy(joint.sum(axis=tuple(range(j + 1, k))).ravel())) for j in range(k)]  # H(X_0..X_j)
        h = [H[j] - H[j - 1] for j in range(1, k)] + [self.entropy_rate] * max(n - k + 1, 0)
        return np.asarray(h[:n])

    def bayes_loss(self, block_size: int | None = None) -> float:
        """Exact mean per-token cross-entropy (nats) of the Bayes-optimal predictor over ``block_size``
        targets, each seeing all tokens before it in the window (= entropy rate when ``order == 1``)."""
        return float(self.conditional_entropies(block_size or self.block_size).mean())

    def sample(self, n: int, rng: np.random.Generator, split: str = "train") -> np.ndarray:
        """``seq: (n, block_size + 1)`` int64, started from the stationary law."""
        V, k, L = self.vocab_size, self.order, self.block_size + 1
        state = categorical(np.cumsum(self.stationary)[None, :].repeat(n, 0), rng.random(n))
        digits = (state[:, None] // V ** np.arange(k - 1, -1, -1)) % V  # (n, k) the first k tokens
        seq = np.empty((n, max(L, k)), dtype=np.int64)
        seq[:, :k] = digits
        for t in range(k, L):
            v = categorical(self._cum[state], rng.random(n))
            seq[:, t] = v
            state = self._next[state, v]
        return seq[:, :L]

    def log_probs(self, seq: np.ndarray) -> np.ndarray:
        """``(n, L-1)`` exact ``log p(x_j | x_<j)`` for j = 1..L-1 of ``seq: (n, L)`` (conditionals for
        j < order come from the stationary marginals)."""
        V, k = self.vocab_size, self.order
        seq = np.asarray(seq)
        n, L = seq.shape
        joint = self.stationary.reshape((V,) * k)
        out = np.empty((n, L - 1))
        for j in range(1, L):
            if j < k:
                pj = joint.sum(axis=tuple(range(j + 1, k)))  # law of X_0..X_j
                num = pj[tuple(seq[:, : j + 1].T)]
                den = pj.sum(axis=-1)[tuple(seq[:, :j].T)]
                out[:, j - 1] = np.log(num) - np.log(den)
            else:
                s = (seq[:, j - k : j] * V ** np.arange(k - 1, -1, -1)).sum(1)
                out[:, j - 1] = np.log(self.transition[s, seq[:, j]])
        return out


@dataclass(eq=False)
class HiddenMarkovModel(SyntheticTask):
    """Hidden chain on ``n_states`` states emitting ``vocab_size`` tokens; ``A``/``B`` may be given by hand."""

    n_states: int = 4
    vocab_size: int = 8
    concentration: float = 1.0
    emission_concentration: float = 1.0
    block_size: int = 64
    seed: int = 0
    transition: np.ndarray | None = field(default=None, repr=False)
    emission: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self):
        S, V = self.n_states, self.vocab_size
        if S < 1 or V < 1 or self.block_size < 1:
            raise MathlensError("HiddenMarkovModel needs n_states, vocab_size, block_size >= 1")
        if min(self.concentration, self.emission_concentration) <= 0:
            raise MathlensError("HiddenMarkovModel concentrations must be > 0")
        rng = np.random.default_rng(self.seed)
        A = rng.dirichlet(np.full(S, float(self.concentration)), size=S) if self.transition is None else self.transition
        B = (
            rng.dirichlet(np.full(V, float(self.emission_concentration)), size=S)
            if self.emission is None
            else self.emission
        )
        A, B = np.asarray(A, dtype=np.float64), np.asarray(B, dtype=np.float64)
        for name, M, shape in (("transition", A, (S, S)), ("emission", B, (S, V))):
            if M.shape != shape or (M < 0).any() or not np.allclose(M.sum(1), 1.0):
                raise MathlensError(f"{name} must be a row-stochastic {shape} matrix")
        self.transition, self.emission = A, B
        self.stationary = stationary_distribution(A)  # (S,) law of the hidden state
        self._cumA, self._cumB = np.cumsum(A, 1), np.cumsum(B, 1)

    @property
    def answer_mask(self) -> np.ndarray:
        return np.ones(self.block_size, dtype=bool)

    def sample(self, n: int, rng: np.random.Generator, split: str = "train", length: int | None = None) -> np.ndarray:
        """``seq: (n, length or block_size + 1)`` int64 emissions, hidden chain started stationary."""
        L = length or self.block_size + 1
        h = categorical(np.cumsum(self.stationary)[None, :].repeat(n, 0), rng.random(n))
        seq = np.empty((n, L), dtype=np.int64)
        for t in range(L):
            seq[:, t] = categorical(self._cumB[h], rng.random(n))
            h = categorical(self._cumA[h], rng.random(n))
        return seq

    def log_probs(self, seq: np.ndarray) -> np.ndarray:
        """``(n, L)`` ``log p(x_t | x_<t)`` for t = 0..L-1 by the scaled forward algorithm."""
        seq = np.asarray(seq)
        n, L = seq.shape
        out = np.empty((n, L))
        alpha = np.broadcast_to(self.stationary, (n, self.n_states))  # p(h_t | x_<t)
        for t in range(L):
            joint = alpha * self.emission[:, seq[:, t]].T  # p(h_t, x_t | x_<t)
            c = joint.sum(1)
            out[:, t] = np.log(c)
            alpha = (joint / c[:, None]) @ self.transition
        return out

    def entropy_rate_estimate(self, n_tokens: int = 20_000, n_sequences: int = 8, seed: int = 0) -> EntropyEstimate:
        """``-1/n log p(x_1..n)`` averaged over ``n_sequences`` independent sequences of ``n_tokens``."""
        seq = self.sample(n_sequences, np.random.default_rng(seed), length=n_tokens)
        per_seq = -self.log_probs(seq).mean(axis=1)
        se = per_seq.std(ddof=1) / math.sqrt(n_sequences) if n_sequences > 1 else float("nan")
        return EntropyEstimate(float(per_seq.mean()), float(se), n_tokens * n_sequences)

    def bayes_loss_estimate(self, n_sequences: int = 4096, seed: int = 0) -> EntropyEstimate:
        """Mean cross-entropy of the Bayes-optimal predictor over the ``block_size`` targets of a window
        (each target sees the tokens before it in the window), by Monte Carlo over windows."""
        lp = self.log_probs(self.sample(n_sequences, np.random.default_rng(seed)))[:, 1:]
        per_seq = -lp.mean(axis=1)
        se = per_seq.std(ddof=1) / math.sqrt(n_sequences)
        return EntropyEstimate(float(per_seq.mean()), float(se), lp.size)
