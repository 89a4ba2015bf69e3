"""Training loop: loss decreases, exact evaluation, schedules, decay groups, callbacks, sampling, divergence."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from mathlens.errors import MathlensError
from mathlens.models.gpt import GPT, GPTConfig
from mathlens.train import (
    OptimConfig,
    TrainConfig,
    load_checkpoint,
    load_run,
    lr_at,
    param_groups,
    read_metrics,
    sample_text,
    train,
)
from mathlens.train.evaluate import evaluate
from mathlens.train.setup import prepare_data


def tiny_config(corpus, out, model=None, data=None, optim=None, run=None) -> TrainConfig:
    return TrainConfig.from_dict({
        "model": {"n_layer": 1, "n_head": 2, "n_embd": 16, "bias": False, **(model or {})},
        "data": {"corpus": str(corpus), "block_size": 16, "batch_size": 4, **(data or {})},
        "optim": {"lr": 1e-2, "warmup_iters": 2, "min_lr": 1e-3, **(optim or {})},
        "run": {"max_iters": 20, "eval_interval": 10, "log_interval": 1, "device": "cpu", "dtype": "float32",
                "out_dir": str(out), "progress": False, **(run or {})},
    })


@pytest.fixture
def corpus(tmp_path, tinyshakespeare_path, monkeypatch):
    monkeypatch.setenv("MATHLENS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "corpus.txt"
    path.write_text(open(tinyshakespeare_path, encoding="utf-8").read()[:6000], encoding="utf-8")
    return path


def test_tiny_run_learns_and_samples(corpus, tmp_path):
    calls = []

    def cb(step, model, logs):
        calls.append(step)
        return {"weight_norm": float(model.wte.weight.detach().norm())} if step == 5 else None

    res = train(tiny_config(corpus, tmp_path / "run"), callbacks=[cb], quiet=True)
    assert res.steps == 20 and calls == list(range(1, 21))
    assert math.isfinite(res.final_val_loss)
    # a char model at init predicts ≈ uniformly: loss ≈ ln V; 20 steps at lr 1e-2 must beat it clearly
    assert res.init_val_loss > res.final_val_loss + 0.3
    assert res.best_val_loss == min(r["val_loss"] for r in read_metrics(res.run_dir) if r["kind"] == "eval")
    recs = read_metrics(res.run_dir)
    assert [r["step"] for r in recs if r["kind"] == "eval"] == [0, 10, 20]
    assert next(r for r in recs if r["step"] == 5 and r["kind"] == "train")["weight_norm"] > 0
    model, tok = load_run(res.run_dir, "latest")
    a = sample_text(model, tok, "ROMEO:", 40, seed=1)
    b = sample_text(model, tok, "ROMEO:", 40, seed=1)
    c = sample_text(model, tok, "ROMEO:", 40, seed=2)
    assert a == b and a != c and a.startswith("ROMEO:") and len(a) == 46


def test_full_split_eval_is_exact(corpus, tmp_path):
    """evaluate(iters=0) = Σ over every target of the val split of −log p / n, each target counted once
    (reference: the non-overlapping windows plus the unseen tail of the last one, written out by hand)."""
    T = 32
    cfg = tiny_config(corpus, tmp_path / "run", data={"block_size": T})
    tok, data = prepare_data(cfg)
    torch.manual_seed(0)
    model = GPT(cfg.model_config(tok.vocab_size)).eval()
    val = torch.as_tensor(data.split("val").astype("int64"))
    n = len(val) - 1
    assert n % T, "the corpus slice must leave a partial last window"
    total = 0.0
    with torch.no_grad():
        for s in range(0, n - T + 1, T):
            lg, _ = model(val[None, s:s + T])
            total += F.cross_entropy(lg[0], val[s + 1:s + T + 1], reduction="sum").item()
        k = n % T  # targets the full windows missed: the last k, predicted with the final window
        lg, _ = model(val[None, n - T:n])
        total += F.cross_entropy(lg[0, -k:], val[n - k + 1:], reduction="sum").item()
    got = evaluate(model, data, "val", block_size=T, batch_size=7, device=torch.device("cpu"))
    assert got == pytest.approx(total / n, rel=1e-6)
    est = evaluate(model, data, "val", block_size=T, batch_size=7, device=torch.device("cpu"), iters=3, seed=1)
    assert est != got and abs(est - got) < 0.2  # an estimate from 3 random batches, near the exact value


def test_lr_schedules_closed_forms():
    c = OptimConfig(lr=1.0, min_lr=0.1, warmup_iters=10)
    assert lr_at(0, c, 110) == pytest.approx(1 / 11) and lr_at(9, c, 110) == pytest.approx(10 / 11)
    assert lr_at(10, c, 110) == pytest.approx(1.0)
    assert lr_at(60, c, 110) == pytest.approx(0.1 + 0.5 * 0.9)  # cos(π/2) = 0: halfway
    assert lr_at(110, c, 110) == pytest.approx(0.1) and lr_at(500, c, 110) == 0.1
    lin = OptimConfig(lr=1.0, min_lr=0.1, warmup_iters=0, schedule="linear")
    assert lr_at(25, lin, 100) == pytest.approx(1.0 - 0.25 * 0.9)
    const = OptimConfig(lr=0.5, min_lr=0.1, warmup_iters=0, schedule="constant")
    assert lr_at(10**6, const, 100) == 0.5


def test_decay_groups_follow_nanogpt():
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_embd=8, n_head=2, bias=True))
    decay, no_decay = param_groups(model, 0.1)
    ids = {id(p) for p in decay["params"]}
    assert id(model.wte.weight) in ids and id(model.pos.weight) in ids  # embeddings are decayed (2-D)
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n_unique = len({id(p) for p in model.parameters()})
    assert len(decay["params"]) + len(no_decay["params"]) == n_unique  # the tied lm_head counted once
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1


def test_divergence_stops_and_keeps_last_good_checkpoint(corpus, tmp_path):
    def poison(step, model, logs):
        if step == 13:
            with torch.no_grad():
                model.wte.weight[0, 0] = float("nan")

    out = tmp_path / "run"
    with pytest.raises(MathlensError, match=r"diverged at step 14: train_loss = nan.*last good checkpoint"):
        train(tiny_config(corpus, out), callbacks=[poison], quiet=True)
    ckpt = load_checkpoint(out / "checkpoints")  # verifies sha256 of every file
    assert ckpt.step == 10
    model, _ = load_run(out, "latest")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["diverged"] is True and last["step"] == 14
    assert not (out / ".lock").exists()


class _HostReads(TorchFunctionMode):
    """Counts the calls that copy a tensor's value to the host (and, on a GPU, wait for the device)."""

    READS = ("item", "__float__", "__int__", "__bool__", "tolist")

    def __init__(self):
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.n += getattr(func, "__name__", "") in self.READS
        return func(*args, **(kwargs or {}))


