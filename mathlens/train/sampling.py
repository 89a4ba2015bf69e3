"""A trained run, reloaded for sampling: ``load_run(run_dir) -> (model, tokenizer)``; ``sample_text``."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mathlens.data.tokenizers import load_tokenizer
from mathlens.errors import MathlensError
from mathlens.models.gpt import GPT, GPTConfig
from mathlens.models.sampling import check_sampling
from mathlens.train.checkpoint import CKPT_DIR, load_checkpoint


def load_run(run_dir: str | os.PathLike, which: str = "best", device: str = "cpu"):
    """``(GPT in eval mode, tokenizer)`` from the ``best`` or ``latest`` checkpoint of ``run_dir`` (verified)."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise MathlensError(f"run directory not found: {run_dir}")
    if not run_dir.is_dir():
        raise MathlensError(f"run directory {run_dir} is not a directory")
    ckpt = load_checkpoint(run_dir / CKPT_DIR, which)
    tok_ref = ckpt.manifest.get("tokenizer", {})
    tok = load_tokenizer(run_dir / tok_ref.get("path", "tokenizer"))
    if tok_ref.get("fingerprint") not in (None, tok.fingerprint()):
        raise MathlensError(f"tokenizer in {run_dir} does not match the checkpoint's (fingerprint differs)")
    try:
        cfg = GPTConfig.from_dict(ckpt.manifest["model_config"], where=f"{ckpt.path} model_config")
    except KeyError:
        raise MathlensError(f"corrupt checkpoint {ckpt.path}: manifest has no model_config") from None
    model = GPT(cfg)
    ckpt.load_model(model)
    return model.to(device).eval(), tok


def sample_text(model: GPT, tokenizer, prompt: str, max_new_tokens: int = 200, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None, seed: int = 0) -> str:
    """The prompt followed by ``max_new_tokens`` sampled tokens, decoded. Same ``seed`` -> same text."""
    check_sampling(temperature, top_k, top_p)
    if max_new_tokens < 0:
        raise MathlensError(f"max_new_tokens = {max_new_tokens} is invalid (must be ≥ 0)")
    ids = tokenizer.encode(prompt) if prompt else []
    if not ids:
        ids = tokenizer.encode("\n") if _encodable(tokenizer, "\n") else [0]
        prompt_len = 0
    else:
        prompt_len = len(ids)
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    gen = out[0].tolist()
    return prompt + tokenizer.decode(gen[len(ids):]) if prompt_len else tokenizer.decode(gen[len(ids):])


def _encodable(tokenizer, text: str) -> bool:
    try:
        return bool(tokenizer.encode(text))
    except MathlensError:
        return False
