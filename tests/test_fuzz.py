"""Fuzzing (hypothesis) of schedule, solver-option and CLI argument parsing: every input either gives a valid result
that satisfies the invariants or raises ValueError / TypeError (argparse.ArgumentTypeError for the CLI parsers)
with a message. Never another exception type, never a silent bad value."""

from __future__ import annotations

import argparse
import dataclasses
import math
import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fewstep
from fewstep.cli.args import MAX_SEEDS, parse_nfes, parse_seeds, parse_shape, positive_int
from fewstep.schedules import SCHEDULES
from fewstep.solvers import SOLVERS, Solver, get_solver

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

junk = st.one_of(st.none(), st.booleans(), st.text(max_size=4), st.lists(st.integers(), max_size=2),
                 st.complex_numbers(allow_nan=False, allow_infinity=False, max_magnitude=10))
numbers = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                    st.floats(1e-4, 1e4), st.sampled_from([0, 0.002, 1, 80.0, 1e-300, 1e300]))


def _clean_error(e: Exception) -> None:
    assert isinstance(e, (ValueError, TypeError)), f"{type(e).__name__}: {e}"
    assert len(str(e)) > 10, f"uninformative message {str(e)!r}"


def _check_schedule(s: torch.Tensor, n: int | None = None) -> None:
    assert isinstance(s, torch.Tensor) and s.dtype == torch.float64 and s.ndim == 1 and s.numel() >= 2
    assert torch.isfinite(s).all() and (s > 0).all() and (s[1:] < s[:-1]).all()
    if n is not None:
        assert s.numel() == n


@FUZZ
@given(kind=st.sampled_from([k for k in SCHEDULES if k != "file"]),
       num_steps=st.one_of(st.integers(-3, 300), junk, st.floats(allow_nan=True)),
       sigma_min=st.one_of(numbers, junk), sigma_max=st.one_of(numbers, junk), rho=st.one_of(numbers, junk))
def test_get_schedule_arguments(kind, num_steps, sigma_min, sigma_max, rho):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an overflow warning would be a silent problem too
            s = fewstep.get_schedule(kind, num_steps, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)
    except Exception as e:  # noqa: BLE001 - the property is about the exception type
        _clean_error(e)
        return
    _check_schedule(s, num_steps)
    if kind != "discrete":  # the discrete schedule snaps to the model's own timesteps
        assert s[0].item() == float(sigma_max) and s[-1].item() == float(sigma_min)
    else:
        assert s[0] <= float(sigma_max) * 1.5 and s[-1] >= float(sigma_min) / 1.5


@FUZZ
@given(values=st.one_of(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=8),
                        st.lists(st.one_of(st.floats(0.001, 100), junk), max_size=4),
                        st.lists(st.lists(st.floats(0.1, 10), min_size=1, max_size=3), max_size=3), junk),
       as_tensor=st.booleans())
def test_user_schedules(values, as_tensor):
    try:
        arg = torch.tensor(values) if as_tensor else values
    except Exception:  # noqa: BLE001 - not a tensor-able value; the list form is fuzzed as well
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # e.g. complex -> real casts would silently drop a part
            s = fewstep.get_schedule(arg)
    except Exception as e:  # noqa: BLE001
        _clean_error(e)
        return
    _check_schedule(s)
    assert s.tolist() == torch.as_tensor(arg, dtype=torch.float64).tolist()


option_names = st.sampled_from(sorted({f for c in SOLVERS.values() for f in c.options()} | {"order", "bh", "x"}))
option_values = st.one_of(st.integers(-2, 6), st.floats(allow_nan=True, allow_infinity=True), junk,
                          st.sampled_from(["bh1", "bh2", "tab", "rhoab", "logrho", "taylor", "midpoint", "ipndm"]))


@FUZZ
@given(name=st.one_of(st.sampled_from(sorted(SOLVERS)), junk), options=st.dictionaries(option_names, option_values,
                                                                                         max_size=3))
def test_get_solver_options(name, options):
    try:
        solver = get_solver(name, **options)
    except Exception as e:  # noqa: BLE001
        _clean_error(e)
        return
    assert isinstance(solver, Solver) and solver.name == name
    for key, value in options.items():  # accepted options are kept, and are of a sane type
        got = getattr(solver, key)
        if key == "base":
            assert isinstance(got, Solver)
            continue
        assert got == value or (isinstance(value, str) and isinstance(got, Solver))
        if key in ("max_order",):
            assert isinstance(got, int) and not isinstance(got, bool) and got >= 1
        if key in ("r",):
            assert isinstance(got, (int, float)) and not isinstance(got, bool) and 0 < got <= 1
        if key in ("predict_x0", "lower_order_final", "corrector"):
            assert isinstance(got, bool)
    assert dataclasses.is_dataclass(solver)


def _parse(fn, text):
    try:
        return fn(text)
    except argparse.ArgumentTypeError as e:
        assert str(e) and repr(text)[1:-1][:10] in str(e)  # the message quotes the input
        return None


# Ranges are either short or far too long (a range is materialised as a list; accepting 10**7 seeds is slow here).
seed_text = st.one_of(st.text(alphabet="0123456789-, ", max_size=9), st.text(max_size=8),
                      st.builds(lambda a, w: f"{a}-{a + w}", st.integers(-5, 2**64), st.integers(-3, 1000)),
                      st.builds(lambda a, w: f"{a}-{a + w}", st.integers(-5, 2**64), st.integers(10**7, 2**64)))


@FUZZ
@given(text=seed_text)
def test_cli_seed_parser(text):
    seeds = _parse(parse_seeds, text)
    if seeds is None:
        return
    assert seeds and all(isinstance(s, int) and 0 <= s < 2**63 for s in seeds)
    assert len(seeds) <= MAX_SEEDS
    fewstep.noise_for_seeds(seeds[:2], (1,))  # every parsed seed is one noise_for_seeds accepts


@FUZZ
@given(text=st.one_of(st.text(alphabet="0123456789,- x.", max_size=10), st.text(max_size=6)))
def test_cli_shape_and_number_parsers(text):
    shape = _parse(parse_shape, text)
    if shape is not None:
        assert shape and all(isinstance(d, int) and d >= 1 for d in shape)
    nfes = _parse(parse_nfes, text)
    if nfes is not None:
        assert nfes and all(isinstance(n, int) and n >= 1 for n in nfes)
    n = _parse(positive_int, text)
    if n is not None:
        assert isinstance(n, int) and n >= 1


def test_fuzz_properties_can_fail():
    """The checkers above reject what they should (a property that cannot fail is no test)."""
    for bad in (torch.tensor([2.0, 2.0]), torch.tensor([3.0, math.inf]), torch.tensor([2.0, 1.0], dtype=torch.float32)):
        try:
            _check_schedule(bad)
        except AssertionError:
            continue
        raise AssertionError(f"{bad} passed the schedule check")
    try:
        _clean_error(KeyError("x"))
    except AssertionError:
        return
    raise AssertionError("KeyError passed as a clean error")
