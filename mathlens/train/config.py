"""Training settings: ``TrainConfig`` = model (GPTConfig fields) + data + optimiser + run, validated field by field.

TOML layout (every section and key optional; unknown keys are errors)::

    [model]                # any GPTConfig field except vocab_size / block_size (set by [data] and the tokenizer)
    n_layer = 4
    [data]
    corpus = "tinyshakespeare"  # a known corpus name or a path to a UTF-8 file / folder
    tokenizer = "char"          # char | bpe
    block_size = 64
    batch_size = 12             # GLOBAL sequences per micro-step (split across DDP ranks)
    [optim]
    name = "adamw"              # adamw | sgd
    lr = 1e-3
    [run]
    max_iters = 2000
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from mathlens.config import MAX_SEED, from_dict
from mathlens.errors import MathlensError
from mathlens.models.gpt import GPTConfig

SECTIONS = ("model", "data", "optim", "run")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "linear", "constant")
DTYPES = ("auto", "float32", "bfloat16")
#: ``run.attention`` -> the ``torch.nn.attention.SDPBackend`` tried first; the rest follow in this order, PyTorch's
#: default (``torch._C._get_sdp_priority_order()`` in 2.13: flash, efficient, math, cuDNN)
ATTENTION_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH",
                      "cudnn": "CUDNN_ATTENTION"}
#: model fields that [data] and the tokenizer decide
_DERIVED_MODEL_KEYS = ("vocab_size", "block_size")


def _bad(name: str, value, allowed: str) -> MathlensError:
    return MathlensError(f"{name} = {value!r} is invalid (allowed: {allowed})")


def _positive(section: str, obj, *names: str, allow_zero: bool = False) -> None:
    for n in names:
        v = getattr(obj, n)
        if v is None:
            continue
        if not math.isfinite(v) or (v < 0 if allow_zero else v <= 0):
            raise _bad(f"{section}.{n}", v, "≥ 0" if allow_zero else "> 0")


@dataclass
class DataConfig:
    corpus: str = "tinyshakespeare"
    tokenizer: str = "char"
    vocab_size: int | None = None  # bpe only (default 1024)
    block_size: int = 64
    batch_size: int = 12

    def __post_init__(self):
        if self.tokenizer not in ("char", "bpe"):
            raise _bad("data.tokenizer", self.tokenizer, "char, bpe")
        if self.tokenizer == "char" and self.vocab_size is not None:
            raise _bad("data.vocab_size", self.vocab_size, "unset for tokenizer = 'char' (the corpus decides)")
        if self.vocab_size is not None and not 256 <= self.vocab_size <= 2**20:
            raise _bad("data.vocab_size", self.vocab_size, "256 .. 1048576")
        _positive("data", self, "block_size", "batch_size")
        if not self.corpus:
            raise _bad("data.corpus", self.corpus, "a corpus name or a path")


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None -> run.max_iters
    min_lr: float = 1e-4
    grad_clip: float = 1.0  # 0 disables clipping
    grad_accum: int = 1
    fused: bool | None = None  # None -> fused AdamW (CUDA and CPU)

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise _bad("optim.name", self.name, ", ".join(OPTIMIZERS))
        if self.schedule not in SCHEDULES:
            raise _bad("optim.schedule", self.schedule, ", ".join(SCHEDULES))
        _positive("optim", self, "lr", "eps", "grad_accum", "lr_decay_iters")
        _positive("optim", self, "weight_decay", "min_lr", "grad_clip", "warmup_iters", "momentum", allow_zero=True)
        for n in ("beta1", "beta2"):
            v = getattr(self, n)
            if not 0.0 <= v < 1.0:
                raise _bad(f"optim.{n}", v, "[0, 1)")
        if self.min_lr > self.lr:
            raise _bad("optim.min_lr", self.min_lr, f"≤ optim.lr = {self.lr}")


@dataclass
class RunConfig:
    max_iters: int = 2000
    eval_interval: int = 250
    eval_iters: int = 0  # 0 -> every evaluation covers the whole val split; k > 0 -> k random batches
    eval_batch_size: int | None = None  # None -> max(64, data.batch_size) for whole-split evaluations, data.batch_size
    #                                     for eval_iters random batches (nanoGPT's estimate_loss)
    eval_at_start: bool = True
    checkpoint_interval: int | None = None  # None -> eval_interval
    log_interval: int = 10
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, else float32) | float32 | bfloat16
    compile: bool = False
    attention: str = "auto"  # SDPA backend tried first: auto (PyTorch's order) | flash | cudnn | efficient | math
    seed: int = 1337
    out_dir: str = "runs/run"
    tensorboard: bool = False
    progress: bool | None = None  # None -> only when stderr is a TTY and CI is unset

    def __post_init__(self):
        _positive("run", self, "max_iters", "eval_interval", "log_interval", "eval_batch_size",
                  "checkpoint_interval")
        _positive("run", self, "eval_iters", allow_zero=True)
        if self.dtype not in DTYPES:
            raise _bad("run.dtype", self.dtype, ", ".join(DTYPES))
        if self.attention != "auto" and self.attention not in ATTENTION_BACKENDS:
            raise _bad("run.attention", self.attention, "auto, " + ", ".join(ATTENTION_BACKENDS))
        dev = self.device.split(":")[0]
        if dev not in ("auto", "cpu", "cuda", "mps"):
            raise _bad("run.device", self.device, "auto, cpu, cuda, cuda:N, mps")
        if not 0 <= self.seed <= MAX_SEED:
            raise _bad("run.seed", self.seed, f"0 … {MAX_SEED}")
        if not self.out_dir:
            raise _bad("run.out_dir", self.out_dir, "a folder path")


@dataclass
class TrainConfig:
    """All settings of one run. ``model`` holds GPTConfig keyword arguments (validated by :meth:`model_config`)."""

    model: dict = field(default_factory=dict)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        bad = sorted(set(self.model) & set(_DERIVED_MODEL_KEYS))
        if bad:
            raise MathlensError(f"model.{bad[0]} is set by the data and tokenizer; use data.block_size / data.vocab_size")
        self.model_config(vocab_size=1)  # validates the model fields now

    def model_config(self, vocab_size: int) -> GPTConfig:
        """The GPTConfig of this run for a tokenizer with ``vocab_size`` tokens."""
        return GPTConfig.from_dict({**self.model, "vocab_size": vocab_size, "block_size": self.data.block_size},
                                   where="model")

    @property
    def tokens_per_step(self) -> int:
        return self.data.batch_size * self.data.block_size * self.optim.grad_accum

    @property
    def lr_decay_iters(self) -> int:
        return self.optim.lr_decay_iters or self.run.max_iters

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> TrainConfig:
        """From nested ``{"model": {...}, "data": {...}, "optim": {...}, "run": {...}}``."""
        if not isinstance(data, dict):
            raise MathlensError(f"{where}: expected a table of settings, got {type(data).__name__}")
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise MathlensError(f"{where}: unknown section {unknown[0]!r} (allowed: {', '.join(SECTIONS)})")
        model = data.get("model", {})
        if not isinstance(model, dict):
            raise MathlensError(f"{where}: [model] must be a table, got {type(model).__name__}")
        names = {f.name for f in dataclasses.fields(GPTConfig)} - set(_DERIVED_MODEL_KEYS)
        extra = sorted(set(model) - names - set(_DERIVED_MODEL_KEYS))
        if extra:
            raise MathlensError(f"{where}: unknown key 'model.{extra[0]}' (allowed: {', '.join(sorted(names))})")
        return cls(
            model=dict(model),
            data=from_dict(DataConfig, data.get("data", {}), f"{where} [data]"),
            optim=from_dict(OptimConfig, data.get("optim", {}), f"{where} [optim]"),
            run=from_dict(RunConfig, data.get("run", {}), f"{where} [run]"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {"model": dict(self.model), "data": dataclasses.asdict(self.data),
                "optim": dataclasses.asdict(self.optim), "run": dataclasses.asdict(self.run)}

    def replace(self, overrides: dict[str, dict[str, Any]]) -> TrainConfig:
        """A copy with ``{"section": {"key": value}}`` merged in (values None are skipped), re-validated."""
        d = self.to_dict()
        for section, values in overrides.items():
            d.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
        return TrainConfig.from_dict(d)


def merge(base: dict, update: dict) -> dict:
    """Section-wise merge of two nested config dicts (``update`` wins)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in update.items():
        if k in out and isinstance(v, dict) != isinstance(out[k], dict):  # e.g. `model = 3` in a file, then --n-layer
            bad = out[k] if isinstance(v, dict) else v
            raise MathlensError(f"config section [{k}] must be a table of settings, got {type(bad).__name__} {bad!r}")
        if isinstance(v, dict) and k in out:
            out[k].update(v)
        else:
            out[k] = dict(v) if isinstance(v, dict) else v
    return out