def test_step_loop_reads_losses_only_when_it_logs_evaluates_or_saves(corpus, tmp_path):
    """Without callbacks the loop never reads a loss between log / eval / checkpoint steps: the number of host
    reads of a run with one evaluation and one log line at the end does not grow with the number of steps
    (before: one read per step). Both runs still write the same train-loss mean over their steps' losses."""
    counts, results = [], []
    for n in (12, 24):
        cfg = tiny_config(corpus, tmp_path / f"run{n}", run={"max_iters": n, "eval_interval": n, "log_interval": 1000,
                                                             "eval_at_start": False})
        with _HostReads() as reads:
            results.append(train(cfg, quiet=True))
        counts.append(reads.n)
    assert counts[0] == counts[1] > 0
    evals = [r for r in read_metrics(tmp_path / "run24") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [24] and math.isfinite(evals[0]["train_loss"])


def test_divergence_found_between_log_steps_names_the_first_bad_step(corpus, tmp_path):
    """With the losses read only every 25 steps, a run that diverges stops naming the same first non-finite step
    as a run that reads every step, and no checkpoint after it is written."""
    found = []
    for every in (1, 25):
        cfg = tiny_config(corpus, tmp_path / f"run{every}", optim={"lr": 1e12, "min_lr": 1e11, "warmup_iters": 0,
                                                                   "grad_clip": 0.0, "weight_decay": 0.0},
                          run={"max_iters": 30, "log_interval": every, "eval_interval": 25, "eval_at_start": False})
        with pytest.raises(MathlensError, match="training diverged at step") as err:
            train(cfg, quiet=True)
        found.append(str(err.value).split(":")[0])
        last = read_metrics(tmp_path / f"run{every}")[-1]
        assert last["diverged"] is True and f"step {last['step']}" in found[-1]
        assert not (tmp_path / f"run{every}" / "checkpoints" / "index.json").exists()
    assert found[0] == found[1]


def test_huge_lr_diverges_with_clear_message(corpus, tmp_path):
    cfg = tiny_config(corpus, tmp_path / "run", optim={"lr": 1e12, "min_lr": 1e11, "warmup_iters": 0,
                                                       "grad_clip": 0.0, "weight_decay": 0.0},
                      run={"max_iters": 30})
    with pytest.raises(MathlensError, match="training diverged at step"):
        train(cfg, quiet=True)
    assert load_checkpoint(tmp_path / "run" / "checkpoints").step in (0, 10, 20)


def test_cpu_adamw_is_fused_and_equals_the_per_tensor_loop():
    """make_optimizer picks PyTorch's fused AdamW on the CPU; 10 steps of it match the reference per-tensor
    AdamW (same groups, same gradients) to float32 rounding."""
    from mathlens.train import make_optimizer

    torch.manual_seed(0)
    # no biases: a key bias has an exactly-zero gradient (softmax ignores a per-row shift), which Adam would
    # blow up from roundoff noise into lr-sized steps that differ between any two implementations
    a = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_embd=16, n_head=2, bias=False))
    b = GPT(a.config)
    b.load_state_dict(a.state_dict())
    cfg = OptimConfig(lr=1e-2, beta2=0.99, weight_decay=0.1)
    fused = make_optimizer(a, cfg, "cpu")
    assert fused.defaults["fused"] is True
    ref = torch.optim.AdamW(param_groups(b, 0.1), lr=1e-2, betas=(0.9, 0.99), foreach=False)
    g = torch.Generator().manual_seed(1)
    for _ in range(10):
        x = torch.randint(0, 11, (4, 8), generator=g)
        for model, opt in ((a, fused), (b, ref)):
            opt.zero_grad()
            model(x, x)[1].backward()
            opt.step()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.allclose(p, q, rtol=1e-5, atol=1e-6), name


