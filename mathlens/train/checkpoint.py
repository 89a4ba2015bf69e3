"""Checkpoints: safetensors tensors + a JSON manifest, written atomically, loaded without unpickling.

Layout inside a run directory::

    checkpoints/step-00000250/model.safetensors     weights (tied weights stored once)
    checkpoints/step-00000250/trainer.safetensors   optimiser tensors ("optim.<param>.<name>") and RNG
                                                    states as uint8 tensors ("rng.torch", "rng.cuda.<i>", "rng.data"; under
                                                    DDP also each rank r > 0's "rng.rank<r>.torch" / ".cuda")
    checkpoints/step-00000250/manifest.json         config, step, optimiser hyper-parameters, trainer state,
                                                    tokenizer reference, sha256 of both tensor files
    checkpoints/index.json                          {"latest": dir, "best": dir, "manifest_sha256": {...}}

A checkpoint is written to a temporary folder, renamed into place, and only then made current by
atomically replacing ``index.json``; a run killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from mathlens.errors import MathlensError
from mathlens.io import write_json

FORMAT = "mathlens-checkpoint"
CKPT_DIR = "checkpoints"  # a run directory's checkpoint folder
VERSION = 1
MODEL_FILE, TRAINER_FILE, MANIFEST = "model.safetensors", "trainer.safetensors", "manifest.json"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- optimiser / RNG state as tensors


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``opt.state_dict()`` into tensors (``optim.<idx>.<name>``) and JSON-ready metadata."""
    sd = opt.state_dict()
    tensors, meta = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta.setdefault(str(idx), {})[k] = v
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "state": meta}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    """The ``state_dict`` that :func:`optimizer_to_tensors` split."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for idx, st in meta.get("state", {}).items():
        state.setdefault(int(idx), {}).update(st)
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": dict(sorted(state.items())), "param_groups": groups}


def rng_tensors(data_generator: torch.Generator | None) -> dict[str, torch.Tensor]:
    """Global torch CPU / CUDA generator states and the data sampler's state, as uint8 tensors."""
    out = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    if data_generator is not None:
        out["rng.data"] = data_generator.get_state()
    return out


