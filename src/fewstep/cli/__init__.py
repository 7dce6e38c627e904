"""Command-line interface: ``fewstep demo | tune | train | sample | compare | eval | analyze | bench | schedule``.

One module per command, each with ``add_parser(sub)`` (its options) and ``run(args)``; the shared argument types
and ``load_model`` are in :mod:`fewstep.cli.args`. The library does the work: a command only parses, calls,
prints and writes."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .._version import VERSION
from . import analyze, applies, bench, compare, demo, outputs, sample, schedule, train, tune
from . import eval as eval_
from .args import load_model

__all__ = ["main", "load_model", "build_parser", "COMMANDS"]

COMMANDS = (demo, tune, train, sample, compare, eval_, analyze, bench, schedule)  # in the order of ``fewstep --help``


def build_parser() -> argparse.ArgumentParser:
    """The ``fewstep`` parser: one subparser per command module."""
    p = argparse.ArgumentParser(prog="fewstep", description="Few-step ODE sampling of diffusion models (AMED).")
    p.add_argument("--version", action="version", version=f"fewstep {VERSION}")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``fewstep ARGV``; bad input (ValueError, TypeError, OSError) is one line on stderr and exit status 2."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    try:
        applies.check(args, applies.given(parser, argv), parser)  # an option that would not act is refused
        if getattr(args, "preflight", None) is not None:  # e.g. a missing extra: said before any output is claimed
            args.preflight(args)
        with outputs.claimed(args):  # existing outputs, outputs that are inputs, concurrent runs: refused
            return int(args.func(args))
    except (ValueError, TypeError, OSError) as e:
        print(f"fewstep {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fewstep {args.command}: interrupted", file=sys.stderr)
        return 130
