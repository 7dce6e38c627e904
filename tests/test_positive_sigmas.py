"""The model is never called at sigma <= 0: the model call refuses it, and every learned time parameterisation
keeps the sigmas it asks for positive by construction, whatever its parameters (a forged or diverged file)."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep import learned
from learned_helpers import SIG7, make_sampler


class Watch:
    """The mixture, remembering the smallest sigma it is called at."""

    def __init__(self, inner):
        self.inner, self.smallest = inner, float("inf")

    def __call__(self, x, sigma):
        self.smallest = min(self.smallest, float(torch.as_tensor(sigma).min()))
        return self.inner(x, sigma)


@pytest.mark.parametrize("sigma", [0.0, -13.7])
def test_the_model_call_refuses_non_positive_sigmas(gmm4, sigma):
    call = fewstep.ModelCall(gmm4)
    with pytest.raises(ValueError, match="sigma must be positive"):
        call(torch.zeros(2, 4, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64))
    per_sample = torch.tensor([1.0, sigma], dtype=torch.float64)
    with pytest.raises(ValueError, match="sigma must be positive"):
        call(torch.zeros(2, 4, dtype=torch.float64), per_sample)
    assert call.nfe == 0


def _forged(method, options=None, **values):
    p = make_sampler(learned.METHODS[method], options=options, time_shift=True)
    with torch.no_grad():
        for name, v in values.items():
            getattr(p, name).fill_(v)
    return p


@pytest.mark.parametrize("method,values", [
    ("pas", {"coords": 50.0}),  # the along-direction coordinate carries the time far below zero without a floor
    ("pas", {"coords": -50.0}),
    ("dyweight", {"dw": 40.0, "log_s": -1000.0}),
    ("epd", {"log_a": -1000.0, "log_c": 5.0}),
    ("gs", {"xi": -1000.0}),
    ("dyweight", {"xi": 1000.0}),
])
def test_learned_times_stay_positive_whatever_the_parameters(gmm4, noise16, method, values):
    watch = Watch(gmm4)
    p = _forged(method, **values)
    try:
        fewstep.sample(watch, noise16, predictor=p)
    except fewstep.NonFiniteError:
        pass  # a diverged sample is a refusal; what must not happen is a call at sigma <= 0
    assert watch.smallest > 0


def test_neutral_pas_is_still_ipndm_bitwise(gmm4, noise16):
    p = make_sampler(learned.METHODS["pas"], afs=False)
    want = fewstep.sample(gmm4, noise16, SIG7, "ipndm", max_order=4)
    assert torch.equal(fewstep.sample(gmm4, noise16, predictor=p), want)
