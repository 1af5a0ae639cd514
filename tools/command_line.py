"""What every `agent` subcommand's `main(argv, prog)` does first: build its parser and read its arguments."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence


def parse_arguments(
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    epilog: str | None = None,
) -> argparse.Namespace:
    """The subcommand's arguments; `--help` and usage errors exit as argparse does (0 and 2)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return parser.parse_args(argv)
