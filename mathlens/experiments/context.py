"""What experiments share within one validate run: the suite, the corpus, trained models, figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from mathlens.experiments.suites import Suite  # noqa: E402
from mathlens.models.gpt import GPT, GPTConfig  # noqa: E402


class Context:
    """Per-run state. Trained models are cached by (seed, settings), in memory and under ``models/``."""

    def __init__(self, suite: Suite, run_dir: str | Path, log=print):
        self.suite = suite
        self.run_dir = Path(run_dir)
        self.device = suite.device
        self.log = log
        self._data = None
        self._models: dict = {}
        self.cache: dict = {}  # results shared by several experiments of this run (e.g. attention summaries)

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.suite.seeds

    # data -------------------------------------------------------------------------------------------
    def data(self):
        """The suite's corpus as a character-level :class:`~mathlens.data.dataset.TokenDataset` (90/10 split)."""
        if self._data is None:
            from mathlens.data import CharTokenizer, TokenDataset, load_corpus

            corpus = load_corpus(self.suite.corpus)
            self._data = TokenDataset.from_corpus(corpus, CharTokenizer.train(corpus.text))
        return self._data

    def batch(self, split: str, seed: int, batch_size: int | None = None, block_size: int | None = None):
        return self.data().get_batch(split, batch_size or self.suite.batch_size, block_size or self.suite.block_size,
                                     seed=seed, device=self.device)

    # models -----------------------------------------------------------------------------------------
    def model_config(self, **overrides) -> GPTConfig:
        s = self.suite
        kw = dict(vocab_size=self.data().vocab_size, block_size=s.block_size, n_layer=s.n_layer,
                  n_head=s.n_head, n_embd=s.n_embd, dropout=0.0)
        kw.update(overrides)
        return GPTConfig(**kw)

    def random_gpt(self, seed: int, **overrides) -> GPT:
        torch.manual_seed(seed)
        return GPT(self.model_config(**overrides)).to(self.device).eval()

    def trained_gpt(self, seed: int, **kw):
        """A GPT trained on the suite's corpus (cached); returns (model, result). See :meth:`train_on`."""
        return self.train_on(self.data(), seed, **kw)

    def train_on(self, data, seed: int, steps: int | None = None, optimizer: str = "adamw", lr: float | None = None,
                 batch_size: int | None = None, tag: str = "corpus", callbacks=(), answers_only: bool = False,
                 **overrides):
        """Train a GPT on ``data`` (a TokenDataset or synthetic task: anything with ``get_batch``) with
        :mod:`mathlens.train`; cached by its settings. Returns (model in eval mode, training result)."""
        from mathlens.train import train_model

        s = self.suite
        steps = steps or s.train_steps
        key = (tag, seed, steps, optimizer, lr, batch_size, answers_only, tuple(sorted(overrides.items())))
        if key not in self._models:
            overrides.setdefault("vocab_size", data.vocab_size)
            cfg = self.model_config(**overrides)
            name = f"{tag}-seed{seed}-{len(self._models):03d}"
            model, result = train_model(cfg, data, steps=steps, batch_size=batch_size or s.batch_size,
                                        lr=lr or s.lr, optimizer=optimizer, seed=seed, device=self.device,
                                        out_dir=self.run_dir / "models" / name, callbacks=callbacks,
                                        answers_only=answers_only)
            self._models[key] = (model.eval(), result)
        return self._models[key]

    @torch.no_grad()
    def eval_loss(self, model, split: str = "val", n_batches: int | None = None, seed: int = 1234) -> float:
        """Mean cross-entropy over ``n_batches`` fixed random batches of ``split``."""
        losses = []
        for i in range(n_batches or self.suite.eval_batches):
            x, y = self.batch(split, seed + i)
            losses.append(model(x, y)[1].item())
        return float(sum(losses) / len(losses))

    # figures ----------------------------------------------------------------------------------------
    def save_figure(self, fig, exp) -> str:
        """Save ``fig`` as figures/<id>.png and return the file name (relative to figures/)."""
        from mathlens.io import atomic_path

        name = f"{exp.id}.png"
        path = self.run_dir / "figures" / name
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return name
