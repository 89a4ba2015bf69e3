"""Sweep files and grid expansion: parsing, validation (one-line MathlensError naming point and field),
point ids, results columns; no training here."""

from __future__ import annotations

import json

import pytest

from mathlens.errors import MathlensError
from mathlens.sweep import SweepResults, combinations, count_params, expand, load_sweep, point_id, sweep_from_dict

BASE = {"model": {"n_layer": 1, "n_head": 1, "n_embd": 16}, "data": {"corpus": "x.txt", "block_size": 16,
                                                                     "batch_size": 4},
        "run": {"max_iters": 10, "device": "cpu"}}


def spec(sweep, base=BASE):
    return sweep_from_dict({**json.loads(json.dumps(base)), "sweep": sweep})


def test_grid_is_the_cartesian_product_in_file_order(tmp_path):
    s = spec({"name": "g", "grid": {"model.n_embd": [16, 32], "optim.lr": [1e-3, 3e-3], "run.seed": [0, 1, 2]}})
    combos = combinations(s)
    assert len(combos) == 2 * 2 * 3
    assert combos[0] == {"model.n_embd": 16, "optim.lr": 1e-3, "run.seed": 0}
    assert combos[-1] == {"model.n_embd": 32, "optim.lr": 3e-3, "run.seed": 2}
    assert len({tuple(c.values()) for c in combos}) == 12
    points = expand(s, tmp_path / "g")
    assert points[1].id == "n_embd=16_lr=0.001_seed=1"
    assert points[1].config["model"]["n_embd"] == 16 and points[1].config["run"]["seed"] == 1
    assert points[1].config["optim"]["lr"] == 1e-3
    assert points[1].run_dir == (tmp_path / "g" / points[1].id).resolve()
    # base settings survive, untouched settings keep TrainConfig defaults
    assert points[0].config["data"]["batch_size"] == 4 and points[0].config["optim"]["name"] == "adamw"


def test_ids_are_stable_and_readable():
    labels = {"model.n_embd": "n_embd", "optim.lr": "lr"}
    assert point_id({"model.n_embd": 32, "optim.lr": 0.0003}, labels) == "n_embd=32_lr=0.0003"
    assert point_id({"model.n_embd": 32, "optim.lr": 3e-4}, labels) == "n_embd=32_lr=0.0003"
    assert point_id({"model.n_embd": 32, "optim.lr": 1e-5}, labels) == "n_embd=32_lr=1e-05"
    # unsafe characters never reach the file name; very long ids end in a hash
    assert "/" not in point_id({"data.corpus": "/a/b c.txt"}, {"data.corpus": "corpus"})
    long = point_id({"data.corpus": "x" * 300}, {"data.corpus": "corpus"})
    assert len(long) <= 120 and long != point_id({"data.corpus": "x" * 299 + "y"}, {"data.corpus": "corpus"})


def test_same_field_name_in_two_sections_uses_the_dotted_key(tmp_path):
    s = spec({"name": "g", "grid": {"data.block_size": [16], "model.dropout": [0.0, 0.1]}})
    assert [p.id for p in expand(s, tmp_path)] == ["block_size=16_dropout=0.0", "block_size=16_dropout=0.1"]