def test_estimates_use_the_training_batch_size(corpus, tmp_path, monkeypatch):
    """eval_iters > 0 draws batches of data.batch_size (nanoGPT's estimate_loss); whole-split evaluations
    use max(64, batch_size) sequences a forward."""
    import mathlens.train.loop as loop

    seen = []
    real = loop.evaluate

    def spy(model, data, split, block_size, batch_size, *args, **kw):
        seen.append((batch_size, args[3] if len(args) > 3 else kw.get("iters", 0)))
        return real(model, data, split, block_size, batch_size, *args, **kw)

    monkeypatch.setattr(loop, "evaluate", spy)
    train(tiny_config(corpus, tmp_path / "run", run={"max_iters": 4, "eval_interval": 2, "eval_iters": 3}), quiet=True)
    assert {bs for bs, iters in seen if iters} == {4} and {bs for bs, iters in seen if not iters} == {64}


@pytest.mark.parametrize("estimate_favours", ["early", "last"])
def test_estimated_best_is_rescored_and_consistent(corpus, tmp_path, monkeypatch, estimate_favours):
    """With eval_iters > 0 the step the (noisy) estimates chose and the last step are both scored on the whole
    split; best_val_loss, best_step and the "best" checkpoint then all describe the better model. Estimates
    are faked so that they pick step 2 of 8 ("early") or the last step ("last")."""
    import mathlens.train.loop as loop

    real = loop.evaluate
    fake = {"early": {0: 9.0, 2: 1.0, 4: 2.0, 6: 3.0, 8: 4.0}, "last": {0: 9.0, 2: 4.0, 4: 3.0, 6: 2.0, 8: 1.0}}

    def spy(model, data, split, block_size, batch_size, device, autocast=None, dist_info=None, iters=0, seed=0):
        if iters:
            return fake[estimate_favours][seed - 1337]  # run_eval seeds an estimate at step s with run.seed + s
        return real(model, data, split, block_size, batch_size, device, autocast, dist_info, iters, seed)

    monkeypatch.setattr(loop, "evaluate", spy)
    cfg = tiny_config(corpus, tmp_path / "run", run={"max_iters": 8, "eval_interval": 2, "eval_iters": 3, "seed": 1337})
    res = train(cfg, quiet=True)
    _, data = prepare_data(cfg)
    exact = {}
    for which in ("best", "latest"):
        model, _ = load_run(res.run_dir, which)
        exact[which] = real(model, data, "val", 16, 64, torch.device("cpu"))
    assert res.final_val_loss == pytest.approx(exact["latest"], abs=1e-6)
    assert res.best_val_loss == pytest.approx(exact["best"], abs=1e-6)  # the reported loss is the best checkpoint's
    assert res.best_val_loss <= res.final_val_loss
    assert load_checkpoint(res.run_dir / "checkpoints", "best").step == res.best_step
    # 8 steps at lr 1e-2 beat 2 steps by far on the whole split: the last step wins either way
    assert res.best_step == 8 and res.best_val_loss == res.final_val_loss


