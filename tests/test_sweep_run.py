"""Running sweeps end to end on the CPU: parallel worker processes, results, skip/resume, a SIGKILLed sweep,
failed points, and the `mathlens sweep` command's bad-input handling (exit 2, one line)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mathlens.cli import main
from mathlens.errors import MathlensError
from mathlens.sweep import count_params, expand, load_results, load_sweep, run_sweep
from mathlens.sweep.runner import prepare

WORDS = "to be or not that is the question whether tis nobler in mind suffer slings arrows".split()


def write_corpus(path: Path, n_words: int = 3000) -> Path:
    rng = random.Random(0)
    path.write_text(" ".join(rng.choice(WORDS) for _ in range(n_words)) + "\n")
    return path


def write_sweep(tmp: Path, grid: str, max_iters: int = 12, eval_interval: int = 6, name: str = "s",
                parallel: int = 2, corpus: Path | None = None) -> Path:
    corpus = corpus or write_corpus(tmp / "corpus.txt")
    path = tmp / f"{name}.toml"
    path.write_text(f"""
[model]
n_layer = 1
n_head = 1
n_embd = 16
[data]
corpus = "{corpus}"
block_size = 16
batch_size = 4
[optim]
warmup_iters = 2
[run]
max_iters = {max_iters}
eval_interval = {eval_interval}
device = "cpu"
[sweep]
name = "{name}"
out = "{tmp / 'out'}"
parallel = {parallel}
[sweep.grid]
{grid}
""")
    return path


def sessions(run_dir: Path) -> list[str]:
    """The worker sessions logged in a point's worker.log (one '---' header per launch)."""
    text = (run_dir / "worker.log").read_text()
    return [s for s in text.split("--- ")[1:]]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    path = write_sweep(tmp, '"model.n_embd" = [16, 32]\n"run.seed" = [0, 1, 2]')
    spec = load_sweep(path)
    t0 = time.perf_counter()
    results = run_sweep(spec, quiet=True)
    return spec, results, tmp / "out" / "s", time.perf_counter() - t0


