"""`mathlens train` / `mathlens sample` through the CLI: a tiny run, overrides, and every bad input -> exit 2,
one line on stderr, no traceback, nothing half-written."""

import json
import shutil
import subprocess
import sys

import pytest

from mathlens.cli import main

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--device", "cpu", "--dtype", "float32", "--max-iters", "4", "--eval-interval", "2", "--quiet"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tinyshakespeare_path):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(open(tinyshakespeare_path, encoding="utf-8").read()[:4000], encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MATHLENS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MATHLENS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        assert main(["train", "--data", str(corpus), "--out", str(out), *TINY]) == 0
    return out


def _fails(capsys, argv, *needles):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_train_then_sample(trained, capsys):
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["model"]["n_layer"] == 1 and cfg["data"]["block_size"] == 16 and cfg["run"]["max_iters"] == 4
    assert {"metrics.jsonl", "config.json", "tokenizer", "checkpoints", "result.json"} <= {
        p.name for p in trained.iterdir()}
    capsys.readouterr()
    assert main(["sample", str(trained), "--prompt", "Citizen:", "--max-new-tokens", "30", "--seed", "7"]) == 0
    a = capsys.readouterr().out
    assert main(["sample", str(trained), "--prompt", "Citizen:", "--max-new-tokens", "30", "--seed", "7"]) == 0
    assert a == capsys.readouterr().out and a.startswith("Citizen:") and len(a) == 8 + 30 + 1


