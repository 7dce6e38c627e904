"""Which noise seeds each job draws, in one place, so that no two jobs share one (tests/test_seeds.py checks).

Seeds are drawn one per sample by :func:`fewstep.noise_for_seeds`. Ranges:

* training: ``seed * 10**9 + 1 + it * batch + k`` for training seed ``seed`` (:func:`training_seeds`);
* schedule search warm-up (GITS): ``seed * 10**9 + 500_000_000 + k``;
* held-out seeds of the training report and of every evaluation bed (:class:`fewstep.experiments.bed.Bed` given a
  count, the paper tables, the demo): ``REPORT + k``; of ``fewstep tune``: ``TUNE + k`` (k < ``SPAN``).

An evaluation beside a training run checks with :func:`check_held_out` that none of its seeds was trained on.

Training seed 0 uses 1, 2, ... up to the number of training samples (at most ``SPAN`` below ``REPORT`` for any
budget we ship), so the report and tuning seeds are held out from every training run.
"""

from __future__ import annotations

__all__ = ["training_seeds", "training_range", "report_seeds", "tune_seeds", "check_held_out", "check_sampler_held_out",
           "REPORT", "TUNE", "SPAN", "GITS_WARMUP"]

REPORT = 800_000_000
TUNE = 900_000_000
SPAN = 10_000_000  # seeds per held-out range
GITS_WARMUP = 500_000_000


def training_seeds(seed: int, it: int, batch: int) -> list[int]:
    """The noise seeds of training iteration ``it``: seed * 10**9 + 1 + it * batch, ..."""
    first = seed * 10**9 + 1 + it * batch
    return list(range(first, first + batch))


def _held_out(start: int, n: int) -> list[int]:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= SPAN:
        raise ValueError(f"the number of held-out seeds must be an int in 1..{SPAN}, got {n!r}")
    return list(range(start, start + n))


def report_seeds(n: int) -> list[int]:
    """``n`` held-out seeds for the training report (RMSE of the trained sampler, its base and the best classic)."""
    return _held_out(REPORT, n)


def tune_seeds(n: int) -> list[int]:
    """``n`` held-out seeds on which ``fewstep tune`` compares configurations."""
    return _held_out(TUNE, n)


def training_range(seed: int, total_samples: int) -> range:
    """Every noise seed a training run with ``seed`` and ``total_samples`` samples draws (all its iterations)."""
    first = seed * 10**9 + 1
    return range(first, first + int(total_samples))


def check_held_out(eval_seeds, seed: int, total_samples: int, what: str = "the evaluation seeds",
                   source: str | None = None) -> None:
    """ValueError when any of ``eval_seeds`` is a training seed of a run with ``seed`` / ``total_samples``."""
    train = training_range(seed, total_samples)
    shared = [s for s in eval_seeds if s in train]
    if shared:
        of = f" of {source}" if source else ""
        raise ValueError(f"{what} overlap the training seeds {train.start}..{train.stop - 1}{of} "
                         f"({len(shared)} shared, first {shared[0]}); evaluate on held-out seeds, e.g. "
                         f"{REPORT}-{REPORT + len(list(eval_seeds)) - 1} (fewstep.seeds.report_seeds)")


def check_sampler_held_out(eval_seeds, sampler, what: str = "the evaluation seeds", source: str | None = None) -> None:
    """:func:`check_held_out` against the training record of a learned ``sampler`` (a no-op when it has none)."""
    rec = (getattr(sampler, "config", None) or {}).get("training") or {}
    seed, total = rec.get("seed"), rec.get("total_samples")
    if isinstance(seed, int) and isinstance(total, int) and not isinstance(seed, bool):
        check_held_out(eval_seeds, seed, total, what, source)