def test_sweep_runs_every_point_into_a_normal_run_directory(swept):
    spec, results, sweep_dir, _ = swept
    assert len(results.records) == 6
    assert [r["status"] for r in results.records] == ["done"] * 6, [r["error"] for r in results.records]
    for r in results.records:
        run_dir = sweep_dir / r["id"]
        for f in ("result.json", "config.json", "metrics.jsonl", "point.json", "checkpoints/index.json"):
            assert (run_dir / f).is_file(), f
        res = json.loads((run_dir / "result.json").read_text())
        assert r["loss"] == res["final_val_loss"] and r["steps"] == 12
        # the trainer saw the point's settings
        cfg = json.loads((run_dir / "config.json").read_text())
        assert cfg["model"]["n_embd"] == r["values"]["model.n_embd"] and cfg["run"]["seed"] == r["values"]["run.seed"]
    # D = steps × batch × block; N = non-embedding parameters of the trained model (vocab from the tokenizer)
    vocab = json.loads(next((sweep_dir / results.records[0]["id"] / "checkpoints").glob("step-*/manifest.json"))
                       .read_text())["model_config"]["vocab_size"]
    for width in (16, 32):
        n, _ = count_params({"vocab_size": vocab, "block_size": 16, "n_layer": 1, "n_head": 1, "n_embd": width})
        assert set(results.column("N")[results.column("model.n_embd") == width]) == {n}
    assert set(results.D) == {12 * 4 * 16} and set(results.T) == {16}
    # training lowered the loss below the uniform-guess level log(vocab) at step 0
    assert (results.loss < results.column("init_val_loss")).all()
    # seeds give different runs
    assert len(set(results.loss.tolist())) == 6
    # results files: one line per point, and load_results reads the same records back
    lines = (sweep_dir / "results.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [r["id"] for r in results.records]
    assert json.loads((sweep_dir / "results.json").read_text())["done"] == 6
    loaded = load_results(sweep_dir)
    assert loaded.records == results.records
    assert json.loads((sweep_dir / "sweep.json").read_text())["points"][0]["id"] == "n_embd=16_seed=0"


def test_rerun_skips_finished_points_and_reruns_only_the_removed_one(swept):
    spec, results, sweep_dir, _ = swept
    target = sweep_dir / "n_embd=32_seed=1"
    before = {p.name: (p / "result.json").stat().st_mtime_ns for p in sweep_dir.iterdir() if p.is_dir()}
    old_loss = json.loads((target / "result.json").read_text())["final_val_loss"]
    (target / "result.json").unlink()
    for f in (target / "checkpoints").iterdir():  # no checkpoint: the point trains again from step 0
        if f.is_dir():
            for g in f.iterdir():
                g.unlink()
            f.rmdir()
        else:
            f.unlink()
    again = run_sweep(spec, quiet=True)
    assert [r["status"] for r in again.records] == ["done"] * 6
    for p in sweep_dir.iterdir():
        if p.is_dir():
            changed = (p / "result.json").stat().st_mtime_ns != before[p.name]
            assert changed == (p == target), p.name
            assert len(sessions(p)) == (2 if p == target else 1), p.name
    # same seed, same thread count: the re-run reproduces the loss (bitwise on one machine)
    assert json.loads((target / "result.json").read_text())["final_val_loss"] == pytest.approx(old_loss, rel=1e-6)


def test_a_killed_sweep_resumes_from_checkpoints_and_completes(tmp_path):
    # 600 steps: enough runway that the point cannot finish between its first checkpoint and the kill, even when
    # this process is starved of CPU for a second (60 steps took < 0.5 s and made the test flaky under load)
    path = write_sweep(tmp_path, '"run.seed" = [0, 1]', max_iters=600, eval_interval=100, name="k", parallel=1)
    sweep_dir = tmp_path / "out" / "k"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "mathlens.cli", "sweep", str(path), "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = sweep_dir / "seed=0"
    deadline = time.time() + 240
    while not (first / "checkpoints" / "index.json").exists():  # the step-0 checkpoint: the point has begun
        assert time.time() < deadline and proc.poll() is None, "the sweep did not start training"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    log = (first / "worker.log").read_text()
    worker = int(log.split("(pid ")[1].split(",")[0])
    deadline = time.time() + 20
    while _alive(worker):  # the worker dies with the sweep (PR_SET_PDEATHSIG / parent watcher)
        assert time.time() < deadline, "worker outlived the killed sweep"
        time.sleep(0.1)
    assert not (first / "result.json").exists()
    results = run_sweep(load_sweep(path), quiet=True)
    assert [r["status"] for r in results.records] == ["done"] * 2, [r["error"] for r in results.records]
    assert "resuming" in sessions(first)[-1] and len(sessions(first)) == 2
    assert all(len(sessions(sweep_dir / r["id"])) == 1 for r in results.records[1:])
    metrics = [json.loads(x) for x in (first / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics if m["kind"] == "eval"]
    assert steps == sorted(set(steps)) and steps[-1] == 600  # resumed log: no step twice, reaches the end


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def test_a_failing_point_is_recorded_and_the_command_exits_1(tmp_path, capsys):
    short = tmp_path / "short.txt"
    short.write_text("abc def\n")  # too short for a 16-token context
    path = write_sweep(tmp_path, '"run.seed" = [0]', name="f", corpus=short)
    assert main(["sweep", str(path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "failed" in out and "0/1 done" in out
    rec = json.loads((tmp_path / "out" / "f" / "results.jsonl").read_text())
    assert rec["status"] == "failed" and "split" in rec["error"] and rec["loss"] is None
    assert load_results(tmp_path / "out" / "f").records[0]["error"] == rec["error"]


def test_changed_config_under_the_same_point_id_is_refused(tmp_path):
    path = write_sweep(tmp_path, '"run.seed" = [0]', name="c")
    spec = load_sweep(path)
    sweep_dir = tmp_path / "out" / "c"
    prepare(expand(spec, sweep_dir), sweep_dir)
    spec.base["optim"]["lr"] = 5e-3
    with pytest.raises(MathlensError, match="different config"):
        prepare(expand(spec, sweep_dir), sweep_dir)


@pytest.mark.parametrize("text, match", [
    (None, "config file not found"),
    ("[sweep\nname = 'x'", "not valid TOML"),
    ("[sweep]\nname = 'x'\n[sweep.grid]\n'model.n_emb' = [1]", "unknown key 'model.n_emb'"),
    ("[sweep]\nname = 'x'\n[sweep.grid]\n'optim.lr' = [0.001, -1]", "point lr=-1: optim.lr = -1"),
    ("[sweep]\nname = 'x'\n[sweep.grid]\n'optim.lr' = []", "empty list"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, text, match):
    path = tmp_path / "s.toml"
    if text is not None:
        path.write_text(text + f"\nout = '{tmp_path / 'out'}'\n" if "grid" not in text else text)
    code = main(["sweep", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and match in err, err
    assert not (tmp_path / "out").exists()  # nothing written


def test_parallel_must_be_positive(tmp_path, capsys):
    path = write_sweep(tmp_path, '"run.seed" = [0]')
    assert main(["sweep", str(path), "--parallel", "0"]) == 2
    assert "--parallel = 0" in capsys.readouterr().err
