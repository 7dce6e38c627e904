"""A user-style model factory for the CLI's --model package.module:factory option (used by test_cli)."""

import torch

from fewstep.denoisers import Gaussian


def make():
    return Gaussian(torch.zeros(12), torch.linspace(0.1, 1.0, 12))


def make_rgb8():
    """A Gaussian on 3x8x8 images (for --shape 3,8,8 in image tests)."""
    return Gaussian(torch.zeros(192), torch.linspace(0.1, 1.0, 192))
