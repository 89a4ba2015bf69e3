"""`mathlens` command line: `mathlens train | sample | probe | sweep | validate | report`.

Each subcommand is a module in ``mathlens/commands/`` exposing ``add_parser(subparsers)`` (which
registers the subcommand and sets ``func``) and is discovered here. User errors
(:class:`MathlensError`) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from mathlens import __version__
from mathlens.errors import MathlensError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mathlens", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mathlens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import mathlens.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"mathlens.commands.{info.name}")
        module.add_parser(sub)
    return parser



def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MathlensError as e:
        print(f"mathlens {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mathlens {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
