"""Training throughput (tokens/s) of mathlens' GPT vs Hugging Face ``GPT2LMHeadModel`` of the same shape.

Both run the same step: forward + cross-entropy, backward, grad-norm clip 1.0, AdamW (nanoGPT decay groups),
on random tokens; the two are timed alternately, ``--repeats`` times, and the median compared.
Shapes: ``cpu`` = the nanogpt-char-cpu preset (4 layers, 128 wide, 4 heads, T=64, B=12, vocab 65);
``gpt2`` = GPT-2 124M (12 layers, 768 wide, T=1024, B=12, vocab 50304), meant for a GPU.

``--loop`` (``cpu`` shape) adds ``mathlens-loop``: the same model trained by ``mathlens.train.train`` itself on the
classic tinyshakespeare file (character level: 65 symbols, the shape's vocabulary), i.e. the whole step loop with
its data sampling from the memory-mapped tokens, schedule, clipping and logging; its tokens/s is the loop's own
figure for the second ``--steps`` steps of a ``2 × --steps`` run (the first are the warm-up), one run per repeat.

    python benchmarks/train_throughput.py --loop                             # CPU, fp32, eager
    python benchmarks/train_throughput.py --shape gpt2 --device cuda --dtype bfloat16 --compile [--nanogpt NANOGPT_DIR]

``--nanogpt DIR`` adds nanoGPT's own ``model.py`` and mathlens' model of the same architecture (no biases, exact
GELU): the configuration of BENCHMARKS.md's nanoGPT figures (446K tokens/s on an H100 at the gpt2 shape), timed
side by side with the rest. The GPT-2 architecture above has biases, so its figure is not comparable with those.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mathlens.models.gpt import GPT, GPTConfig  # noqa: E402
from mathlens.train import OptimConfig, make_optimizer  # noqa: E402
from mathlens.train.config import ATTENTION_BACKENDS  # noqa: E402
from mathlens.train.setup import autocast_for  # noqa: E402

SHAPES = {
    "cpu": {"n_layer": 4, "n_head": 4, "n_embd": 128, "block_size": 64, "batch": 12, "vocab_size": 65},
    "gpt2": {"n_layer": 12, "n_head": 12, "n_embd": 768, "block_size": 1024, "batch": 12, "vocab_size": 50304},
}


def build(kind: str, s: dict, device, nanogpt: Path | None = None):
    """``mathlens`` and ``hf``: the GPT-2 architecture (learned positions, pre-LayerNorm, GELU (tanh), biases, tied
    embeddings). ``nanogpt`` and ``mathlens-nobias``: nanoGPT's ``model.py`` from the checkout ``nanogpt`` and the
    same model in mathlens, both as BENCHMARKS.md measured nanoGPT (no biases, exact GELU)."""
    torch.manual_seed(0)
    if kind.startswith("mathlens"):
        bias = kind == "mathlens"
        cfg = GPTConfig(vocab_size=s["vocab_size"], block_size=s["block_size"], n_layer=s["n_layer"],
                        n_head=s["n_head"], n_embd=s["n_embd"], activation="gelu_tanh" if bias else "gelu", bias=bias,
                        dropout=0.0)
        return GPT(cfg).to(device), lambda m, x: m(x, x)[1]
    if kind == "nanogpt":
        sys.path.insert(0, str(nanogpt))
        from model import GPT as NanoGPT  # nanoGPT's model.py
        from model import GPTConfig as NanoConfig

        cfg = NanoConfig(block_size=s["block_size"], vocab_size=s["vocab_size"], n_layer=s["n_layer"],
                         n_head=s["n_head"], n_embd=s["n_embd"], dropout=0.0, bias=False)
        return NanoGPT(cfg).to(device), lambda m, x: m(x, x)[1]
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=s["vocab_size"], n_positions=s["block_size"], n_embd=s["n_embd"], n_layer=s["n_layer"],
                     n_head=s["n_head"], resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg._attn_implementation = "sdpa"
    return GPT2LMHeadModel(cfg).to(device), lambda m, x: m(input_ids=x, labels=x).loss


def make_step(kind, s, device, dtype, compile_, attention="auto", nanogpt=None):
    model, loss_fn = build(kind, s, device, nanogpt)
    opt = make_optimizer(model, OptimConfig(lr=1e-4), device.type)
    fwd = torch.compile(model) if compile_ else model
    _, amp = autocast_for(dtype, device, attention)  # the train loop's own autocast and SDPA-backend context
    g = torch.Generator(device="cpu").manual_seed(0)

    def step():
        x = torch.randint(s["vocab_size"], (s["batch"], s["block_size"]), generator=g)
        x = x.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else x.to(device)  # as the loop's
        with amp():
            loss = loss_fn(fwd, x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, sum(p.numel() for p in model.parameters())


def timed(step, n: int, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n):
        loss = step()
    float(loss)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def make_loop(s: dict, device, dtype: str, compile_: bool, steps: int, corpus: Path, out: Path):
    """One repeat = one ``train()`` run of ``2 * steps`` steps; returns the seconds ``steps`` steps took in it."""
    from mathlens.train import TrainConfig, read_metrics, train

    runs = iter(range(10**6))

    def run() -> float:
        cfg = TrainConfig.from_dict({
            "model": {"n_layer": s["n_layer"], "n_head": s["n_head"], "n_embd": s["n_embd"], "activation": "gelu_tanh",
                      "bias": True, "dropout": 0.0},
            "data": {"corpus": str(corpus), "block_size": s["block_size"], "batch_size": s["batch"]},
            "optim": {"lr": 1e-4},
            "run": {"max_iters": 2 * steps, "log_interval": steps, "eval_interval": 2 * steps, "eval_at_start": False,
                    "device": str(device), "dtype": dtype, "compile": compile_, "progress": False,
                    "out_dir": str(out / f"loop-{next(runs)}")}})
        train(cfg, quiet=True)
        last = [r for r in read_metrics(cfg.run.out_dir) if r.get("kind") == "train"][-1]
        return steps * cfg.tokens_per_step / last["tokens_per_s"]

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=tuple(SHAPES), default="cpu")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--attention", default="auto", choices=("auto", *ATTENTION_BACKENDS),
                    help="SDPA backend tried first for both models (run.attention; not applied to --loop)")
    ap.add_argument("--loop", action="store_true", help="also time mathlens.train.train's own loop (cpu shape)")
    ap.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "data" / "tinyshakespeare.txt")
    ap.add_argument("--nanogpt", type=Path, default=None,
                    help="a nanoGPT checkout: also time its model.py and mathlens' model of the same architecture "
                         "(no biases, exact GELU), BENCHMARKS.md's nanoGPT configuration")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device, s = torch.device(args.device), SHAPES[args.shape]
    if args.nanogpt and not (args.nanogpt / "model.py").is_file():
        raise SystemExit(f"--nanogpt {args.nanogpt}: no model.py there")
    kinds = ("mathlens", "hf") + (("mathlens-nobias", "nanogpt") if args.nanogpt else ())
    steps = {k: make_step(k, s, device, args.dtype, args.compile, args.attention, args.nanogpt) for k in kinds}
    for step, _ in steps.values():
        timed(step, args.warmup, device)
    times = {k: [] for k in steps}
    loop = None
    if args.loop:
        if args.shape != "cpu":
            raise SystemExit("--loop needs --shape cpu (a character-level corpus gives the cpu shape's 65 symbols)")
        tmp = tempfile.TemporaryDirectory()
        os.environ.setdefault("MATHLENS_CACHE", tmp.name)
        loop = make_loop(s, device, args.dtype, args.compile, args.steps, args.corpus, Path(tmp.name))
        loop()  # warm-up: data preparation and the token cache
        times["mathlens-loop"] = []
    for _ in range(args.repeats):  # alternate so load changes hit all
        for k, (step, _) in steps.items():
            times[k].append(timed(step, args.steps, device))
        if loop:
            times["mathlens-loop"].append(loop())
    tokens = args.steps * s["batch"] * s["block_size"]
    tps = {k: tokens / statistics.median(v) for k, v in times.items()}
    report = {"benchmark": "train_throughput", "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
              "threads": torch.get_num_threads(), "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "shape": s,
              "params": {k: v[1] for k, v in steps.items()}, "tokens_per_s": tps,
              "all_tokens_per_s": {k: [tokens / t for t in v] for k, v in times.items()},
              "ratio_mathlens_over_hf": tps["mathlens"] / tps["hf"]}
    if loop:
        report["ratio_loop_over_hf"] = tps["mathlens-loop"] / tps["hf"]
    if args.nanogpt:
        report["ratio_mathlens_nobias_over_nanogpt"] = tps["mathlens-nobias"] / tps["nanogpt"]
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    tag = "" if args.attention == "auto" else f"_{args.attention}"
    (out / f"train_throughput_{args.shape}_{device.type}{tag}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    print(f"mathlens {tps['mathlens']:,.0f} tok/s, HF GPT2LMHeadModel {tps['hf']:,.0f} tok/s, "
          f"ratio {report['ratio_mathlens_over_hf']:.2f}")
    if args.nanogpt:
        print(f"no biases: mathlens {tps['mathlens-nobias']:,.0f} tok/s, nanoGPT model.py {tps['nanogpt']:,.0f} tok/s, "
              f"ratio {report['ratio_mathlens_nobias_over_nanogpt']:.2f}")
    if loop:
        print(f"mathlens train() loop {tps['mathlens-loop']:,.0f} tok/s, ratio to HF {report['ratio_loop_over_hf']:.2f}")


if __name__ == "__main__":
    main()
