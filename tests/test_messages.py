"""Wrong refusals and misleading messages (issue 26, class 11): fewstep.k takes every predictor fewstep.sample takes
(a hook-feature AMED predictor on a plain network), a guidance-aware table exports its sigmas without a scale and
says why its values cannot be exported, and a schedule / NFE mismatch names the method being trained."""

from __future__ import annotations

import pytest
import torch
from conftest import make_gmm

import fewstep
from fewstep import k, learned
from fewstep.cli import main
from fewstep.denoisers import default_unet
from fewstep.learned.amed import AMEDSampler
from fewstep.learned.export import export_document
from fewstep.learned.guidance import guidance_entry
from fewstep.schedules import get_schedule, save_schedule


@pytest.fixture(scope="module")
def unet_and_predictor():
    net = default_unet().eval().requires_grad_(False)
    pred = learned.train("amed", net, shape=(3, 16, 16), nfe=3, options={"features": "auto"},
                         budget=learned.Budget(batch=4, total_samples=8), teacher=learned.Teacher(M=1))
    assert pred.uses_features and pred.options["features"] == "hook"
    return net, pred


def test_k_takes_a_hook_feature_predictor_on_a_plain_network(unet_and_predictor):
    net, pred = unet_and_predictor
    noise = fewstep.noise_for_seeds(range(2), (3, 16, 16), dtype=torch.float32)
    ref = fewstep.sample(net, noise, predictor=pred)
    sig = torch.tensor(pred.config["sigmas"])
    x = noise * sig[0]
    torch.testing.assert_close(k.sample_learned(net, x, sig, predictor=pred), ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k.sample_amed(net, x, sig, predictor=pred), ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="predictor must be a trained plugin sampler, got amed"):
        k.sample_amed_plugin(net, x, sig, predictor=pred)
    with pytest.raises(ValueError, match="a trained AMED-Plugin fixes its base"):
        k.sample_amed_plugin(net, x, sig, predictor=pred, max_order=3)


def test_a_plain_callable_still_gets_a_clear_refusal(unet_and_predictor):
    net, pred = unet_and_predictor
    sig = torch.tensor(pred.config["sigmas"])
    x = fewstep.noise_for_seeds(range(1), (3, 16, 16), dtype=torch.float32) * sig[0]
    with pytest.raises(ValueError, match="needs hook features"):
        k.sample_learned(lambda a, s: net(a, s), x, sig, predictor=pred)  # no network to hook: said so


def test_guidance_aware_table_exports_sigmas_only_without_a_scale(tmp_path, capsys):
    sig = get_schedule("polynomial", 3)
    table = AMEDSampler(AMEDSampler.make_config(sig, afs=True, options={"features": "none"},
                                                guidance=guidance_entry([2.0, 4.0], 1)))
    assert table.guidance_aware
    path = table.save(tmp_path / "g.safetensors")
    doc = export_document(path, schedule_only=True)
    assert doc["sigmas"] == sig.tolist()
    assert main(["schedule", "export", str(path), "--schedule-only", "--format", "list"]) == 0
    assert "scale" not in capsys.readouterr().err.lower()
    assert main(["schedule", "export", str(path)]) == 2
    err = capsys.readouterr().err
    assert "guidance-aware amed table" in err and "--schedule-only" in err


@pytest.mark.parametrize("method,nfe,cost", [("dyweight", 5, 3), ("pas", 7, 3), ("amed", 3, 7), ("gs", 6, 3)])
def test_schedule_nfe_mismatch_names_the_method(tmp_path, capsys, method, nfe, cost):
    path = save_schedule(tmp_path / "s.json", get_schedule("polynomial", 5))
    assert main(["train", "--model", "factory_model:make", "--shape", "12", "--method", method, "--schedule",
                 str(path), "--nfe", str(nfe), "--no-tune", "--out", str(tmp_path / "p.safetensors")]) == 2
    err = capsys.readouterr().err
    assert f"{cost} model evaluations with {method} and AFS, not nfe={nfe}" in err, err
    others = {"amed", "dyweight", "pas", "gs", "epd"} - {method}
    assert not any(f"with {o}" in err for o in others), err
    with pytest.raises(ValueError, match=f"with {method} and AFS"):
        learned.train(method, make_gmm(dim=12), shape=(12,), nfe=nfe, schedule=get_schedule("polynomial", 5))
