"""`mathlens sample RUN_DIR --prompt TEXT`: print text sampled from a trained run."""

from __future__ import annotations

from mathlens.commands import seed


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sample", help="print text sampled from a trained run")
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory written by `mathlens train`")
    p.add_argument("--prompt", default="", help="text to continue (default: start from a newline)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args) -> int:
    from mathlens.train.sampling import load_run, sample_text
    from mathlens.train.setup import resolve_device

    model, tok = load_run(args.run_dir, args.checkpoint, resolve_device(args.device, "--device"))
    print(sample_text(model, tok, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                      args.seed))
    return 0
