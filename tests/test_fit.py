"""``train_model``: the in-memory loop of the controlled experiments (dtype, divergence checks off the hot path)."""

import pytest
import torch

from mathlens.data.dataset import TokenDataset
from mathlens.errors import MathlensError
from mathlens.models.gpt import GPT, GPTConfig
from mathlens.train import fit
from mathlens.train.config import OptimConfig
from mathlens.train.optim import lr_at, make_optimizer

CFG = GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16)


def _data() -> TokenDataset:
    ids = torch.randint(0, 11, (4000,), generator=torch.Generator().manual_seed(0)).numpy().astype("uint16")
    return TokenDataset(ids, 11, 3600, name="random")


def _reference_losses(data, steps: int, seed: int = 3) -> list[float]:
    """The loop as it was written before the losses stayed on the device: ``loss.item()`` after every step."""
    torch.manual_seed(seed)
    model = GPT(CFG)
    ocfg = OptimConfig(lr=1e-2, weight_decay=0.1, warmup_iters=max(1, steps // 10), min_lr=1e-3, grad_clip=1.0)
    opt = make_optimizer(model, ocfg, "cpu")
    gen, out = torch.Generator().manual_seed(seed), []
    model.train()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, ocfg, steps)
        x, y = data.get_batch("train", 4, CFG.block_size, generator=gen, device="cpu")
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        out.append(loss.item())
    return out


def test_cpu_losses_are_bitwise_the_per_step_loop():
    data = _data()
    _, res = fit.train_model(CFG, data, steps=12, batch_size=4, lr=1e-2, seed=3)
    assert res.losses == _reference_losses(data, 12)
    assert res.final_train_loss == res.losses[-1]


def test_bfloat16_autocast_trains_with_float32_weights():
    data = _data()
    model, res = fit.train_model(CFG, data, steps=6, batch_size=4, lr=1e-2, seed=3, dtype="bfloat16")
    ref = _reference_losses(data, 6)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert res.losses != ref  # the forward ran in bf16 ...
    assert res.losses[0] == pytest.approx(ref[0], rel=2e-2)  # ... at bf16's precision


def _nan_from(monkeypatch, bad_step: int) -> None:
    """Make the model's loss NaN from the ``bad_step``-th forward on (0-based)."""
    calls = {"n": 0}
    forward = GPT.forward

    def patched(self, idx, targets=None):
        logits, loss = forward(self, idx, targets)
        calls["n"] += 1
        return logits, (loss * float("nan") if calls["n"] > bad_step and loss is not None else loss)

    monkeypatch.setattr(GPT, "forward", patched)


@pytest.mark.parametrize("every", [1, 4])
def test_divergence_names_the_first_bad_step(monkeypatch, every):
    """Checked every step (CPU) or every ``every`` steps (as on an accelerator): the same first bad step is named."""
    _nan_from(monkeypatch, 5)
    monkeypatch.setattr(fit, "_sync_every", lambda device, callbacks: every)
    with pytest.raises(MathlensError, match=r"diverged at step 5: loss = nan"):
        fit.train_model(CFG, _data(), steps=20, batch_size=4, lr=1e-2, seed=3)


def test_divergence_in_the_last_unchecked_steps_is_caught(monkeypatch):
    _nan_from(monkeypatch, 9)
    monkeypatch.setattr(fit, "_sync_every", lambda device, callbacks: 4)  # checks after steps 4, 8 and the last (10)
    with pytest.raises(MathlensError, match=r"diverged at step 9"):
        fit.train_model(CFG, _data(), steps=10, batch_size=4, lr=1e-2, seed=3)


def test_sync_interval():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert fit._sync_every(cpu, ()) == 1
    assert fit._sync_every(cuda, ()) == fit.SYNC_EVERY
    assert fit._sync_every(cuda, (lambda *a: None,)) == 1  # callbacks get each step's loss as a float
