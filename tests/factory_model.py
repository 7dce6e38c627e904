"""A user-style model factory for the CLI's --model package.module:factory option (used by test_cli)."""

import torch

from fewstep.denoisers import Gaussian


def make():
    return Gaussian(torch.zeros(12), torch.linspace(0.1, 1.0, 12))
