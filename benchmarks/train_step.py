"""Training-step throughput: mathlens.GPT vs Hugging Face GPT2LMHeadModel of the same shape and weights.

One step = forward + cross-entropy + backward + AdamW step, on synthetic tokens. Both models compute the
loss the same way (F.cross_entropy of the float logits against the next tokens), so the work is identical.
The mathlens model is ``from_hf(hf)`` (same parameters, same count). The two alternate within each repeat
(order swapped every repeat); we report the median tokens/s of each and their ratio.

    python benchmarks/train_step.py                     # CPU: 4 layers, 128 wide, 4 heads, T=128, B=32, fp32
    python benchmarks/train_step.py --device cuda       # GPT-2 124M shape, T=1024, B=12, bf16, compiled, fused AdamW

MFU (nanoGPT/PaLM): tokens/s × (6N + 12·L·H·Q·T) / peak, N = parameters without position embeddings.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from mathlens import from_hf  # noqa: E402
from mathlens.io import write_json  # noqa: E402

SHAPES = {
    "cpu": dict(n_layer=4, n_embd=128, n_head=4, block_size=128, batch=32, vocab=65),
    "cuda": dict(n_layer=12, n_embd=768, n_head=12, block_size=1024, batch=12, vocab=50304),
}


def build(shape: dict, device: str, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    hc = GPT2Config(vocab_size=shape["vocab"], n_positions=shape["block_size"], n_embd=shape["n_embd"],
                    n_layer=shape["n_layer"], n_head=shape["n_head"], activation_function="gelu_new",
                    resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="sdpa",
                    bos_token_id=0, eos_token_id=0)
    hf = GPT2LMHeadModel(hc).to(device)
    ours = from_hf(hf)
    hf.train(), ours.train()
    return ours, hf


def flops_per_token(model, shape: dict) -> float:
    n = model.num_params(non_embedding=True)  # without position embeddings (nanoGPT's N)
    L, H, T = shape["n_layer"], shape["n_head"], shape["block_size"]
    return 6 * n + 12 * L * H * (shape["n_embd"] // H) * T


def make_step(model, is_hf: bool, device: str, lr: float = 3e-4):
    fused = device == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95), fused=fused)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()

    def loss_of(x, y):
        logits = model(input_ids=x).logits if is_hf else model(x)[0]
        return F.cross_entropy(logits.view(-1, logits.shape[-1]).float(), y.view(-1))

    def step(x, y):
        with amp:
            loss = loss_of(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_steps(step, batches, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    for x, y in batches:
        step(x, y)
    sync(device)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=None, help="steps per timed repeat (default: 3 cpu, 20 cuda)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 2 cpu, 10 cuda)")
    ap.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                    help="torch.compile both models (default: on for cuda, off for cpu)")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak for MFU (H100 bf16: 989)")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "train_step.json"))
    args = ap.parse_args(argv)
    dev = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    if dev == "cuda" and not torch.cuda.is_available():
        print("no CUDA device available", file=sys.stderr)
        return 2
    shape = dict(SHAPES[dev])
    if args.batch:
        shape["batch"] = args.batch
    steps = args.steps or (3 if dev == "cpu" else 20)
    warmup = args.warmup if args.warmup is not None else (2 if dev == "cpu" else 10)
    use_compile = args.compile if args.compile is not None else dev == "cuda"
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    ours, hf = build(shape, dev)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in hf.parameters())
    fpt = flops_per_token(ours, shape)
    models = {"mathlens": ours, "hf": hf}
    if use_compile:
        models = {k: torch.compile(m) for k, m in models.items()}
    stepfns = {k: make_step(m, k == "hf", dev) for k, m in models.items()}

    B, T, V = shape["batch"], shape["block_size"], shape["vocab"]
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, V, (steps + 1, B, T + 1), generator=gen).to(dev)
    batches = [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data[:steps]]
    for name, step in stepfns.items():
        t0 = time.perf_counter()
        time_steps(step, [batches[0]] * warmup, dev)
        print(f"warm-up {name}: {warmup} steps in {time.perf_counter() - t0:.1f} s", flush=True)

    tps = {k: [] for k in stepfns}
    for r in range(args.repeats):
        order = list(stepfns) if r % 2 == 0 else list(stepfns)[::-1]
        for name in order:
            tps[name].append(B * T * steps / time_steps(stepfns[name], batches, dev))
        print(f"repeat {r}: " + "  ".join(f"{k} {v[-1]:,.0f} tok/s" for k, v in tps.items()), flush=True)

    med = {k: statistics.median(v) for k, v in tps.items()}
    ratio = med["mathlens"] / med["hf"]
    paired = statistics.median(a / b for a, b in zip(tps["mathlens"], tps["hf"]))
    result = dict(device=dev, machine=platform.node(), torch=torch.__version__, shape=shape, steps=steps,
                  repeats=args.repeats, compile=use_compile, threads=torch.get_num_threads(), dtype="bf16 autocast" if dev == "cuda" else "fp32",
                  params=sum(p.numel() for p in ours.parameters()), flops_per_token=fpt, tokens_per_s=tps,
                  median_tokens_per_s=med, ratio_of_medians=ratio, median_paired_ratio=paired)
    print(f"params {result['params']:,}  shape {shape}  compile={use_compile}  threads={torch.get_num_threads()}")
    for k, v in med.items():
        line = f"{k:9s} median {v:,.0f} tok/s"
        if dev == "cuda":
            mfu = v * fpt / (args.peak_tflops * 1e12)
            result.setdefault("mfu", {})[k] = mfu
            line += f"  MFU {100 * mfu:.1f} %"
        print(line)
    print(f"ratio mathlens / HF: {ratio:.3f} (median of paired ratios {paired:.3f})")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