def test_train_model_callbacks_count_updates_as_train_does(corpus, tmp_path):
    """mathlens.train.train_model calls cb(step, ...) with step = updates applied (1..N), like train()."""
    from mathlens.train import train_model

    cfg = tiny_config(corpus, tmp_path / "run")
    _, data = prepare_data(cfg)
    seen = []

    def cb(step, model, logs):
        seen.append((step, logs["lr"]))

    train_model(GPTConfig(vocab_size=data.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16), data, steps=3,
                batch_size=4, callbacks=[cb])
    assert [s for s, _ in seen] == [1, 2, 3]


def test_resume_at_or_past_max_iters(corpus, tmp_path):
    """A run stopped at step 17 (latest checkpoint: step 15, between evaluations at 10 and 20) and resumed with
    max_iters = 15 scores the step-15 model, not the stale step-10 evaluation; max_iters below the checkpoint's
    step is refused."""
    run = {"max_iters": 20, "eval_interval": 10, "checkpoint_interval": 5}

    def stop(step, model, logs):
        if step == 17:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(corpus, tmp_path / "run", run=run), callbacks=[stop], quiet=True)
    assert load_checkpoint(tmp_path / "run" / "checkpoints").step == 15
    with pytest.raises(MathlensError, match="step 15, past run.max_iters = 12"):
        train(tiny_config(corpus, tmp_path / "run", run={**run, "max_iters": 12}), resume=True, quiet=True)
    res = train(tiny_config(corpus, tmp_path / "run", run={**run, "max_iters": 15}), resume=True, quiet=True)
    evals = [r for r in read_metrics(res.run_dir) if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 10, 15] and res.steps == 15
    model, _ = load_run(res.run_dir, "latest")
    _, data = prepare_data(tiny_config(corpus, tmp_path / "run", run=run))
    assert res.final_val_loss == pytest.approx(evaluate(model, data, "val", 16, 64, torch.device("cpu")), abs=1e-6)


def test_train_model_answers_only_trains_on_the_answer_token():
    """answers_only=True draws batches whose non-answer targets are ignored (-1): the loss is the answer's alone."""
    from mathlens.data import AssociativeRecall
    from mathlens.train import train_model

    task = AssociativeRecall(n_pairs=2, block_size=16, n_keys=8, n_values=8, seed=0)
    seen = []
    real = task.get_batch

    def spy(*a, **k):
        x, y = real(*a, **k)
        seen.append(y)
        return x, y

    task.get_batch = spy
    cfg = GPTConfig(vocab_size=task.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16)
    train_model(cfg, task, steps=2, batch_size=4, answers_only=True)
    assert all(bool((y[:, :-1] == -1).all()) and bool((y[:, -1] >= 0).all()) for y in seen) and len(seen) == 2
    seen.clear()
    train_model(cfg, task, steps=1, batch_size=4)
    assert bool((seen[0] >= 0).all())  # default: every target


