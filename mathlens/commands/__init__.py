"""One module per `mathlens` subcommand; each defines `add_parser(subparsers)`."""

import argparse

from mathlens.config import MAX_SEED


def seed(text: str) -> int:
    """argparse type of ``--seed``: an integer in [0, 2**32 − 1] (an argument error otherwise, one line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid seed {text!r} (an integer from 0 to {MAX_SEED})") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed {value} is out of range (0 to {MAX_SEED})")
    return value
