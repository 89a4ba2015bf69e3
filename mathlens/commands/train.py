"""`mathlens train`: train a GPT from a TOML config and/or a preset, with flags for common fields."""

from __future__ import annotations

import argparse
from pathlib import Path

from mathlens.commands import seed
from mathlens.errors import MathlensError
from mathlens.io import read_json

#: recipe used when neither --preset nor --config is given (and --resume finds no saved config)
DEFAULT_PRESET = "nanogpt-char-cpu"

#: flag -> (section, key, type)
FLAGS = {
    "data": ("data", "corpus", str), "tokenizer": ("data", "tokenizer", str), "block_size": ("data", "block_size", int),
    "batch_size": ("data", "batch_size", int), "vocab_size": ("data", "vocab_size", int),
    "n_layer": ("model", "n_layer", int), "n_head": ("model", "n_head", int), "n_embd": ("model", "n_embd", int),
    "dropout": ("model", "dropout", float),
    "optimizer": ("optim", "name", str), "lr": ("optim", "lr", float), "min_lr": ("optim", "min_lr", float),
    "weight_decay": ("optim", "weight_decay", float), "warmup_iters": ("optim", "warmup_iters", int),
    "lr_decay_iters": ("optim", "lr_decay_iters", int), "schedule": ("optim", "schedule", str),
    "grad_clip": ("optim", "grad_clip", float), "grad_accum": ("optim", "grad_accum", int),
    "out": ("run", "out_dir", str), "max_iters": ("run", "max_iters", int), "seed": ("run", "seed", seed),
    "eval_interval": ("run", "eval_interval", int), "eval_iters": ("run", "eval_iters", int),
    "log_interval": ("run", "log_interval", int), "device": ("run", "device", str), "dtype": ("run", "dtype", str),
    "attention": ("run", "attention", str),
}
HELP = {"attention": "run.attention: SDPA backend tried first on CUDA (auto, flash, efficient, math, cudnn)"}


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a GPT (nanoGPT-style recipe, checkpoints, resume)",
                              description="Train a GPT. Settings: preset < --config file < flags; with neither --preset nor "
                              f"--config the {DEFAULT_PRESET} preset is the base. --resume without --config reuses "
                              "the run's saved config.json.")
    p.add_argument("--config", help="TOML (or JSON) file with [model] [data] [optim] [run] tables")
    p.add_argument("--preset", help="named recipe: nanogpt-char-cpu (default), nanogpt-char-gpu, and both with rotary positions (nanogpt-char-cpu-rope, nanogpt-char-gpu-rope)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    for flag, (section, key, tp) in FLAGS.items():
        p.add_argument("--" + flag.replace("_", "-"), type=tp, default=None, help=HELP.get(flag, f"{section}.{key}"))
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="run.compile (torch.compile)")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None, help="run.tensorboard")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)


def resolve_config(args):
    """The TrainConfig of these arguments: preset, then the file (or the run's saved config on --resume), then flags."""
    from mathlens.train.config import TrainConfig, merge
    from mathlens.train.presets import preset

    saved = Path(args.out) / "config.json" if args.resume and args.out else None
    if args.preset:
        base: dict = preset(args.preset)
    elif args.config or (saved is not None and saved.is_file()):
        base = {}
    else:
        base = preset(DEFAULT_PRESET)
    if args.config:
        base = merge(base, _read_config(args.config))
    elif saved is not None and saved.is_file() and not args.preset:
        base = merge(base, _read_config(saved))
    overrides: dict = {}
    for flag, (section, key, _) in FLAGS.items():
        v = getattr(args, flag)
        if v is not None:
            overrides.setdefault(section, {})[key] = v
    for flag in ("compile", "tensorboard"):
        if getattr(args, flag) is not None:
            overrides.setdefault("run", {})[flag] = getattr(args, flag)
    return TrainConfig.from_dict(merge(base, overrides), where="train config")


def _read_config(path) -> dict:
    from mathlens.config import load_toml

    path = Path(path)
    if path.suffix == ".json":
        if not path.exists():
            raise MathlensError(f"config file not found: {path}")
        data = read_json(path, "config file ")
        if not isinstance(data, dict):
            raise MathlensError(f"config file {path} must hold an object of settings, got {type(data).__name__}")
        return data
    return load_toml(path)


def run(args) -> int:
    from mathlens.train.loop import train

    config = resolve_config(args)
    result = train(config, resume=args.resume, quiet=args.quiet)
    print(f"run {result.run_dir}: {result.steps} steps, best val loss {result.best_val_loss:.4f} "
          f"(step {result.best_step}), final {result.final_val_loss:.4f}, {result.wall_time:.1f} s")
    return 0
