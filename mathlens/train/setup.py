"""What a run needs before its first step: the data and tokenizer, the device, precision and processes."""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from mathlens.data.corpora import check_corpus_length, load_corpus
from mathlens.data.dataset import TokenDataset
from mathlens.data.tokenizers import load_tokenizer, train_tokenizer
from mathlens.errors import MathlensError
from mathlens.train.config import ATTENTION_BACKENDS, TrainConfig

TOKENIZER_DIR = "tokenizer"


def prepare_data(config: TrainConfig, run_dir: str | os.PathLike | None = None,
                 tokenizer_fingerprint: str | None = None):
    """``(tokenizer, TokenDataset)``: the tokenizer saved in ``run_dir`` (resume; it must be there and match
    ``tokenizer_fingerprint``, the checkpoint's, when given), else one trained on the corpus. Both splits must hold
    at least one context (``block_size + 1`` tokens)."""
    d = config.data
    corpus = load_corpus(d.corpus)
    if run_dir is not None:  # resume: the tokenizer the checkpoint was trained with, and no other
        saved = Path(run_dir) / TOKENIZER_DIR
        if not saved.is_dir():
            raise MathlensError(f"cannot resume {run_dir}: its {TOKENIZER_DIR}/ folder is missing")
        tok = load_tokenizer(saved)
        if tokenizer_fingerprint not in (None, tok.fingerprint()):
            raise MathlensError(f"tokenizer in {run_dir} does not match the checkpoint's (fingerprint differs)")
    else:
        tok = train_tokenizer(d.tokenizer, corpus.text, d.vocab_size)
    data = TokenDataset.from_corpus(corpus, tok)
    for split in ("train", "val"):
        check_corpus_length(len(data.split(split)), d.block_size,
                            what=f"the {split} split of corpus {corpus.name!r} ({len(corpus.text)} characters)")
    return tok, data


@dataclass
class DistInfo:
    """This process's place in a ``torchrun`` job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_mean(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            x = x.clone()
            dist.all_reduce(x)
            x /= self.world
        return x

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            x = x.clone()
            dist.all_reduce(x)
        return x

    def all_gather_object(self, obj) -> list:
        """``[obj of rank 0, obj of rank 1, …]`` on every rank (``[obj]`` when not distributed)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def resolve_device(name: str, what: str = "run.device") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a ``torch.device``;
    :class:`MathlensError` naming ``what`` for any other name or a device this machine lacks."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", str(name)):
        raise MathlensError(f"{what} = {name!r} is not a device (allowed: auto, cpu, cuda, cuda:N, mps)")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MathlensError(f"{what} = {name!r} but CUDA is not available here (use cpu)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise MathlensError(f"{what} = {name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise MathlensError(f"{what} = {name!r} but MPS is not available here (use cpu)")
    return dev


def setup_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1): NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), device
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, owns), device


def autocast_for(dtype: str, device: torch.device, attention: str = "auto"):
    """``(resolved dtype name, context manager factory)``: bf16 autocast on CUDA by default, fp32 elsewhere.

    ``attention`` other than ``"auto"``: on CUDA that SDPA backend is tried first (e.g. ``"cudnn"`` on Hopper), then
    the others in PyTorch's default order; elsewhere PyTorch has one fused kernel and ignores priorities, so only
    ``"math"`` changes anything (the materialised softmax alone). Under ``torch.compile`` the backend is fixed when a
    graph is first traced: a second compiled model of the same shapes in the same process reuses that graph."""
    if dtype == "auto":
        dtype = "bfloat16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    amp = (lambda: torch.autocast(device_type=device.type, dtype=torch.bfloat16)) if dtype == "bfloat16" \
        else contextlib.nullcontext
    if attention == "auto" or (device.type != "cuda" and attention != "math"):
        return dtype, amp
    import inspect

    from torch.nn.attention import SDPBackend, sdpa_kernel

    if "set_priority" not in inspect.signature(sdpa_kernel).parameters:
        raise MathlensError(f"run.attention = {attention!r} needs PyTorch >= 2.6 (sdpa_kernel's set_priority); "
                            f"this is {torch.__version__}")
    names = [attention] + ([n for n in ATTENTION_BACKENDS if n != attention] if device.type == "cuda" else [])
    order = [getattr(SDPBackend, ATTENTION_BACKENDS[n]) for n in names]

    @contextlib.contextmanager
    def ctx():
        with amp(), sdpa_kernel(order, set_priority=True):
            yield

    return dtype, ctx