def restore_rng(tensors: dict[str, torch.Tensor], data_generator: torch.Generator | None) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")),
                                       key=lambda k: int(k.rsplit(".", 1)[1]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    if data_generator is not None and "rng.data" in tensors:
        data_generator.set_state(tensors["rng.data"])


def rank_rng_tensors(states: list[dict[str, torch.Tensor | None]]) -> dict[str, torch.Tensor]:
    """``states[r]``: rank ``r``'s ``{"torch": CPU state, "cuda": its device's state or None}`` (all ranks of a
    DDP run, gathered) -> ``rng.rank<r>.torch`` / ``rng.rank<r>.cuda`` for the ranks r > 0 (rank 0's are
    ``rng.torch`` / ``rng.cuda.<i>``)."""
    out = {}
    for r, st in enumerate(states[1:], start=1):
        out.update({f"rng.rank{r}.{k}": v for k, v in st.items() if v is not None})
    return out


def restore_rank_rng(tensors: dict[str, torch.Tensor], rank: int, device: torch.device) -> bool:
    """Set this rank's torch (and CUDA device) generator from ``rng.rank<rank>.*``; False when the checkpoint
    has no state for ``rank`` (a one-process checkpoint, or one from before per-rank states were saved)."""
    key = f"rng.rank{rank}.torch"
    if key not in tensors:
        return False
    torch.set_rng_state(tensors[key])
    if device.type == "cuda" and f"rng.rank{rank}.cuda" in tensors:
        torch.cuda.set_rng_state(tensors[f"rng.rank{rank}.cuda"], device)
    return True


# ---------------------------------------------------------------- save


def save_checkpoint(root: str | os.PathLike, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    manifest: dict[str, Any], *, data_generator: torch.Generator | None = None,
                    best: bool = False, extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``root/step-<step>/`` and make it the latest (and the best when ``best``); return its path.

    ``extra_tensors`` go into the trainer file beside the optimiser and RNG tensors (e.g. :func:`rank_rng_tensors`).

    A step saved again (e.g. re-marked best at the end of a run) goes to a new folder ``step-<step>.<k>``, so
    the folder the index names is never touched before the index moves on. Older step folders other than
    the latest and the best are removed afterwards.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name, k = f"step-{step:08d}", 0
    while (root / name).exists():  # never replace a folder the index may name: write anew, then switch the index
        k += 1
        name = f"step-{step:08d}.{k}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        save_model(model, str(tmp / MODEL_FILE))
        tensors = {**rng_tensors(data_generator), **(extra_tensors or {})}
        meta = {}
        if optimizer is not None:
            opt_t, meta = optimizer_to_tensors(optimizer)
            tensors.update(opt_t)
        save_file(tensors, str(tmp / TRAINER_FILE))
        full = {"format": FORMAT, "version": VERSION, "step": step, **manifest, "optimizer": meta,
                "files": {f: sha256_file(tmp / f) for f in (MODEL_FILE, TRAINER_FILE)}}
        write_json(tmp / MANIFEST, full)
        _fsync_dir(tmp)
        final = root / name
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    index = read_index(root) if (root / "index.json").exists() else {}
    index["latest"] = name
    if best or "best" not in index:
        index["best"] = name
    index.setdefault("manifest_sha256", {})
    index["manifest_sha256"] = {k: v for k, v in index["manifest_sha256"].items() if k in (index["latest"], index["best"])}
    index["manifest_sha256"][name] = sha256_file(final / MANIFEST)
    write_json(root / "index.json", index)
    _fsync_dir(root)
    for p in root.iterdir():  # drop superseded checkpoints and leftovers of killed writes
        if p.is_dir() and p.name not in (index["latest"], index["best"]):
            shutil.rmtree(p, ignore_errors=True)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------- load


@dataclass
class Checkpoint:
    """A verified checkpoint folder: its manifest and the path of its files."""

    path: Path
    manifest: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.manifest["step"])

    def load_model(self, model: nn.Module) -> None:
        """Copy the weights into ``model`` (same architecture; tied weights restored from one tensor)."""
        try:
            missing, unexpected = load_model(model, str(self.path / MODEL_FILE), strict=False)
        except (SafetensorError, RuntimeError, OSError) as e:
            raise MathlensError(f"checkpoint {self.path} does not match the model ({str(e).splitlines()[0]})") from None
        if missing or unexpected:
            raise MathlensError(f"checkpoint {self.path} does not match the model "
                                f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")

    def trainer_tensors(self) -> dict[str, torch.Tensor]:
        try:
            return load_file(str(self.path / TRAINER_FILE))
        except (SafetensorError, OSError) as e:
            raise MathlensError(f"corrupt checkpoint file {self.path / TRAINER_FILE} ({e})") from None


def read_index(root: str | os.PathLike) -> dict[str, Any]:
    path = Path(root) / "index.json"
    if not path.is_file():
        raise MathlensError(f"no checkpoint in {Path(root).parent} (missing {path.name})")
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(index, dict) or "latest" not in index:
            raise ValueError("no 'latest' entry")
    except (ValueError, UnicodeDecodeError) as e:
        raise MathlensError(f"corrupt checkpoint index {path} ({str(e).splitlines()[0]})") from None
    return index


def load_checkpoint(root: str | os.PathLike, which: str = "latest") -> Checkpoint:
    """Open and verify (sha256 of every file, manifest JSON) the ``latest`` or ``best`` checkpoint under ``root``."""
    root = Path(root)
    index = read_index(root)
    name = index.get(which)
    if not isinstance(name, str) or "/" in name or not (root / name).is_dir():
        raise MathlensError(f"checkpoint index {root / 'index.json'} names a missing {which} checkpoint {name!r}")
    path = root / name
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise MathlensError(f"corrupt checkpoint {path}: {MANIFEST} is missing")
    expected = index.get("manifest_sha256", {}).get(name)
    if expected is not None and sha256_file(manifest_path) != expected:
        raise MathlensError(f"corrupt checkpoint {path}: {MANIFEST} does not match its sha256 (truncated or edited)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise MathlensError(f"corrupt checkpoint {path}: {MANIFEST} is not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise MathlensError(f"{manifest_path} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise MathlensError(f"checkpoint {path} has format version {manifest.get('version')!r}; this mathlens reads {VERSION}")
    for fname, sha in manifest.get("files", {}).items():
        f = path / fname
        if not f.is_file():
            raise MathlensError(f"corrupt checkpoint {path}: {fname} is missing")
        if sha256_file(f) != sha:
            raise MathlensError(f"corrupt checkpoint {path}: {fname} does not match its sha256 (truncated or edited)")
    return Checkpoint(path, manifest)
