"""Top Hessian eigenvalue: mathlens (Lanczos) against PyHessian (power iteration), same model, same batch.

PyHessian is not vendored: pass ``--pyhessian DIR`` pointing at a checkout of amirgholami/PyHessian (the folder
that contains ``pyhessian/``). Model: mathlens.GPT, 4 layers × 128 wide, 4 heads, T = 128, vocab 65, trained for ``--train-steps`` AdamW steps
on the classic corpus (at initialisation the most negative eigenvalue is the largest in magnitude, and power
iteration converges to it, not to λ_max); batch 16 windows of the corpus; math attention (PyHessian needs double
backward). Both tools compute
Hessian-vector products by double backward; we count them, time them and compare the eigenvalues.

    python benchmarks/pyhessian_side_by_side.py --pyhessian /path/to/PyHessian [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from mathlens import GPTConfig
from mathlens.data import CharTokenizer, TokenDataset, load_corpus
from mathlens.probes.curvature import top_eigenvalues
from mathlens.train.fit import train_model


class LogitsOnly(nn.Module):
    """PyHessian calls criterion(model(inputs), targets): expose GPT logits as (B·T, V)."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, x):
        logits, _ = self.gpt(x)
        return logits.reshape(-1, logits.shape[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--pyhessian", required=True)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train-steps", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, args.pyhessian)
    import importlib

    ph = importlib.import_module("pyhessian.hessian")  # the module; the package re-exports the class as .hessian

    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
    corpus = load_corpus(path)
    data = TokenDataset.from_corpus(corpus, CharTokenizer.train(corpus.text), cache=False)
    cfg = GPTConfig(vocab_size=data.vocab_size, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
    model, _ = train_model(cfg, data, steps=args.train_steps, batch_size=16, lr=1e-3, seed=0)
    x, y = data.get_batch("val", args.batch, 128, seed=0)
    n_params = sum(p.numel() for p in model.parameters())

    count = {"n": 0}
    hvp = ph.hessian_vector_product

    def counted(*a, **k):
        count["n"] += 1
        return hvp(*a, **k)

    ph.hessian_vector_product = counted
    crit = nn.CrossEntropyLoss()
    rows = []
    with sdpa_kernel(SDPBackend.MATH):
        for r in range(args.repeats):
            # PyHessian, its defaults (power iteration, maxIter 100, tol 1e-3)
            torch.manual_seed(r)
            count["n"] = 0
            t0 = time.perf_counter()
            H = ph.hessian(LogitsOnly(model), crit, data=(x, y.reshape(-1)), cuda=False)
            lam_ph = H.eigenvalues(maxIter=100, tol=1e-3, top_n=1)[0][0]
            t_ph, n_ph = time.perf_counter() - t0, count["n"]
            del H
            model.zero_grad(set_to_none=True)
            # mathlens, Lanczos to a relative residual of 1e-3 and to 1e-6
            res = {}
            for tol in (1e-3, 1e-6):
                t0 = time.perf_counter()
                e = top_eigenvalues(model, lambda m, b: m(*b)[1], [(x, y)], k=1, seed=r, tol=tol, max_iter=100)
                res[tol] = (float(e.eigenvalues[0]), e.n_matvecs, time.perf_counter() - t0)
            rows.append({"repeat": r, "pyhessian": {"lambda": lam_ph, "hvps": n_ph, "seconds": t_ph},
                         "mathlens_tol1e-3": dict(zip(("lambda", "hvps", "seconds"), res[1e-3])),
                         "mathlens_tol1e-6": dict(zip(("lambda", "hvps", "seconds"), res[1e-6]))})
            print(json.dumps(rows[-1]))
    med = lambda key, f: sorted(r[key][f] for r in rows)[len(rows) // 2]
    ref = med("mathlens_tol1e-6", "lambda")
    summary = {
        "params": n_params, "batch": [args.batch, 128], "threads": args.threads, "train_steps": args.train_steps,
        "lambda_pyhessian": med("pyhessian", "lambda"), "lambda_mathlens_1e-6": ref,
        "relative_difference": abs(med("pyhessian", "lambda") - ref) / abs(ref),
        "hvps_pyhessian": med("pyhessian", "hvps"), "hvps_mathlens_1e-3": med("mathlens_tol1e-3", "hvps"),
        "seconds_pyhessian": med("pyhessian", "seconds"), "seconds_mathlens_1e-3": med("mathlens_tol1e-3", "seconds"),
        "seconds_mathlens_1e-6": med("mathlens_tol1e-6", "seconds"),
    }
    summary["speedup_seconds_at_1e-3"] = summary["seconds_pyhessian"] / summary["seconds_mathlens_1e-3"]
    print(json.dumps(summary, indent=2))
    out = Path(__file__).parent / "out" / "pyhessian_side_by_side.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
