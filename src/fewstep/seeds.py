"""Which noise seeds each job draws, in one place, so that no two jobs share one (tests/test_seeds.py checks).

Seeds are drawn one per sample by :func:`fewstep.noise_for_seeds`. Ranges:

* training: ``seed * 10**9 + 1 + it * batch + k`` for training seed ``seed`` (:func:`training_seeds`);
* schedule search warm-up (GITS): ``seed * 10**9 + 500_000_000 + k``;
* held-out seeds of the training report: ``REPORT + k``; of ``fewstep tune``: ``TUNE + k`` (k < ``SPAN``).

Training seed 0 uses 1, 2, ... up to the number of training samples (at most ``SPAN`` below ``REPORT`` for any
budget we ship), so the report and tuning seeds are held out from every training run.
"""

from __future__ import annotations

__all__ = ["training_seeds", "report_seeds", "tune_seeds", "REPORT", "TUNE", "SPAN", "GITS_WARMUP"]

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
