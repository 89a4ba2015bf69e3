"""The training loop: ``train(config, callbacks=()) -> TrainResult``.

One optimiser step = ``grad_accum`` micro-steps of ``data.batch_size`` GLOBAL sequences; under ``torchrun``
every rank draws the same global batch (same sampler state) and takes its ``batch_size / world`` rows, so a
DDP run sees exactly the batches of a one-process run. After each step the callbacks
``cb(step, model, logs) -> dict | None`` run; their dicts merge into that step's metrics.

Host synchronisation: the step losses stay on the device and are read in one transfer only at steps that log,
evaluate or save (and every step when there are callbacks, which receive the loss), so on a GPU the host queues
steps ahead of the device. A NaN/inf loss is therefore found at the next such step; the run then stops naming
the first non-finite step, before anything is written.

Evaluation: after step 0 (``run.eval_at_start``), every ``run.eval_interval`` steps and at the end, over the
WHOLE val split (``run.eval_iters = 0``, default) or ``eval_iters`` random batches; with estimates the
checkpoint they chose and the last step are both scored on the whole split at the end and the better one is
the best (``best_val_loss``, ``best_step``, ``time_to_best`` and the "best" checkpoint then all describe that
model), so ``best_val_loss`` is always exact.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from mathlens.errors import MathlensError
from mathlens.io import check_output_dir, write_json
from mathlens.models.gpt import GPT
from mathlens.train.checkpoint import (
    CKPT_DIR,
    load_checkpoint,
    optimizer_from_tensors,
    rank_rng_tensors,
    read_index,
    restore_rank_rng,
    restore_rng,
    save_checkpoint,
)
from mathlens.train.config import TrainConfig
from mathlens.train.evaluate import evaluate
from mathlens.train.optim import lr_at, make_optimizer
from mathlens.train.rundir import METRICS, MetricsLog, Progress, RunLock, read_metrics
from mathlens.train.setup import TOKENIZER_DIR, autocast_for, prepare_data, resolve_device, setup_distributed

Callback = Callable[[int, nn.Module, dict], "dict | None"]
CONFIG_FILE, RESULT_FILE = "config.json", "result.json"
#: config fields a resumed run must share with its checkpoint (the others may change, e.g. max_iters)
_RESUME_KEYS = {"model": None, "data": None, "optim": None, "run": ("seed",)}


@dataclass
class TrainResult:
    final_val_loss: float
    best_val_loss: float
    best_step: int
    init_val_loss: float | None
    steps: int
    wall_time: float  # seconds of this run's training, resumed segments included
    time_to_best: float  # wall time at the evaluation that gave the best val loss
    tokens: int
    run_dir: Path

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def _check_resumable(config: TrainConfig, saved: dict, where: Path) -> None:
    now = config.to_dict()
    for section, keys in _RESUME_KEYS.items():
        a, b = saved.get(section, {}), now[section]
        for k in keys or sorted(set(a) | set(b)):
            if (section, k) == ("optim", "lr_decay_iters") and a.get(k) is None and b.get(k) is not None and \
                    b.get(k) == saved.get("run", {}).get("max_iters"):
                continue  # setting the horizon the run had by default keeps its schedule
            if a.get(k) != b.get(k):
                raise MathlensError(f"checkpoint in {where} comes from a different config: "
                                    f"{section}.{k} = {a.get(k)!r} there, {b.get(k)!r} here")


def train(config: TrainConfig, callbacks: Sequence[Callback] = (), *, resume: bool = False,
          quiet: bool = False) -> TrainResult:
    """Train a GPT as ``config`` says, writing the run directory ``config.run.out_dir``.

    ``resume``: continue from the latest checkpoint there (bitwise the same as an uninterrupted run on the
    same machine and thread count). NaN/inf loss stops the run with a MathlensError; the last good
    checkpoint stays. A run directory holding a live run (lock file) is refused.
    """
    r, d = config.run, config.data
    run_dir = check_output_dir(r.out_dir, "run.out_dir")
    device = resolve_device(r.device)
    dinfo, device = setup_distributed(device)
    if d.batch_size % dinfo.world:
        raise MathlensError(f"data.batch_size = {d.batch_size} is not divisible by the {dinfo.world} processes")
    if not resume and (run_dir / CKPT_DIR / "index.json").exists():
        raise MathlensError(f"{run_dir} already holds a run; pass --resume to continue it or choose another --out")
    if resume and not (run_dir / CKPT_DIR / "index.json").exists():
        raise MathlensError(f"nothing to resume in {run_dir} (no checkpoint there)")
    created = not run_dir.exists()
    lock = RunLock(run_dir) if dinfo.is_main else None
    try:
        if lock:
            lock.acquire()
        try:
            ckpt = load_checkpoint(run_dir / CKPT_DIR, "latest") if resume else None  # opened and verified once
            fingerprint = ckpt.manifest.get("tokenizer", {}).get("fingerprint") if ckpt else None
            tok, data = prepare_data(config, run_dir if resume else None, tokenizer_fingerprint=fingerprint)
            mcfg = config.model_config(tok.vocab_size)
            dtype, autocast = autocast_for(r.dtype, device, r.attention)
            result = _train(config, callbacks, ckpt, quiet, run_dir, device, dinfo, tok, data, mcfg, dtype, autocast)
            dinfo.barrier()  # every rank is done before any tears the group down (a peer that has gone aborts gloo)
            return result
        finally:
            if lock:
                lock.release()
    except BaseException:
        if created and dinfo.is_main and _trained_steps(run_dir) == 0:  # nothing of value: no half-written run
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        dinfo.close()


def _trained_steps(run_dir: Path) -> int:
    """The last training step ``run_dir`` records, in its latest checkpoint or its metrics (a run that diverged
    before its first checkpoint still has its loss curve); 0 when there is none or it is unreadable."""
    steps = [0]
    with contextlib.suppress(MathlensError, OSError, IndexError, ValueError, AttributeError):
        steps.append(int(read_index(run_dir / CKPT_DIR)["latest"].split("-")[1].split(".")[0]))
    with contextlib.suppress(OSError, ValueError, AttributeError):
        steps += [int(rec.get("step", 0)) for rec in read_metrics(run_dir)]
    return max(steps)


def _train(config, callbacks, ckpt, quiet, run_dir, device, dinfo, tok, data, mcfg, dtype, autocast):
    """The run itself; ``ckpt``: the latest checkpoint to resume from (None: a new run)."""
    resume = ckpt is not None
    r, d, o = config.run, config.data, config.optim
    torch.manual_seed(r.seed)
    model = GPT(mcfg).to(device)
    optimizer = make_optimizer(model, o, device.type)
    gen = torch.Generator().manual_seed(r.seed)
    step, state = 0, {"best_val_loss": math.inf, "best_step": 0, "init_val_loss": None, "elapsed": 0.0,
                      "time_to_best": 0.0, "loss_sum": 0.0, "loss_count": 0, "last_val_loss": math.nan}
    metrics = MetricsLog(run_dir / METRICS)
    if resume:
        saved = ckpt.manifest.get("config", {})
        _check_resumable(config, saved, run_dir)
        before = saved.get("optim", {}).get("lr_decay_iters") or saved.get("run", {}).get("max_iters")
        if before not in (None, config.lr_decay_iters) and not quiet and dinfo.is_main:
            print(f"note: the learning-rate decay now ends at step {config.lr_decay_iters}, not {before} "
                  f"(optim.lr_decay_iters follows run.max_iters); resume with --lr-decay-iters {before} to keep "
                  "the schedule of the run so far", file=sys.stderr)
        trained_on = ckpt.manifest.get("data", {}).get("tokens_sha256")  # absent in older checkpoints
        if trained_on not in (None, data.tokens_sha256):
            raise MathlensError(f"cannot resume {run_dir}: the corpus {config.data.corpus!r} is not the text this run "
                                "was trained on (its tokens' sha256 differs)")
        ckpt.load_model(model)
        tensors = ckpt.trainer_tensors()
        optimizer.load_state_dict(optimizer_from_tensors(tensors, ckpt.manifest["optimizer"]))
        restore_rng(tensors, gen)  # rank 0's state: the checkpoint holds one
        step, state = ckpt.step, {**state, **ckpt.manifest["trainer_state"]}
        if step > r.max_iters:
            raise MathlensError(f"the checkpoint in {run_dir} is at step {step}, past run.max_iters = {r.max_iters}; "
                                f"resume with max_iters >= {step}")
        if dinfo.is_main:
            metrics.truncate(step)
    elif dinfo.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / METRICS).unlink(missing_ok=True)
        tok.save(run_dir / TOKENIZER_DIR)
    if dinfo.world > 1 and (dinfo.rank > 0 or not resume):
        # the model is initialised alike everywhere (above); dropout masks must differ between ranks, as between
        # the rows of a one-process batch (nanoGPT's seed offset). A resumed rank > 0 continues its own saved
        # stream; a checkpoint without it (written by another world size) gives a stream derived from the step.
        if not (resume and restore_rank_rng(tensors, dinfo.rank, device)):
            torch.manual_seed(r.seed + dinfo.rank + (1_000_003 * step if resume else 0))
    if dinfo.is_main:
        write_json(run_dir / CONFIG_FILE, config.to_dict())
    raw = model
    fwd = torch.compile(model) if r.compile else model
    if dinfo.world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        fwd = DDP(fwd, device_ids=[device.index] if device.type == "cuda" else None)
    tb = _tensorboard(run_dir) if (r.tensorboard and dinfo.is_main) else None
    ckpt_every = r.checkpoint_interval or r.eval_interval

    def run_eval(s: int, exact: bool = False) -> float:
        iters = 0 if exact else r.eval_iters
        eval_bs = r.eval_batch_size or (max(64, d.batch_size) if iters == 0 else d.batch_size)
        return evaluate(fwd if dinfo.world == 1 else raw, data, "val", d.block_size, eval_bs, device, autocast,
                        dinfo, iters, seed=r.seed + s)

    def checkpoint(s: int, best: bool) -> None:
        ranks = dinfo.all_gather_object({"torch": torch.get_rng_state(),  # [one state] in a one-process run
                                         "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None})
        if dinfo.is_main:
            manifest = {"config": config.to_dict(), "model_config": mcfg.to_dict(), "dtype": dtype,
                        "tokenizer": {"path": TOKENIZER_DIR, "kind": tok.kind, "fingerprint": tok.fingerprint(),
                                      "vocab_size": tok.vocab_size},
                        "data": {**data.to_dict(), "sampler": "torch.Generator state in rng.data"},
                        "trainer_state": state}
            save_checkpoint(run_dir / CKPT_DIR, s, raw, optimizer, manifest, data_generator=gen, best=best,
                            extra_tensors=rank_rng_tensors(ranks))
        dinfo.barrier()

    def eval_and_save(s: int) -> None:
        t0 = time.perf_counter()
        val = run_eval(s)
        if not math.isfinite(val):
            _diverged(s, val, "val_loss", run_dir)
        train_loss = state["loss_sum"] / state["loss_count"] if state["loss_count"] else None
        state.update(loss_sum=0.0, loss_count=0, last_val_loss=val, last_eval_step=s,
                     elapsed=state["elapsed"] + time.perf_counter() - t0)
        best = val < state["best_val_loss"]
        if best:
            state.update(best_val_loss=val, best_step=s, time_to_best=state["elapsed"])
        if s == 0:
            state["init_val_loss"] = val
        rec = {"step": s, "kind": "eval", "val_loss": val, "train_loss": train_loss, "exact": r.eval_iters == 0,
               "best_val_loss": state["best_val_loss"], "elapsed": state["elapsed"]}
        if dinfo.is_main:
            metrics.write(rec)
            if tb:
                tb.add_scalar("val/loss", val, s)
        progress.message(f"step {s}: val loss {val:.4f}" + (f", train loss {train_loss:.4f}" if train_loss else ""))
        checkpoint(s, best)

    progress = Progress(r.max_iters, step, r.progress if dinfo.is_main else False, quiet or not dinfo.is_main)
    b_rank = d.batch_size // dinfo.world
    rows = slice(dinfo.rank * b_rank, (dinfo.rank + 1) * b_rank)
    pending: list[tuple[int, float, torch.Tensor]] = []  # (step, lr, loss on the device) not yet read by the host

    def read_losses() -> float:
        """Copy the pending step losses to the host in one transfer (one all-reduce under DDP), stop on the first
        non-finite one, add them to the running train-loss mean; returns the last. Between reads the loop never
        waits for the device."""
        values = dinfo.all_mean(torch.stack([t for _, _, t in pending])).tolist()
        for (s, lr_s, _), v in zip(pending, values):
            if not math.isfinite(v):
                if dinfo.is_main:
                    metrics.write({"step": s, "kind": "train", "train_loss": v, "lr": lr_s, "diverged": True})
                _diverged(s, v, "train_loss", run_dir)
            state["loss_sum"] += v
            state["loss_count"] += 1
        pending.clear()
        return values[-1]

    try:
        if step == 0 and not resume and r.eval_at_start:
            eval_and_save(0)
        fwd.train()
        t_log, tok_log = time.perf_counter(), 0
        while step < r.max_iters:
            t0 = time.perf_counter()
            lr = lr_at(step, o, config.lr_decay_iters)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_acc = torch.zeros((), device=device)
            for micro in range(o.grad_accum):
                x, y = data.get_batch("train", d.batch_size, d.block_size, generator=gen)
                x, y = x[rows].to(device), y[rows].to(device)
                sync = fwd.no_sync() if dinfo.world > 1 and micro < o.grad_accum - 1 else contextlib.nullcontext()
                with sync:
                    with autocast():
                        _, loss = fwd(x, y)
                    (loss / o.grad_accum).backward()
                loss_acc += loss.detach() / o.grad_accum
            if o.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(raw.parameters(), o.grad_clip)
            pending.append((step + 1, lr, loss_acc))
            last = step + 1 == r.max_iters
            logged = (step + 1) % r.log_interval == 0 or last
            evaluated = (step + 1) % r.eval_interval == 0 or last
            saved = evaluated or (step + 1) % ckpt_every == 0
            # the host reads the losses only when it needs them: to log, evaluate, save or call back
            train_loss = read_losses() if (logged or saved or callbacks) else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            state["elapsed"] += time.perf_counter() - t0
            tok_log += config.tokens_per_step
            logs = {"step": step, "kind": "train", "train_loss": train_loss, "lr": lr}
            for cb in callbacks:
                extra = cb(step, raw, dict(logs))
                if extra:
                    logs.update(extra)
            if logged or len(logs) > 4:
                now = time.perf_counter()
                logs.update(tokens=step * config.tokens_per_step, tokens_per_s=tok_log / max(now - t_log, 1e-9),
                            elapsed=state["elapsed"])
                progress.update(step, train_loss, logs["tokens_per_s"])
                t_log, tok_log = now, 0
                if dinfo.is_main:
                    metrics.write(logs)
                    if tb:
                        tb.add_scalar("train/loss", train_loss, step)
                        tb.add_scalar("train/lr", lr, step)
            if evaluated:
                eval_and_save(step)
            elif saved:
                checkpoint(step, False)
        if r.eval_iters == 0 and state.get("last_eval_step", step) != step:
            eval_and_save(step)  # resumed at max_iters from a checkpoint between evaluations: score that model
    finally:
        progress.close()
        if tb:
            tb.close()
    best_val = state["best_val_loss"]
    if r.eval_iters > 0:  # estimates chose the best step: score it and the last step exactly, keep the better
        final_val = run_eval(step, exact=True)
        best_val = final_val if state["best_step"] == step else _exact_loss_of_best(raw, run_dir, state, run_eval)
        if final_val < best_val:  # the estimate's choice was noise: the last step is the best model
            state.update(best_val_loss=final_val, best_step=step, time_to_best=state["elapsed"])
            checkpoint(step, True)
            best_val = final_val
    else:
        final_val = state["last_val_loss"]
    result = TrainResult(final_val, best_val, state["best_step"], state["init_val_loss"], step, state["elapsed"],
                         state["time_to_best"], step * config.tokens_per_step, run_dir)
    if dinfo.is_main:
        write_json(run_dir / RESULT_FILE, result.to_dict())
    return result


def _exact_loss_of_best(raw, run_dir, state, run_eval) -> float:
    """The whole-split val loss of the checkpoint marked best (``raw``'s own weights are restored after)."""
    ckpt = load_checkpoint(run_dir / CKPT_DIR, "best")
    best_model = GPT(raw.config).to(next(raw.parameters()).device)
    ckpt.load_model(best_model)
    saved = {k: v.detach().clone() for k, v in raw.state_dict().items()}
    raw.load_state_dict(best_model.state_dict())
    try:
        return run_eval(state["best_step"], exact=True)
    finally:
        raw.load_state_dict(saved)


def _diverged(step: int, value: float, what: str, run_dir: Path) -> None:
    raise MathlensError(f"training diverged at step {step}: {what} = {value}; the last good checkpoint is kept in "
                        f"{run_dir / CKPT_DIR} (lower optim.lr, or set optim.grad_clip / optim.warmup_iters)")


def _tensorboard(run_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MathlensError("run.tensorboard = true needs the 'tensorboard' package (pip install tensorboard)") from None
    return SummaryWriter(str(run_dir / "tensorboard"))