@pytest.mark.slow
def test_gpu_preset_code_path_compile_bf16_dropout_runs_and_resumes_on_cpu(corpus, tmp_path):
    """The nanogpt-char-gpu preset's settings (torch.compile, bf16 autocast, dropout 0.2, estimated evaluations) on a
    tiny model on the CPU: trains, scores its best exactly, and resumes from its checkpoint (≈ 1 min, mostly compile)."""
    from mathlens.train.presets import preset

    d = preset("nanogpt-char-gpu")
    d["model"].update(n_layer=1, n_head=2, n_embd=16)
    d["data"].update(corpus=str(corpus), block_size=16, batch_size=4)
    d["run"].update(max_iters=10, eval_interval=5, eval_iters=3, device="cpu", out_dir=str(tmp_path / "run"),
                    progress=False)
    cfg = TrainConfig.from_dict(d)
    assert cfg.run.compile and cfg.run.dtype == "bfloat16"
    first = train(cfg, quiet=True)
    assert first.steps == 10 and math.isfinite(first.best_val_loss)
    d["run"]["max_iters"] = 15
    res = train(TrainConfig.from_dict(d), quiet=True, resume=True)
    assert res.steps == 15 and math.isfinite(res.final_val_loss)
    assert [r["step"] for r in read_metrics(tmp_path / "run") if r["kind"] == "eval"] == [0, 5, 10, 15]


@pytest.mark.parametrize("attention, kernel", [("auto", "flash"), ("math", "math"), ("flash", "flash"),
                                               ("cudnn", "flash")])  # no cuDNN on the CPU: the next in order
def test_run_attention_puts_that_sdpa_backend_first(attention, kernel):
    """``run.attention`` wraps every step and evaluation in ``sdpa_kernel``: on the CPU, which has one fused kernel
    and no priorities, ``"math"`` runs the materialised softmax and the CUDA backends leave PyTorch's choice."""
    import torch.nn.functional as F
    from torch.profiler import ProfilerActivity, profile

    from mathlens.train.setup import autocast_for

    _, ctx = autocast_for("float32", torch.device("cpu"), attention)
    q = torch.randn(2, 2, 8, 4)
    with profile(activities=[ProfilerActivity.CPU]) as prof, ctx():
        F.scaled_dot_product_attention(q, q, q, is_causal=True)
    names = {e.key for e in prof.key_averages()}
    want = {"flash": "aten::_scaled_dot_product_flash_attention_for_cpu", "math": "aten::_scaled_dot_product_attention_math"}
    assert want[kernel] in names and want["math" if kernel == "flash" else "flash"] not in names, names


@pytest.mark.skipif(not hasattr(torch._C, "_get_sdp_priority_order"), reason="this PyTorch does not expose the order")
@pytest.mark.parametrize("attention", ["cudnn", "efficient", "math"])
def test_run_attention_on_cuda_puts_the_choice_first_then_pytorchs_order(attention):
    """On CUDA the chosen backend comes first and the others keep PyTorch's default order; leaving the context
    restores the order (read through PyTorch's own priority list; no GPU needed)."""
    from torch.nn.attention import SDPBackend

    from mathlens.train.config import ATTENTION_BACKENDS
    from mathlens.train.setup import autocast_for

    default = list(torch._C._get_sdp_priority_order())
    _, ctx = autocast_for("float32", torch.device("cuda"), attention)
    with ctx():
        inside = list(torch._C._get_sdp_priority_order())
    assert list(torch._C._get_sdp_priority_order()) == default
    chosen = getattr(SDPBackend, ATTENTION_BACKENDS[attention]).value
    assert inside[0] == chosen and inside[1:4] == [b for b in default if b != chosen][:3]


def test_resume_says_when_a_longer_run_moves_the_decay_horizon(corpus, tmp_path, capsys):
    # lr_decay_iters unset follows max_iters: extending a run changes the schedule of the steps to come (as in
    # nanoGPT); the resume says so and names the flag that keeps it, and that flag is accepted
    import shutil

    train(tiny_config(corpus, tmp_path / "run", run={"max_iters": 4, "eval_interval": 2}), quiet=True)
    shutil.copytree(tmp_path / "run", tmp_path / "kept")
    capsys.readouterr()
    train(tiny_config(corpus, tmp_path / "run", run={"max_iters": 6, "eval_interval": 2}), resume=True, quiet=False)
    err = capsys.readouterr().err
    assert "decay now ends at step 6, not 4" in err and "--lr-decay-iters 4" in err
    train(tiny_config(corpus, tmp_path / "kept", optim={"lr_decay_iters": 4}, run={"max_iters": 6, "eval_interval": 2}),
          resume=True, quiet=False)
    assert "decay now ends" not in capsys.readouterr().err
