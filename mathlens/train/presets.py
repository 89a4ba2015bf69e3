"""Named training recipes (``mathlens train --preset NAME``), as nested config dicts.

Both follow nanoGPT's character-level Shakespeare recipes (``config/train_shakespeare_char.py`` and the
CPU command of its README): tied embeddings, no biases (nanoGPT's ``train.py`` sets ``bias = False``),
AdamW with β = (0.9, 0.99), weight decay 0.1 on every ≥ 2-D parameter, grad clip 1.0, warmup 100,
cosine decay of lr 1e-3 to min_lr 1e-4 at ``lr_decay_iters = max_iters``.

``nanogpt-char-cpu-rope`` / ``nanogpt-char-gpu-rope``: the same recipes with one change, rotary position
embeddings (RoFormer) in place of learned absolute positions. On the CPU recipe that lowers the whole-split
validation loss from 1.905 ± 0.009 to about 1.79 (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import copy

from mathlens.errors import MathlensError

_NANOGPT_MODEL = {"bias": False, "tie_embeddings": True, "activation": "gelu", "norm": "layernorm"}
_NANOGPT_OPTIM = {"name": "adamw", "lr": 1e-3, "min_lr": 1e-4, "beta1": 0.9, "beta2": 0.99,
                  "weight_decay": 0.1, "grad_clip": 1.0, "warmup_iters": 100, "schedule": "cosine"}

PRESETS: dict[str, dict] = {
    # README: --device=cpu --compile=False --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12
    #         --n_layer=4 --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
    "nanogpt-char-cpu": {
        "model": {**_NANOGPT_MODEL, "n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.0},
        "data": {"corpus": "tinyshakespeare", "tokenizer": "char", "block_size": 64, "batch_size": 12},
        "optim": {**_NANOGPT_OPTIM, "lr_decay_iters": 2000},
        "run": {"max_iters": 2000, "eval_interval": 250, "log_interval": 10, "device": "cpu", "dtype": "float32",
                "compile": False, "out_dir": "runs/nanogpt-char-cpu"},
    },
    # config/train_shakespeare_char.py
    "nanogpt-char-gpu": {
        "model": {**_NANOGPT_MODEL, "n_layer": 6, "n_head": 6, "n_embd": 384, "dropout": 0.2},
        "data": {"corpus": "tinyshakespeare", "tokenizer": "char", "block_size": 256, "batch_size": 64},
        "optim": {**_NANOGPT_OPTIM, "lr_decay_iters": 5000},
        "run": {"max_iters": 5000, "eval_interval": 250, "log_interval": 10, "device": "auto", "dtype": "bfloat16",
                "compile": True, "out_dir": "runs/nanogpt-char-gpu"},
    },
}
for _name in ("nanogpt-char-cpu", "nanogpt-char-gpu"):
    _rope = copy.deepcopy(PRESETS[_name])
    _rope["model"]["positional"] = "rope"
    _rope["run"]["out_dir"] += "-rope"
    PRESETS[f"{_name}-rope"] = _rope


def preset(name: str) -> dict:
    """A deep copy of the nested config dict of preset ``name``."""
    if name not in PRESETS:
        raise MathlensError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return copy.deepcopy(PRESETS[name])
