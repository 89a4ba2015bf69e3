"""Checkpoints: exact round trip without pickle, tied weights once, sha256 checks, atomic writes, run lock."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from mathlens.errors import MathlensError
from mathlens.models.gpt import GPT, GPTConfig
from mathlens.train import OptimConfig, RunLock, load_checkpoint, make_optimizer, save_checkpoint
from mathlens.train import checkpoint as ckpt_mod
from mathlens.train.checkpoint import optimizer_from_tensors, restore_rng


def _trained(seed=0, steps=3):
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_embd=8, n_head=2))
    opt = make_optimizer(model, OptimConfig(lr=1e-2))
    for _ in range(steps):
        x = torch.randint(13, (2, 8))
        _, loss = model(x, x)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def test_round_trip_is_exact_and_never_unpickles(tmp_path, monkeypatch):
    model, opt = _trained()
    gen = torch.Generator().manual_seed(5)
    gen_state = gen.get_state()
    save_checkpoint(tmp_path, 3, model, opt, {"note": "x"}, data_generator=gen)
    with safe_open(str(tmp_path / "step-00000003" / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert ("lm_head.weight" in keys) != ("wte.weight" in keys)  # tied weights stored once

    def no_pickle(*a, **k):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", no_pickle)
    ck = load_checkpoint(tmp_path)
    assert ck.step == 3 and ck.manifest["note"] == "x"
    fresh, fresh_opt = _trained(seed=1, steps=1)
    ck.load_model(fresh)
    assert fresh.lm_head.weight is fresh.wte.weight
    for (n, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), n
    tensors = ck.trainer_tensors()
    fresh_opt.load_state_dict(optimizer_from_tensors(tensors, ck.manifest["optimizer"]))
    sa, sb = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    g2 = torch.Generator().manual_seed(99)
    restore_rng(tensors, g2)
    assert torch.equal(g2.get_state(), gen_state)


def _saved(tmp_path):
    model, opt = _trained()
    save_checkpoint(tmp_path, 1, model, opt, {})
    return tmp_path / "step-00000001"


@pytest.mark.parametrize("damage", ["flip_model", "truncate_trainer", "bad_manifest_json", "missing_file"])
def test_damaged_checkpoint_is_a_user_error(tmp_path, damage):
    d = _saved(tmp_path)
    if damage == "flip_model":
        b = bytearray((d / "model.safetensors").read_bytes())
        b[-5] ^= 0xFF
        (d / "model.safetensors").write_bytes(bytes(b))
    elif damage == "truncate_trainer":
        b = (d / "trainer.safetensors").read_bytes()
        (d / "trainer.safetensors").write_bytes(b[: len(b) // 2])
    elif damage == "bad_manifest_json":
        (d / "manifest.json").write_text('{"format": "mathlens-checkpoint", ')
    else:
        (d / "model.safetensors").unlink()
    with pytest.raises(MathlensError, match="corrupt checkpoint"):
        load_checkpoint(tmp_path)


def test_kill_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = _trained()
    save_checkpoint(tmp_path, 1, model, opt, {})

    def crash(*a, **k):
        raise KeyboardInterrupt  # stands for a kill between the weights and the trainer file

    monkeypatch.setattr(ckpt_mod, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 2, model, opt, {})
    assert load_checkpoint(tmp_path).step == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "step-00000001"]


def test_saving_a_step_again_never_touches_the_indexed_folder(tmp_path, monkeypatch):
    """Re-saving step 8 (the end of a run re-marking it best) writes a new folder and then switches the index;
    a kill before the index moves leaves the old step-8 checkpoint intact and loadable."""
    model, opt = _trained()
    save_checkpoint(tmp_path, 2, model, opt, {}, best=True)
    save_checkpoint(tmp_path, 8, model, opt, {})
    real = ckpt_mod.write_json

    def crash(path, obj):
        if path.name == "index.json":
            raise KeyboardInterrupt  # killed after the new folder is in place, before the index switches
        return real(path, obj)

    monkeypatch.setattr(ckpt_mod, "write_json", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 8, model, opt, {}, best=True)
    monkeypatch.setattr(ckpt_mod, "write_json", real)
    assert load_checkpoint(tmp_path, "latest").step == 8 and load_checkpoint(tmp_path, "best").step == 2
    save_checkpoint(tmp_path, 8, model, opt, {}, best=True)  # the leftover step-00000008.1 is skipped, then removed
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["latest"] == index["best"] == "step-00000008.2"
    assert load_checkpoint(tmp_path, "best").step == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "step-00000008.2"]


def test_best_and_latest_are_kept_others_removed(tmp_path):
    model, opt = _trained()
    save_checkpoint(tmp_path, 1, model, opt, {}, best=True)
    save_checkpoint(tmp_path, 2, model, opt, {}, best=False)
    save_checkpoint(tmp_path, 3, model, opt, {}, best=False)
    assert load_checkpoint(tmp_path, "best").step == 1 and load_checkpoint(tmp_path, "latest").step == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.json", "step-00000001", "step-00000003"]
    assert set(json.loads((tmp_path / "index.json").read_text())["manifest_sha256"]) == {"step-00000001",
                                                                                         "step-00000003"}


def test_lock_refuses_live_owner_and_takes_over_dead_one(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".lock").write_text(f"{sleeper.pid}\n")
        with pytest.raises(MathlensError, match=f"in use by a live run \\(pid {sleeper.pid}\\)"):
            RunLock(tmp_path).acquire()
    finally:
        sleeper.kill()
        sleeper.wait()
    with RunLock(tmp_path) as lock:  # the owner is dead now: stale lock taken over
        assert lock.owner() == os.getpid()
    assert not (tmp_path / ".lock").exists()
