"""nanoGPT's own CPU recipe run on this machine, its checkpoint scored on the WHOLE val split — the peer of
``benchmarks/nanogpt_cpu_recipe.py`` (same data, same split, same exact evaluator for both models).

    python benchmarks/nanogpt_side_by_side.py NANOGPT_CHECKOUT [--threads 1] [--ours benchmarks/out/nanogpt-char-cpu]
    python benchmarks/nanogpt_side_by_side.py NANOGPT_CHECKOUT --repeats 3 --threads 0
    python benchmarks/nanogpt_side_by_side.py NANOGPT_CHECKOUT --recipe gpu --repeats 1   # on a GPU

``--repeats R``: time to quality side by side — R alternating pairs of whole processes, nanoGPT's
``train.py`` (README CPU flags) then ``mathlens train --preset nanogpt-char-cpu --eval-iters 20`` (the same
20-batch periodic evaluations; mathlens re-scores its best checkpoint on the whole split at the end, inside
its timed process), each timed from launch to exit; medians and the median of paired ratios. ``--threads 0``
leaves both at torch's default thread count. ``--preset NAME`` runs another mathlens preset in place of
``nanogpt-char-cpu`` (``nanogpt-char-cpu-rope``: the same recipe with rotary positions).

``--recipe gpu``: the GPU recipe instead, on CUDA — nanoGPT's ``config/train_shakespeare_char.py`` as it is
(6 × 384, T = 256, B = 64, 5000 iterations, dropout 0.2, compile, bf16) against the ``nanogpt-char-gpu`` preset
with 200-batch periodic evaluations like nanoGPT's; both scored with contexts of 256 tokens.

``--seeds 1337,1,2``: quality over seeds — for each seed, nanoGPT's ``train.py`` with its hard-coded seed 1337
replaced (a temporary copy, ``train_seed.py``, deleted afterwards) and ``--always_save_checkpoint=True`` (its
checkpoint is then the last step's, not the one its 20-batch estimates chose), and ``mathlens train --preset
nanogpt-char-cpu --eval-iters 20 --seed S``; both models after the last step (2000) scored on the whole val
split by the same exact evaluator; mean, standard deviation and a Welch 95 % interval for the difference of
the means.

Writes nanoGPT's ``data/shakespeare_char/{train,val}.bin, meta.pkl`` from the classic file exactly as its
``prepare.py`` does (sorted characters, first 90 % train), runs ``train.py`` with the README's CPU flags,
then loads ``out-shakespeare-char/ckpt.pt`` (``torch.load(weights_only=True)``: tensors and plain values only).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mathlens.data.dataset import IGNORE_INDEX, TokenDataset  # noqa: E402
from mathlens.train import load_run  # noqa: E402

README_CPU = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
              "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
              "--lr_decay_iters=2000", "--dropout=0.0"]
# recipe -> (nanoGPT's flags over config/train_shakespeare_char.py, mathlens preset, mathlens eval flags, context)
RECIPES = {"cpu": (README_CPU, "nanogpt-char-cpu", ["--eval-iters", "20"], 64),
           "gpu": ([], "nanogpt-char-gpu", ["--eval-iters", "200"], 256)}  # the config file as is: its GPU recipe


def prepare(nanogpt: Path, text: str) -> TokenDataset:
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    n = int(len(text) * 0.9)
    d = nanogpt / "data" / "shakespeare_char"
    ids[:n].tofile(d / "train.bin")
    ids[n:].tofile(d / "val.bin")
    with open(d / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    return TokenDataset(ids, len(chars), n, name="tinyshakespeare (nanoGPT split)")


@torch.no_grad()
def exact_val_loss(forward, data: TokenDataset, block: int = 64, device: str = "cpu") -> float:
    """Σ −log p over every val target once / n, contexts of ``block`` tokens; ``forward(x, y) -> logits (B, T, V)``."""
    total, count = 0.0, 0
    for x, y in data.iter_eval_batches("val", 64, block):  # (split, batch_size, block_size)
        x, y = x.to(device), y.to(device)
        logits = forward(x, y)
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="sum").item()
        count += int((y != IGNORE_INDEX).sum())
    return total / count


def run_nanogpt(nanogpt: Path, env: dict, script: str = "train.py", extra=(), recipe: str = "cpu") -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, script, "config/train_shakespeare_char.py", *RECIPES[recipe][0], *extra],
                          cwd=nanogpt, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(proc.stderr[-2000:])
    return wall, proc.stdout.splitlines()[-3:]


def run_ours(data: str, out: Path, env: dict, seed: int | None = None,
             preset: str = "nanogpt-char-cpu", recipe: str = "cpu") -> tuple[float, dict]:
    t0 = time.perf_counter()
    seed_args = [] if seed is None else ["--seed", str(seed)]
    proc = subprocess.run([sys.executable, "-m", "mathlens", "train", "--preset", preset, "--data", data,
                           "--out", str(out), *RECIPES[recipe][2], "--quiet", *seed_args],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(proc.stderr[-2000:])
    return wall, json.loads((out / "result.json").read_text())


def side_by_side(args, env: dict) -> dict:
    """``args.repeats`` alternating (nanoGPT, mathlens) pairs of whole training processes."""
    import shutil
    import statistics

    nano, ours, runs = [], [], []
    for r in range(args.repeats):
        out = ROOT / "benchmarks" / "out" / "side-by-side-ours"
        shutil.rmtree(out, ignore_errors=True)
        tn, tail = run_nanogpt(args.nanogpt, env, recipe=args.recipe)
        to, res = run_ours(args.data, out, env, preset=args.preset, recipe=args.recipe)
        nano.append(tn)
        ours.append(to)
        runs.append({"repeat": r, "nanogpt_process_s": tn, "nanogpt_log_tail": tail, "mathlens_process_s": to,
                     "mathlens_best_val_loss_exact": res["best_val_loss"], "mathlens_best_step": res["best_step"],
                     "mathlens_time_to_best_s": res["time_to_best"]})
        print(f"pair {r}: nanoGPT {tn:.1f} s, mathlens {to:.1f} s (best {res['best_val_loss']:.4f})", flush=True)
    return {"runs": runs, "median_nanogpt_process_s": statistics.median(nano),
            "median_mathlens_process_s": statistics.median(ours),
            "median_paired_ratio_mathlens_over_nanogpt": statistics.median(o / n for o, n in zip(ours, nano))}


def load_nanogpt(nanogpt: Path, device: str = "cpu"):
    """nanoGPT's best checkpoint ``out-shakespeare-char/ckpt.pt`` as its own model class (weights only)."""
    sys.path.insert(0, str(nanogpt))
    from model import GPT as NanoGPT  # noqa: E402
    from model import GPTConfig as NanoConfig  # noqa: E402

    ck = torch.load(nanogpt / "out-shakespeare-char" / "ckpt.pt", map_location=device, weights_only=True)
    nano = NanoGPT(NanoConfig(**ck["model_args"]))
    nano.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ck["model"].items()})
    return nano.to(device).eval(), ck


