"""Which files each command writes and reads, in one table, and the claim on them that ``fewstep.cli.main`` takes
before a command runs (:func:`fewstep.io.claim_output`): an output that exists is refused without ``--overwrite``
(a ``sample`` folder resumes instead), an output that is one of the command's inputs is refused always, and an
output another run is writing is refused (its ``OUT.lock``), so two runs started together on one output cannot
both exit 0 with one result silently replacing the other."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path
from typing import Callable, Iterator

from ..io import check_output, claim_output

__all__ = ["OUTPUTS", "claimed"]

Out = tuple[str, "str | Path | None", bool]  # (option, path, a folder that resumes)


def _model_inputs(a: argparse.Namespace) -> list:
    return [getattr(a, "model", None), getattr(a, "diffusers", None)]


def _demo(a: argparse.Namespace) -> list[Out]:
    folder = Path(a.out or ("fewstep-out/bed" if a.bed else "fewstep-out/demo"))
    return [("--out", folder / "results.md", False), ("--out", folder / "results.json", False)]


def _tune(a: argparse.Namespace) -> list[Out]:
    return [("--out", a.out or f"tuned_nfe{a.nfe}.json", False), ("--json", a.json, False)]


def _sample(a: argparse.Namespace) -> list[Out]:
    return [("--out", a.out, Path(a.out).suffix.lower() != ".npz")]


def _train(a: argparse.Namespace) -> list[Out]:
    return [("--out", a.out, False)]


def _analyze(a: argparse.Namespace) -> list[Out]:
    out = Path(a.out)
    return [("--out", out.with_suffix(".png"), False), ("--out", out.with_suffix(".csv"), False)]


def _bench(a: argparse.Namespace) -> list[Out]:
    out = Path(a.out or f"fewstep-out/paper/{a.which.replace('paper-', '')}.md")
    return [("--out", out, False)] + ([] if a.render_only else [("--out", out.with_suffix(".json"), False)])


def _eval(a: argparse.Namespace) -> list[Out]:
    return [("--out", a.out, False), ("--save-ref-stats", a.save_ref_stats, False)]


# command -> (its outputs, its input files). Every command that writes is here (tests/test_outputs.py checks).
OUTPUTS: dict[str, tuple[Callable[[argparse.Namespace], list[Out]], Callable[[argparse.Namespace], list]]] = {
    "demo": (_demo, lambda a: []),
    "tune": (_tune, _model_inputs),
    "train": (_train, lambda a: _model_inputs(a) + [a.tuned, a.schedule]),
    "sample": (_sample, lambda a: _model_inputs(a) + [a.predictor, a.init_images, a.schedule]),
    "compare": (lambda a: [("--json", a.json, False)], lambda a: [a.a, a.b]),
    "eval": (_eval, lambda a: [a.images, a.ref]),
    "analyze": (_analyze, lambda a: _model_inputs(a) + [a.predictor, a.schedule]),
    "bench": (_bench, lambda a: []),
    "schedule": (lambda a: [("--out", a.out, False)],
                 lambda a: _model_inputs(a) + [a.source, getattr(a, "init", None)]),
}


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


@contextlib.contextmanager
def claimed(args: argparse.Namespace) -> Iterator[None]:
    """Claim every output of ``args.command`` for the duration of the block (under torchrun, process 0 holds the
    locks for the run; every process checks existence and inputs)."""
    outputs, inputs = OUTPUTS.get(args.command, (lambda a: [], lambda a: []))
    sources = [s for s in inputs(args) if isinstance(s, (str, os.PathLike))]
    overwrite = bool(getattr(args, "overwrite", False))
    with contextlib.ExitStack() as stack:
        for option, path, folder in outputs(args):
            if path is None:
                continue
            if _rank() != 0:  # the locks are process 0's
                check_output(path, overwrite=overwrite, sources=sources, what=option, exists_ok=folder)
                continue
            stack.enter_context(claim_output(path, overwrite=overwrite, sources=sources, what=option,
                                             exists_ok=folder))
        yield

