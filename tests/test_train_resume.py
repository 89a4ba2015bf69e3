"""Crash safety and DDP: a run SIGKILLed after step k and resumed ends bitwise equal to an uninterrupted run;
a 2-process gloo run (torchrun) gives the losses of one process with the same global batch."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mathlens.train import TrainConfig, load_checkpoint, read_metrics, train

# a run of the config given as JSON in argv[1]; with argv[2] = k it kills itself with SIGKILL after step k
SCRIPT = """
import json, os, signal, sys, torch
torch.set_num_threads(1)
from mathlens.train import TrainConfig, train
kill_at = int(sys.argv[2]) if len(sys.argv) > 2 else None
rng_dir = os.environ.get("MATHLENS_TEST_RNG_DIR")
def cb(step, model, logs):
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    if rng_dir and step == 1:  # what dropout would draw next on this rank
        torch.save(torch.rand(8), os.path.join(rng_dir, "rank" + os.environ.get("RANK", "0") + ".pt"))
resume = bool(os.environ.get("MATHLENS_TEST_RESUME"))
train(TrainConfig.from_dict(json.loads(sys.argv[1])), callbacks=[cb], quiet=True, resume=resume)
"""


def _config(corpus, out, **run):
    return {
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.1},  # dropout: the torch RNG must resume too
        "data": {"corpus": str(corpus), "block_size": 16, "batch_size": 4},
        "optim": {"lr": 1e-2, "warmup_iters": 2, "min_lr": 1e-3},
        "run": {"max_iters": 16, "eval_interval": 5, "log_interval": 1, "device": "cpu", "dtype": "float32",
                "out_dir": str(out), "progress": False, **run},
    }


@pytest.fixture
def corpus(tmp_path, tinyshakespeare_path, monkeypatch):
    monkeypatch.setenv("MATHLENS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text(open(tinyshakespeare_path, encoding="utf-8").read()[:5000], encoding="utf-8")
    return path


def _env(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, "OMP_NUM_THREADS": "1", "MATHLENS_CACHE": str(tmp_path / "cache"),
            "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _curve(run_dir):
    return [(r["step"], r["kind"], r.get("train_loss"), r.get("val_loss")) for r in read_metrics(run_dir)]


def _weights(run_dir):
    return load_file(str(load_checkpoint(run_dir / "checkpoints").path / "model.safetensors"))


def test_sigkill_then_resume_is_bitwise_identical(corpus, tmp_path):
    torch.set_num_threads(1)
    ref = train(TrainConfig.from_dict(_config(corpus, tmp_path / "ref")), quiet=True)
    out = tmp_path / "killed"
    cfg = _config(corpus, out)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cfg), "8"], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(out / "checkpoints").step == 5  # the checkpoint before the kill
    assert (out / ".lock").exists()  # left by the killed run: stale, to be taken over
    res = train(TrainConfig.from_dict(cfg), resume=True, quiet=True)
    assert res.steps == ref.steps == 16
    assert _curve(out) == _curve(ref.run_dir)  # every train and val loss equal as floats
    wa, wb = _weights(ref.run_dir), _weights(out)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert res.final_val_loss == ref.final_val_loss and res.best_val_loss == ref.best_val_loss


def test_ddp_two_processes_match_one_process(corpus, tmp_path):
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    torch.set_num_threads(1)
    run = {"max_iters": 6, "eval_interval": 3}
    model = {"n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0}
    optim = {"lr": 1e-2, "warmup_iters": 2, "min_lr": 1e-3, "grad_accum": 2}  # also exercises DDP no_sync
    one = _config(corpus, tmp_path / "one", **run) | {"model": model, "optim": optim}
    two = _config(corpus, tmp_path / "two", **run) | {"model": model, "optim": optim}
    ref = train(TrainConfig.from_dict(one), quiet=True)
    worker = tmp_path / "worker.py"
    worker.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
           json.dumps(two)]  # torchrun: RANK / WORLD_SIZE in the environment, gloo on CPU
    env = {**_env(tmp_path), "MATHLENS_TEST_RNG_DIR": str(tmp_path)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[:3000] + "\n…\n" + proc.stderr[-1500:]  # a rank's own error comes first
    # the ranks' torch streams differ (dropout masks must, as between the rows of a one-process batch)
    assert not torch.equal(torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt"))
    a, b = _curve(ref.run_dir), _curve(tmp_path / "two")
    assert [x[:2] for x in a] == [x[:2] for x in b]
    for ra, rb in zip(a, b):
        for va, vb in zip(ra[2:], rb[2:]):
            assert (va is None) == (vb is None) and (va is None or abs(va - vb) <= 1e-5), (ra, rb)
    wa, wb = _weights(ref.run_dir), _weights(tmp_path / "two")
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5


def _torchrun(tmp_path, cfg, *args, **env):
    worker = tmp_path / "worker.py"
    worker.write_text(SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
           json.dumps(cfg), *args]
    return subprocess.run(cmd, env={**_env(tmp_path), **env}, capture_output=True, text=True, timeout=300)


def test_ddp_sigkill_then_resume_with_dropout_is_bitwise_identical(corpus, tmp_path):
    """Each rank's dropout stream is saved with the checkpoint (rank 1's under rng.rank1.torch), so a 2-process
    run with dropout, killed after step 7 and resumed from step 5, ends bitwise equal to an uninterrupted one."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    run = {"max_iters": 9, "eval_interval": 5}
    ref = _torchrun(tmp_path, _config(corpus, tmp_path / "ref", **run))
    assert ref.returncode == 0, ref.stderr[-2000:]
    cfg = _config(corpus, tmp_path / "killed", **run)
    assert _torchrun(tmp_path, cfg, "7").returncode != 0  # both ranks SIGKILL themselves after step 7
    assert load_checkpoint(tmp_path / "killed" / "checkpoints").step == 5
    assert "rng.rank1.torch" in load_checkpoint(tmp_path / "killed" / "checkpoints").trainer_tensors()
    res = _torchrun(tmp_path, cfg, MATHLENS_TEST_RESUME="1")
    assert res.returncode == 0, res.stderr[-2000:]
    assert _curve(tmp_path / "killed") == _curve(tmp_path / "ref")
    wa, wb = _weights(tmp_path / "ref"), _weights(tmp_path / "killed")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
