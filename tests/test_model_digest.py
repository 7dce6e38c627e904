"""Model identity by weights: fewstep.denoisers.model_digest and the ids of --model package.module:factory."""

from __future__ import annotations

import copy

import pytest
import torch

from fewstep.cli.args import load_model
from fewstep.denoisers import Gaussian, VPModel, model_digest
from fewstep.schedules import ddpm_alphas_cumprod


class Net(torch.nn.Module):
    def __init__(self, offset: float = 0.0) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
        self.out = torch.nn.Conv2d(2, 1, 1)
        self.register_buffer("scale", torch.ones(1))
        with torch.no_grad():  # fixed weights, no RNG: the digest below is the same on every machine
            for i, p in enumerate(self.parameters()):
                p.copy_(((torch.arange(p.numel()) % 7 - 3) * 0.25 * (i + 1)).reshape(p.shape) + offset)  # exact

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.out(self.conv(x)) * self.scale


# Factories for load_model("test_model_digest:NAME", ...).
def ddpm_a():
    return VPModel(Net(), prediction="eps", alphas_cumprod=ddpm_alphas_cumprod())


def ddpm_a_again():
    return VPModel(Net(), prediction="eps", alphas_cumprod=ddpm_alphas_cumprod())


def ddpm_b():
    return VPModel(Net(offset=1e-3), prediction="eps", alphas_cumprod=ddpm_alphas_cumprod())


def bare_module():
    return Net()


def named():
    den = ddpm_a()
    den.model_id = "my-ddpm-v2"
    return den


def analytic():
    return Gaussian(torch.zeros(9), torch.linspace(0.1, 1.0, 9))


NET_DIGEST = "cd8974130e47"  # model_digest(Net()) in every process and on every machine: pins the format


def _id(name: str) -> str:
    return load_model(f"test_model_digest:{name}", (1, 4, 4))[2]


def test_digest_is_short_deterministic_hex():
    d = model_digest(Net())
    assert len(d) == 12 and int(d, 16) >= 0
    assert d == model_digest(Net()) == model_digest(copy.deepcopy(Net()))
    assert d == NET_DIGEST


def test_digest_sees_parameters_buffers_dtypes_and_finds_wrapped_networks():
    net = Net()
    base = model_digest(net)
    assert model_digest(ddpm_a()) == base  # an adapter: its .model
    assert model_digest(VPModel(lambda x, t: net(x, t), alphas_cumprod=ddpm_alphas_cumprod())) == base  # a lambda
    other = Net()
    other.scale.fill_(2.0)  # a buffer
    assert model_digest(other) != base
    other = Net()
    with torch.no_grad():
        other.out.bias.add_(1e-6)  # one parameter, slightly
    assert model_digest(other) != base
    assert model_digest(Net().double()) != base  # the dtype
    assert model_digest(analytic()) is None and model_digest(lambda x, s: x) is None


def test_digest_looks_through_a_wrapper_module_holding_an_adapter():
    from fewstep.denoisers import Guided

    class Labelled:  # a class-conditional adapter-like object (not a module) around a network
        null_label = 3

        def __init__(self, net):
            self.model = net

        def __call__(self, x, sigma, class_labels=None):
            return x

    a, b = Guided(Labelled(Net()), 1, 2.0), Guided(Labelled(Net(offset=1.0)), 1, 2.0)
    assert model_digest(a) != model_digest(b)  # Guided's own state dict is empty: the weights come from inside


def test_factory_ids_follow_the_weights():
    a, a2, b = _id("ddpm_a"), _id("ddpm_a_again"), _id("ddpm_b")
    assert a == f"test_model_digest:ddpm_a@{NET_DIGEST}"
    assert a2 == f"test_model_digest:ddpm_a_again@{NET_DIGEST}"  # same weights, same digest
    assert b.startswith("test_model_digest:ddpm_b@") and b.split("@")[1] != NET_DIGEST  # other weights
    assert _id("ddpm_a") == a  # deterministic
    assert _id("bare_module") == f"test_model_digest:bare_module@{NET_DIGEST}"


def test_factory_own_model_id_wins_and_analytic_models_keep_the_name():
    assert _id("named") == "my-ddpm-v2"
    assert load_model("test_model_digest:analytic", (9,))[2] == "test_model_digest:analytic"


@pytest.mark.parametrize("name", ["ddpm_a", "ddpm_b"])
def test_sample_records_the_digest_id(tmp_path, name):
    from fewstep.cli import main

    out = tmp_path / "imgs"
    assert main(["sample", "--model", f"test_model_digest:{name}", "--shape", "1,4,4", "--nfe", "2", "--seeds", "0",
                 "--threads", "1", "--format", "npy", "--out", str(out)]) == 0
    text = "".join(p.read_text() for p in out.rglob("*.json"))
    assert f"test_model_digest:{name}@" in text
