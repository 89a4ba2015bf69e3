"""The Ray backend (`--ray-address`): the same points as Ray tasks on a local Ray instance give the same
results as local worker processes. Skipped where ray is not installed (the optional extra mathlens[ray])."""

from __future__ import annotations

import sys

import pytest

from mathlens.errors import MathlensError


def test_missing_ray_is_a_one_line_error(monkeypatch):
    from mathlens.sweep.ray_backend import import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    with pytest.raises(MathlensError, match=r"Ray is not installed: pip install 'mathlens\[ray\]'"):
        import_ray()


def test_ray_tasks_match_local_processes(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (optional extra mathlens[ray])")
    from test_sweep_run import write_sweep

    from mathlens.sweep import load_results, load_sweep, run_sweep

    path = write_sweep(tmp_path, '"model.n_embd" = [16, 32]', name="r")
    spec = load_sweep(path)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        via_ray = run_sweep(spec, out=str(tmp_path / "ray"), ray_address="local", quiet=True)
    finally:
        ray.shutdown()
    assert [r["status"] for r in via_ray.records] == ["done", "done"], [r["error"] for r in via_ray.records]
    local = run_sweep(spec, out=str(tmp_path / "local"), parallel=2, quiet=True)
    # same configs, seeds and one thread per point: the same training, bit for bit on one machine
    assert via_ray.loss.tolist() == pytest.approx(local.loss.tolist(), rel=1e-6)
    assert via_ray.N.tolist() == local.N.tolist()
    assert load_results(tmp_path / "ray" / "r").records == via_ray.records