def test_flags_override_config_file(corpus, tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text(f'[data]\ncorpus = "{corpus}"\nblock_size = 8\n[optim]\nlr = 0.5\n[run]\nmax_iters = 2\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(toml), "--preset", "nanogpt-char-cpu", *TINY, "--lr", "0.003",
                 "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["optim"]["lr"] == 0.003 and cfg["data"]["block_size"] == 16  # flags win over the file
    assert cfg["optim"]["beta2"] == 0.99 and cfg["model"]["bias"] is False  # the preset fills the rest
    # --resume reads the run's saved config; only --max-iters changes
    assert main(["train", "--out", str(out), "--resume", "--max-iters", "6", "--quiet"]) == 0
    assert json.loads((out / "result.json").read_text())["steps"] == 6


def test_python_m_mathlens_runs_the_cli_and_passes_exit_codes(tmp_path):
    """``python -m mathlens`` (a checkout on PYTHONPATH, as on a bare GPU machine) is the same CLI: a bad input
    ends with exit code 2 and one line."""
    ok = subprocess.run([sys.executable, "-m", "mathlens", "--version"], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.startswith("mathlens ")
    bad = subprocess.run([sys.executable, "-m", "mathlens", "train", "--data", str(tmp_path / "missing.txt"),
                          "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "missing.txt" in bad.stderr


def test_rope_preset_is_the_cpu_recipe_with_rotary_positions(corpus, tmp_path):
    from mathlens.train.presets import preset

    base, rope = preset("nanogpt-char-cpu"), preset("nanogpt-char-cpu-rope")
    assert rope["model"].pop("positional") == "rope" and "positional" not in base["model"]
    assert rope["run"].pop("out_dir") == base["run"].pop("out_dir") + "-rope"
    assert rope == base  # nothing else differs
    out = tmp_path / "rope"
    assert main(["train", "--preset", "nanogpt-char-cpu-rope", "--data", str(corpus), *TINY, "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["positional"] == "rope"


def _write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "not_utf8", "too_short", "unknown_name", "online",
                                  "neg_lr", "zero_batch", "unknown_key", "unknown_section", "bad_preset",
                                  "bad_attention", "not_a_float", "seed_range", "section_not_table",
                                  "out_of_memory", "out_is_a_file", "out_under_a_file"])
def test_bad_input_exits_2_without_writing(case, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    data, extra, needles = None, [], []
    if case == "missing":
        data, needles = str(tmp_path / "nope.txt"), ["not found"]
    elif case == "empty":
        data, needles = _write(tmp_path, "e.txt", b"  \n"), ["empty"]
    elif case == "binary":
        data, needles = _write(tmp_path, "b.bin", b"ab\x00\x01" * 100), ["binary"]
    elif case == "not_utf8":
        data, needles = _write(tmp_path, "l.txt", "café ".encode("latin-1") * 100), ["not UTF-8"]
    elif case == "too_short":
        data, needles = _write(tmp_path, "s.txt", b"To be, or not to be."), ["shorter than one context"]
    elif case == "unknown_name":
        data, needles = "no-such-corpus", ["unknown corpus 'no-such-corpus'"]
    elif case == "online":
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
        data, needles = "wikitext-2-raw-v1", ["wikitext-2-raw-v1"]
    elif case == "neg_lr":
        extra, needles = ["--lr", "-1"], ["optim.lr = -1.0", "> 0"]
    elif case == "zero_batch":
        extra, needles = ["--batch-size", "0"], ["data.batch_size = 0"]
    elif case == "unknown_key":
        cfg = tmp_path / "c.toml"
        cfg.write_text("[optim]\nlearning_rate = 0.1\n")
        extra, needles = ["--config", str(cfg)], ["unknown key 'learning_rate'", "allowed:"]
    elif case == "unknown_section":
        cfg = tmp_path / "c.toml"
        cfg.write_text("[training]\nlr = 0.1\n")
        extra, needles = ["--config", str(cfg)], ["unknown section 'training'"]
    elif case == "bad_preset":
        extra, needles = ["--preset", "gpt5"], ["unknown preset 'gpt5'"]
    elif case == "bad_attention":
        extra, needles = ["--attention", "fast"], ["run.attention = 'fast'", "cudnn"]
    elif case == "not_a_float":  # argparse's own errors are one line too (no usage block)
        extra, needles = ["--lr", "abc"], ["argument --lr: invalid float value: 'abc'"]
    elif case == "seed_range":
        extra, needles = ["--seed", str(2**70)], ["argument --seed", "out of range"]
    elif case == "section_not_table":  # `model = 3`, then flags for that section: refused, not silently replaced
        cfg = tmp_path / "c.toml"
        cfg.write_text("model = 3\n")
        extra, needles = ["--config", str(cfg)], ["config section [model] must be a table", "int 3"]
    elif case == "out_of_memory":  # 10^14 × 16 tokens: beyond any address space, so it fails at once everywhere
        extra, needles = ["--batch-size", str(10**14)], ["out of memory", "smaller batch"]
    elif case in ("out_is_a_file", "out_under_a_file"):
        (tmp_path / "f").write_text("x")
        out = tmp_path / "f" if case == "out_is_a_file" else tmp_path / "f" / "run"
        needles = ["run.out_dir", "is not a folder"]
    argv = ["train", "--out", str(out), *TINY, *extra] + (["--data", data] if data else ["--data", "tinyshakespeare"])
    _fails(capsys, argv, *needles)
    assert not out.exists() or out.read_text() == "x"


@pytest.fixture
def run_copy(trained, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    return out


def _latest(run):
    return run / "checkpoints" / json.loads((run / "checkpoints" / "index.json").read_text())["latest"]


def _snapshot(run):
    return {p: p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_damaged_checkpoint(run_copy, damage, capsys, corpus):
    f = _latest(run_copy) / ("model.safetensors" if damage == "corrupt" else "trainer.safetensors")
    b = bytearray(f.read_bytes())
    if damage == "corrupt":
        b[len(b) // 2] ^= 0x55
    else:
        b = b[: len(b) - 100]
    f.write_bytes(bytes(b))
    before = _snapshot(run_copy)
    _fails(capsys, ["train", "--out", str(run_copy), "--resume", "--quiet"], "corrupt checkpoint", f.name)
    if damage == "corrupt":
        _fails(capsys, ["sample", str(run_copy), "--checkpoint", "latest"], "corrupt checkpoint")
    assert _snapshot(run_copy) == before


def test_checkpoint_from_different_config(run_copy, capsys):
    before = _snapshot(run_copy)
    _fails(capsys, ["train", "--out", str(run_copy), "--resume", "--n-layer", "2", "--quiet"],
           "different config", "model.n_layer = 1 there, 2 here")
    assert _snapshot(run_copy) == before


def test_fresh_run_into_existing_run_is_refused(run_copy, capsys, corpus):
    _fails(capsys, ["train", "--data", str(corpus), "--out", str(run_copy), *TINY], "already holds a run", "--resume")


def test_run_dir_locked_by_live_run(run_copy, capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_copy / ".lock").write_text(f"{sleeper.pid}\n")
        before = _snapshot(run_copy)
        _fails(capsys, ["train", "--out", str(run_copy), "--resume", "--quiet"], "in use by a live run",
               str(sleeper.pid))
        assert _snapshot(run_copy) == before
    finally:
        sleeper.kill()
        sleeper.wait()


def test_sample_missing_run_dir(tmp_path, capsys):
    _fails(capsys, ["sample", str(tmp_path / "nothing")], "run directory not found")


def test_resume_needs_the_checkpoints_own_tokenizer(run_copy, capsys):
    tok = run_copy / "tokenizer"
    saved = {p.name: p.read_bytes() for p in tok.iterdir()}
    f = next(p for p in tok.iterdir() if p.suffix == ".json")
    f.write_text(f.read_text().replace('"a"', '"z"', 1) if '"a"' in f.read_text() else f.read_text() + " ")
    before = _snapshot(run_copy)
    _fails(capsys, ["train", "--out", str(run_copy), "--resume", "--max-iters", "6", "--quiet"],
           "does not match the checkpoint", "fingerprint")
    assert _snapshot(run_copy) == before
    shutil.rmtree(tok)
    before = _snapshot(run_copy)
    _fails(capsys, ["train", "--out", str(run_copy), "--resume", "--max-iters", "6", "--quiet"],
           "cannot resume", "tokenizer/ folder is missing")
    assert _snapshot(run_copy) == before and saved


def test_sample_settings_and_device(trained, capsys):
    for argv, needle in ((["--temperature", "nan"], "temperature = nan"), (["--device", "tpu"], "not a device"),
                         (["--seed", "-1"], "out of range"), (["--top-p", "nan"], "top_p = nan")):
        _fails(capsys, ["sample", str(trained), "--max-new-tokens", "3", *argv], needle)
    # a tiny temperature is the greedy limit, not inf − inf = NaN
    outs = []
    for t in ("1e-300", "1e-40", "0"):  # 1e-300 is 0 in float32: clamped to the smallest normal float
        capsys.readouterr()
        assert main(["sample", str(trained), "--prompt", "A", "--max-new-tokens", "20", "--temperature", t]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] == outs[2]
    (trained.parent / "afile").write_text("x")
    _fails(capsys, ["sample", str(trained.parent / "afile")], "is not a directory")


@pytest.mark.parametrize("content", ["[1, 2]", "null", '"text"', "3"])
def test_json_config_that_is_not_an_object(content, run_copy, tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(content)
    _fails(capsys, ["train", "--config", str(cfg), "--out", str(tmp_path / "o"), *TINY], "must hold an object")
    assert not (tmp_path / "o").exists()
    (run_copy / "config.json").write_text(content)  # the saved config that --resume reads
    before = _snapshot(run_copy)
    _fails(capsys, ["train", "--out", str(run_copy), "--resume", "--max-iters", "6", "--quiet"], "must hold an object")
    assert _snapshot(run_copy) == before


def test_resume_on_an_edited_corpus_is_refused(corpus, tmp_path, capsys):
    text = corpus.read_text(encoding="utf-8")
    edited = tmp_path / "corpus.txt"
    edited.write_text(text, encoding="utf-8")
    out = tmp_path / "run"
    assert main(["train", "--data", str(edited), "--out", str(out), *TINY]) == 0
    edited.write_text(text.replace("e", "a"), encoding="utf-8")  # same length, same characters, other text
    before = _snapshot(out)
    _fails(capsys, ["train", "--out", str(out), "--resume", "--max-iters", "6", "--quiet"],
           "not the text this run was trained on")
    assert _snapshot(out) == before
