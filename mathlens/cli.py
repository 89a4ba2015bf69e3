"""`mathlens` command line: `mathlens train | sample | probe | sweep | validate | report`.

Each subcommand is a module in ``mathlens/commands/`` exposing ``add_parser(subparsers)`` (which
registers the subcommand and sets ``func``) and is discovered here. User errors
(:class:`MathlensError`) print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import re
import sys

from mathlens import __version__
from mathlens.errors import MathlensError


class _Parser(argparse.ArgumentParser):
    """An argument error is one line and exit code 2, like every other bad input (argparse would print the whole
    usage block first); ``mathlens CMD --help`` still shows the usage. Subcommand parsers are of this class too."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mathlens", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mathlens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import mathlens.commands as commands

    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"mathlens.commands.{info.name}")
        module.add_parser(sub)
    return parser



def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # an argument error (one line, printed), --help or --version: their exit code
        return e.code if isinstance(e.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MathlensError as e:
        print(f"mathlens {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the command cannot read or write (a file where a folder is expected, …)
        where = f": {e.filename}" if e.filename else ""
        print(f"mathlens {args.command}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:  # PyTorch's allocators raise RuntimeError subclasses
        if not isinstance(e, MemoryError) and type(e).__name__ != "OutOfMemoryError" and "allocate memory" not in str(e):
            raise
        asked = re.search(r"tried to allocate ([0-9.]+ ?[A-Za-z]*)", str(e))
        print(f"mathlens {args.command}: error: out of memory{f' (tried to allocate {asked[1]})' if asked else ''}; "
              "use a smaller batch, context or model", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mathlens {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