def over_seeds(args, data: TokenDataset, env: dict) -> dict:
    """Whole-split val loss of both implementations' best checkpoints, seed by seed (see the module doc)."""
    import shutil
    import statistics

    from scipy import stats

    source = (args.nanogpt / "train.py").read_text()
    if source.count("1337") != 1:
        sys.exit("nanoGPT's train.py no longer has exactly one hard-coded seed 1337; cannot vary the seed")
    rows, ev = [], (RECIPES[args.recipe][3], args.device)
    for seed in args.seeds:
        patched = args.nanogpt / "train_seed.py"
        patched.write_text(source.replace("1337", str(seed)))
        try:
            run_nanogpt(args.nanogpt, env, patched.name, ["--always_save_checkpoint=True"], args.recipe)
        finally:
            patched.unlink()
        nano, ck = load_nanogpt(args.nanogpt, args.device)
        out = ROOT / "benchmarks" / "out" / f"side-by-side-seed{seed}"
        shutil.rmtree(out, ignore_errors=True)
        run_ours(args.data, out, env, seed, args.preset, args.recipe)
        ours, _ = load_run(str(out), "latest", device=args.device)
        rows.append({"seed": seed, "nanogpt_iter": ck["iter_num"], "nanogpt": exact_val_loss(lambda x, y, m=nano: m(x, y)[0], data, *ev),
                     "mathlens": exact_val_loss(lambda x, y, m=ours: m(x)[0], data, *ev)})
        print(f"seed {seed}: nanoGPT {rows[-1]['nanogpt']:.4f}, mathlens {rows[-1]['mathlens']:.4f}", flush=True)
    a, b = [r["mathlens"] for r in rows], [r["nanogpt"] for r in rows]
    summary = {k: {"mean": statistics.mean(v), "sd": statistics.stdev(v) if len(v) > 1 else None}
               for k, v in (("mathlens", a), ("nanogpt", b))}
    if len(rows) > 1:
        ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
        summary["difference_mathlens_minus_nanogpt"] = {"mean": statistics.mean(a) - statistics.mean(b),
                                                        "ci95": [float(ci.low), float(ci.high)]}
    return {"seeds": rows, "summary": summary}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("nanogpt", type=Path)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ours", default=None, help="a mathlens run to score (default: benchmarks/out/PRESET)")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="cpu",
                    help="cpu: the README's CPU flags (default); gpu: config/train_shakespeare_char.py as is")
    ap.add_argument("--preset", default=None,
                    help="mathlens preset (default: the recipe's, nanogpt-char-cpu or nanogpt-char-gpu; "
                         "nanogpt-char-cpu-rope: the same recipe with rotary positions)")
    ap.add_argument("--skip-train", action="store_true", help="score an existing out-shakespeare-char/ckpt.pt")
    ap.add_argument("--repeats", type=int, default=0, help="alternating timed pairs of whole runs (see above)")
    ap.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=None,
                    help="comma-separated seeds: whole-split loss of both over seeds (see above)")
    args = ap.parse_args()
    args.preset = args.preset or RECIPES[args.recipe][1]
    if not args.preset.startswith(RECIPES[args.recipe][1]):
        sys.exit(f"--preset {args.preset} does not follow the {args.recipe} recipe ({RECIPES[args.recipe][1]}*)")
    args.ours = args.ours or str(ROOT / "benchmarks" / "out" / args.preset)
    args.device = "cuda" if args.recipe == "gpu" else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    data = prepare(args.nanogpt, Path(args.data).read_text(encoding="utf-8"))
    report = {"benchmark": "nanogpt_side_by_side", "date": time.strftime("%Y-%m-%d"), "threads": args.threads,
              "mathlens_preset": args.preset, "recipe": args.recipe,
              "load_avg_1min_at_start": os.getloadavg()[0]}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else dict(os.environ)
    if args.seeds:
        report.update(over_seeds(args, data, env))
        out = ROOT / "benchmarks" / "out" / "nanogpt_over_seeds.json"
        out.write_text(json.dumps(report, indent=2))
        print(json.dumps(report["summary"], indent=2))
        return
    if args.repeats:
        report.update(side_by_side(args, env))
        args.ours = str(ROOT / "benchmarks" / "out" / "side-by-side-ours")
    elif not args.skip_train:
        report["nanogpt_wall_s"], report["nanogpt_log_tail"] = run_nanogpt(args.nanogpt, env, recipe=args.recipe)
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        report["nanogpt_cpu_s"] = ru.ru_utime + ru.ru_stime
    ev = (RECIPES[args.recipe][3], args.device)
    nano, ck = load_nanogpt(args.nanogpt, args.device)
    report.update(nanogpt_iter=ck["iter_num"], nanogpt_own_estimate=float(ck["best_val_loss"]),
                  nanogpt_exact_val_loss=exact_val_loss(lambda x, y: nano(x, y)[0], data, *ev))
    if Path(args.ours).is_dir():
        ours, _ = load_run(args.ours, "best", device=args.device)
        report["mathlens_exact_val_loss_same_split"] = exact_val_loss(lambda x, y: ours(x)[0], data, *ev)
    out = ROOT / "benchmarks" / "out" / "nanogpt_side_by_side.json"
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