def test_explicit_points_cross_the_grid_and_toml_dotted_keys(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("""
[model]
n_layer = 1
[data]
corpus = "x.txt"
block_size = 16
batch_size = 4
[sweep]
name = "p"
[sweep.grid]
run.seed = [0, 1]
[[sweep.points]]
"model.n_embd" = 16
"model.n_head" = 1
[[sweep.points]]
model.n_embd = 32
model.n_head = 2
""")
    s = load_sweep(path)
    assert s.grid == {"run.seed": [0, 1]}
    points = expand(s, tmp_path / "out")
    assert [p.id for p in points] == ["n_embd=16_n_head=1_seed=0", "n_embd=16_n_head=1_seed=1",
                                      "n_embd=32_n_head=2_seed=0", "n_embd=32_n_head=2_seed=1"]
    assert points[3].config["model"] == {"n_layer": 1, "n_embd": 32, "n_head": 2}


@pytest.mark.parametrize("sweep, match", [
    ({"grid": {"model.n_embd": [16]}}, "sweep.name is missing"),
    ({"name": "a/b", "grid": {"model.n_embd": [16]}}, "sweep.name"),
    ({"name": "x"}, "no points"),
    ({"name": "x", "grid": {"model.n_embd": []}}, "model.n_embd is an empty list"),
    ({"name": "x", "grid": {"model.n_embd": 16}}, "a list of values"),
    ({"name": "x", "grid": {"model.n_embd": [16, 16]}}, "repeats a value"),
    ({"name": "x", "grid": {"model.n_emb": [16]}}, "unknown key 'model.n_emb'"),
    ({"name": "x", "grid": {"modle.n_embd": [16]}}, "'modle.n_embd' is invalid"),
    ({"name": "x", "grid": {"n_embd": [16]}}, "'n_embd' is invalid"),
    ({"name": "x", "grid": {"run.out_dir": ["a"]}}, "set by the sweep"),
    ({"name": "x", "grid": {"model.vocab_size": [3]}}, "unknown key 'model.vocab_size'"),
    ({"name": "x", "grid": {"model.n_embd": [[1]]}}, "invalid"),
    ({"name": "x", "points": [{}]}, r"sweep.points\[0\]"),
    ({"name": "x", "points": [{"model.n_embd": 16}], "grid": {"model.n_embd": [8]}}, "also a"),
    ({"name": "x", "parallel": 0, "grid": {"model.n_embd": [16]}}, "sweep.parallel = 0"),
    ({"name": "x", "paralel": 2, "grid": {"model.n_embd": [16]}}, "unknown key 'sweep.paralel'"),
])
def test_bad_sweep_tables_name_the_problem(sweep, match):
    with pytest.raises(MathlensError, match=match):
        spec(sweep)


@pytest.mark.parametrize("grid, match", [
    ({"optim.lr": [1e-3, -1.0]}, r"point lr=-1.0.*optim.*lr"),
    ({"model.n_head": [1, 3]}, r"point n_head=3"),  # 16 is not divisible by 3 heads
    ({"run.max_iters": [10, 0]}, r"point max_iters=0.*max_iters"),
    ({"data.tokenizer": ["char", "words"]}, r"point tokenizer=words.*data.tokenizer"),
    ({"optim.lr": [1e-3, "fast"]}, r"point lr=fast.*lr"),
])
def test_invalid_point_values_name_the_point_and_the_field(tmp_path, grid, match):
    with pytest.raises(MathlensError, match=match):
        expand(spec({"name": "x", "grid": grid}), tmp_path)


def test_bad_base_config_and_bad_files(tmp_path):
    with pytest.raises(MathlensError, match="base config"):
        spec({"name": "x", "grid": {"run.seed": [0]}}, {**BASE, "optim": {"name": "lbfgs"}})
    with pytest.raises(MathlensError, match="unknown section 'modle'"):
        spec({"name": "x", "grid": {"run.seed": [0]}}, {"modle": {}})
    with pytest.raises(MathlensError, match="no \\[sweep\\] table"):
        sweep_from_dict(BASE)
    with pytest.raises(MathlensError, match="not found"):
        load_sweep(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep\nname = 1\n")
    with pytest.raises(MathlensError, match="not valid TOML"):
        load_sweep(bad)


def test_count_params_excludes_embedding_tables():
    # one block, no biases, tied embeddings: attention 4 d² + MLP 8 d² (4d hidden) + norms
    cfg = {"vocab_size": 65, "block_size": 16, "n_layer": 1, "n_head": 1, "n_embd": 16, "bias": False}
    n, total = count_params(cfg)
    d = 16
    assert total - n == 65 * d + 16 * d  # token table + learned position table
    assert 12 * d * d <= n <= 12 * d * d + 10 * d  # weights + a few norm gains


def test_results_columns_and_fit_inputs():
    recs = [{"id": f"p{i}", "values": {"run.seed": i}, "status": "done" if i < 3 else "failed", "N": 10.0 * (i + 1),
             "D": 100, "T": 16, "loss": 3.0 - i / 10} for i in range(4)]
    r = SweepResults("s", recs)
    assert r.N.tolist() == [10.0, 20.0, 30.0]
    assert r.loss.tolist() == pytest.approx([3.0, 2.9, 2.8])
    assert r.column("run.seed").tolist() == [0.0, 1.0, 2.0]
    assert r.column("N", status=None).shape == (4,)
    d = r.to_dict()
    assert (d["done"], d["failed"], d["n_points"]) == (3, 1, 4)


def test_mean_over_seeds_averages_each_setting():
    recs = [{"id": f"w{w}_s{s}", "values": {"model.n_embd": w, "run.seed": s}, "status": "done", "error": None,
             "N": float(w), "D": 64.0, "T": 16, "loss": w / 10 + s} for w in (16, 32) for s in (0, 1, 2)]
    recs.append({**recs[0], "id": "bad", "values": {"model.n_embd": 64, "run.seed": 0}, "status": "failed"})
    m = SweepResults("s", recs).mean_over("run.seed")
    assert [r["values"] for r in m.records] == [{"model.n_embd": 16}, {"model.n_embd": 32}]
    assert m.loss.tolist() == pytest.approx([1.6 + 1.0, 3.2 + 1.0])  # mean of w/10 + {0, 1, 2}
    assert m.N.tolist() == [16.0, 32.0] and [r["n_runs"] for r in m.records] == [3, 3]
    assert m.records[0]["loss_std"] == pytest.approx(1.0)  # std of {0, 1, 2} with ddof 1


def test_fit_chinchilla_on_sweep_columns_recovers_a_known_law():
    E, A, B, a, b = 1.5, 400.0, 600.0, 0.35, 0.3
    recs = [{"id": f"{n}_{d}", "values": {}, "status": "done", "error": None, "N": n, "D": d, "T": 16,
             "loss": E + A / n**a + B / d**b} for n in (1e4, 3e4, 1e5, 3e5) for d in (1e6, 3e6, 1e7, 3e7)]
    fit = SweepResults("law", recs).fit_chinchilla(n_boot=0, n_starts=16)
    # noise-free data from the law itself: the fit returns its parameters (to optimiser tolerance)
    assert (fit.E, fit.alpha, fit.beta) == pytest.approx((E, a, b), rel=2e-2)
    assert fit.n_points == 16


def test_the_shipped_example_sweep_expands_to_its_grid(tmp_path):
    from pathlib import Path

    from mathlens.sweep import expand, load_sweep

    spec = load_sweep(Path(__file__).parents[1] / "examples" / "sweep-scaling.toml")
    points = expand(spec, tmp_path / spec.name)
    assert len(points) == 3 * 3 * 2 and len({p.id for p in points}) == 18
    assert {p.values["model.n_embd"] for p in points} == {32, 64, 128}
