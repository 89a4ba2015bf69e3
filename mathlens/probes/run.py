"""`mathlens probe`: run the measurement instruments on one model and write JSON results and figures.

MODEL is a run directory of ``mathlens train``, a local Hugging Face model folder, or ``smollm2``.
Inputs are ``n_sequences`` windows of ``n_tokens`` tokens of a corpus, tokenized with the model's tokenizer.
Results: ``<out>/<probe>.json`` and ``<out>/figures/<probe>-*.png``; nothing half-written (atomic writes).
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from mathlens.errors import MathlensError  # noqa: E402
from mathlens.io import atomic_path, check_output_dir, staged_dir, write_json  # noqa: E402
from mathlens.train.setup import resolve_device  # noqa: E402

PROBES = ("attention", "geometry", "curvature")


def load_model(spec: str, device: str = "cpu"):
    """(model, tokenizer, kind) for a run directory, a local HF folder or ``smollm2``."""
    if spec == "smollm2":
        from mathlens.pretrained import smollm2

        return (*smollm2(device=device), "hf")
    path = Path(spec)
    if not path.exists():
        raise MathlensError(f"model not found: {spec} (a run directory, a Hugging Face model folder, or 'smollm2')")
    from mathlens.train.checkpoint import CKPT_DIR
    from mathlens.train.rundir import METRICS
    from mathlens.train.setup import TOKENIZER_DIR

    is_run = (path / METRICS).exists() or (path / CKPT_DIR).exists() or (path / TOKENIZER_DIR).is_dir()
    if (path / "config.json").is_file() and not is_run:  # a run of `mathlens train` without checkpoints is no HF folder
        from mathlens.pretrained import load_local

        return (*load_local(path, device=device), "hf")
    from mathlens.train.sampling import load_run

    model, tok = load_run(path, "best", device)
    return model, tok, "gpt"


def make_inputs(tokenizer, corpus: str, n_sequences: int, n_tokens: int, seed: int = 0) -> torch.Tensor:
    """(n_sequences, n_tokens) int64 windows at seeded random offsets of the corpus."""
    from mathlens.data import load_corpus

    text = load_corpus(corpus).text
    ids = np.asarray(tokenizer.encode(text[: 400 * n_tokens * n_sequences]), dtype=np.int64)
    if len(ids) <= n_tokens:
        raise MathlensError(f"corpus {corpus!r} is shorter than one window of {n_tokens} tokens")
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(ids) - n_tokens, n_sequences)
    return torch.from_numpy(np.stack([ids[s : s + n_tokens] for s in starts]))


def _lm_loss(kind):
    if kind == "hf":
        return lambda model, batch: model(input_ids=batch, labels=batch).loss
    return lambda model, batch: model(batch[:, :-1], batch[:, 1:])[1]


def _save(fig, out: Path, name: str) -> str:
    path = out / "figures" / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return str(path.relative_to(out))


def probe_attention(model, idx, out: Path, seed: int) -> dict:
    from mathlens.probes.attention import attention_summary
    from mathlens.probes.attention_plots import plot_head_heatmap, plot_layer_profiles

    s = attention_summary(model, idx, seed=seed)
    figs = [_save(plot_layer_profiles(s), out, "attention-profiles"), _save(plot_head_heatmap(s), out, "attention-heads")]
    return {"summary": s.to_dict(), "figures": figs}


def probe_geometry(model, idx, out: Path, seed: int) -> dict:
    from mathlens.probes.capture import capture
    from mathlens.probes.geometry import IntrinsicDimension, neighbourhood_overlap
    from mathlens.probes.trajectories import depth_flow, trajectory_curvature

    states = [s.double() for s in capture(model, idx, what=("resid_post",)).resid_states()]
    flat = [s.reshape(-1, s.shape[-1]) for s in states]
    ids = [IntrinsicDimension("twonn").fit(h).dimension_ for h in flat]
    curv = trajectory_curvature(states)
    overlap = [neighbourhood_overlap(a, b, k=10).overlap for a, b in zip(flat[:-1], flat[1:])]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(ids, "o-"), ax[0].set_xlabel("layer (0 = embedding)"), ax[0].set_ylabel("TwoNN intrinsic dimension")
    ax[1].plot(curv.mean_curvature, "o-"), ax[1].set_xlabel("layer"), ax[1].set_ylabel("mean trajectory curvature (rad)")
    fig.tight_layout()
    return {"intrinsic_dimension": ids, "width": int(states[0].shape[-1]), "curvature": curv.to_dict(),
            "depth_flow": depth_flow(states).to_dict(), "neighbourhood_overlap_consecutive": overlap,
            "figures": [_save(fig, out, "geometry-profiles")]}


def probe_curvature(model, idx, out: Path, seed: int, kind: str) -> dict:
    from mathlens.probes.curvature import hessian_trace, spectral_density, top_eigenvalues

    loss_fn, batches = _lm_loss(kind), [idx]
    top = top_eigenvalues(model, loss_fn, batches, k=3, seed=seed, max_iter=30, tol=1e-4)
    trace = hessian_trace(model, loss_fn, batches, n_samples=30, seed=seed, method="hutch++")
    dens = spectral_density(model, loss_fn, batches, n_probes=2, n_iter=30, seed=seed)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.semilogy(dens.grid, np.maximum(dens.density, 1e-12)), ax.set_xlabel("Hessian eigenvalue"), ax.set_ylabel("density")
    fig.tight_layout()
    return {"top_eigenvalues": top.to_dict(), "trace": trace.to_dict(), "density": dens.to_dict(),
            "figures": [_save(fig, out, "curvature-density")]}


def run_probes(model_spec: str, probes, out: str | Path, corpus: str = "tinyshakespeare", n_sequences: int = 8,
               n_tokens: int = 128, seed: int = 0, device: str = "cpu", log=print) -> dict:
    """Run ``probes`` (subset of PROBES) on MODEL; write ``<out>/<probe>.json``; return {probe: result}."""
    unknown = [p for p in probes if p not in PROBES]
    if unknown or not probes:
        raise MathlensError(f"unknown probe {unknown[0] if unknown else ''!r} (allowed: {', '.join(PROBES)})")
    out = check_output_dir(out)
    device = str(resolve_device(device, "--device"))
    model, tok, kind = load_model(model_spec, device)
    if kind == "gpt":
        n_tokens = min(n_tokens, model.config.block_size + (1 if "curvature" in probes else 0))
    idx = make_inputs(tok, corpus, n_sequences, n_tokens, seed).to(device)
    results = {}
    with staged_dir(out) as stage:  # every probe's files, or none: a probe that fails leaves nothing half-written
        for name in probes:
            t0 = time.time()
            log(f"probe {name} ...")
            x = idx if name == "curvature" or kind == "hf" else idx[:, : model.config.block_size]
            if name == "curvature":
                res = probe_curvature(model, x[: max(1, n_sequences // 4)], stage, seed, kind)
            else:
                res = (probe_attention if name == "attention" else probe_geometry)(model, x, stage, seed)
            res["settings"] = {"model": model_spec, "corpus": corpus, "n_sequences": n_sequences,
                               "n_tokens": n_tokens, "seed": seed, "device": device,
                               "seconds": round(time.time() - t0, 2)}
            write_json(stage / f"{name}.json", res)
            results[name] = res
            log(f"probe {name}: done")
    log(f"wrote {', '.join(f'{out / name}.json' for name in probes)}")
    return results
