"""Schedule export (issue "Ecosystem", item 3): metadata, NFE interpolation, the cost a host pays for an exported
schedule (counted through fewstep.k), and the refusal to export a feature predictor's per-sample values."""

from __future__ import annotations

import json

import pytest
import torch

import fewstep
import fewstep.k as fk
from fewstep import learned
from fewstep.learned.export import EXPORT_FORMAT, cost_line, export_document, export_schedule
from fewstep.cli import main
from fewstep.schedules import interpolate_schedule, save_schedule

from conftest import make_gmm


class Counting:
    """x0 of N(0, I) data, counting model calls (the k-diffusion call convention)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x / (1 + sigma.reshape(-1, *[1] * (x.ndim - 1)) ** 2)


K_FN = {"euler": fk.sample_euler, "ipndm": fk.sample_ipndm, "heun": fk.sample_heun}


def calls(fn, sigmas, **kw) -> int:
    m = Counting()
    x = torch.randn(2, 3, dtype=torch.float64) * sigmas[0]
    fn(m, x, torch.tensor(sigmas, dtype=torch.float64), disable=True, **kw)
    return m.calls


def _saved(tmp_path, solver: str, nfe: int, afs: bool):
    from fewstep.sampling import steps_for_nfe

    n = steps_for_nfe(solver, nfe, afs)
    sig = fewstep.get_schedule("polynomial", n)
    return save_schedule(tmp_path / f"{solver}{nfe}{afs}.json", sig, method="search", model_id="bed-1",
                         solver=solver, solver_options={}, nfe=nfe, afs=afs), sig


# ------------------------------------------------------------------------------------------------ interpolation


def test_interpolation_exact_at_same_length_monotone_and_keeps_ends():
    sig = fewstep.get_schedule("polynomial", 6)
    assert torch.equal(interpolate_schedule(sig, 6), sig)
    for num in (2, 3, 8, 10, 31):
        out = interpolate_schedule(sig, num)
        assert len(out) == num and out[0] == sig[0] and out[-1] == sig[-1]
        assert bool((out[1:] < out[:-1]).all())
    # log-linear on the normalised index: doubling the points puts the new ones at log-midpoints
    out = interpolate_schedule(sig, 11)
    assert torch.allclose(out[::2], sig, rtol=1e-12)
    assert torch.allclose(out[1::2], (sig[:-1] * sig[1:]).sqrt(), rtol=1e-12)
    with pytest.raises(ValueError, match="num must be an int >= 2"):
        interpolate_schedule(sig, 1)
    with pytest.raises(ValueError, match="positive"):
        interpolate_schedule([80.0, 1.0, 0.0], 4)


# ------------------------------------------------------------------------------------------------- metadata


def test_metadata_keys_present(tmp_path):
    path, sig = _saved(tmp_path, "ipndm", 5, True)
    doc = export_document(path)
    for key in ("format", "model_id", "sigma_max", "sigma_min", "num_sigmas", "nfe", "nfe_counting", "sigmas",
                "k_diffusion_sigmas", "diffusers_sigmas", "host", "source"):
        assert key in doc
    assert doc["format"] == EXPORT_FORMAT and doc["model_id"] == "bed-1" and doc["nfe"] == 5
    assert (doc["sigma_max"], doc["sigma_min"], doc["num_sigmas"]) == (sig[0].item(), sig[-1].item(), len(sig))
    assert {k: doc["nfe_counting"][k] for k in ("solver", "afs", "denoise_to_zero")} == \
        {"solver": "ipndm", "afs": True, "denoise_to_zero": False}
    assert doc["k_diffusion_sigmas"] == sig.tolist() + [0.0] and doc["diffusers_sigmas"] == sig.tolist()
    assert export_schedule(path, "diffusers") == sig.tolist()
    json.dumps(doc, allow_nan=False)
    line = cost_line(doc)
    assert "NFE 5" in line and "afs=True" in line and "cannot pay NFE 5" in line


def test_a_bare_list_is_counted_as_one_call_per_step(tmp_path):
    p = tmp_path / "l.json"
    p.write_text("[80.0, 5.0, 0.5, 0.002, 0.0]")
    doc = export_document(p)
    assert doc["model_id"] is None and doc["nfe"] == 3 and "assumed" in doc["nfe_counting"]


# ------------------------------------------------------------------------------------------------- costs


@pytest.mark.parametrize("solver", ["euler", "ipndm", "heun"])
@pytest.mark.parametrize("afs", [False, True])
def test_stated_costs_are_what_fewstep_k_pays(tmp_path, solver, afs):
    nfe = 5 if solver != "heun" else (7 if afs else 6)
    path, _ = _saved(tmp_path, solver, nfe, afs)
    doc = export_document(path)
    assert doc["nfe"] == nfe
    # the stated way to pay the trained NFE pays it exactly
    assert f"fewstep.k.{K_FN[solver].__name__}" in doc["host"]["to_pay_nfe"]
    assert calls(K_FN[solver], doc["sigmas"], afs=afs) == nfe
    # every row of the table is what a sampler of that family pays
    for row in doc["host"]["model_calls"]:
        fn = fk.sample_heun if row["evals_per_step"] == 2 else (fk.sample_ipndm if row["afs"] else fk.sample_euler)
        sig = doc["k_diffusion_sigmas"] if row["trailing_zero"] else doc["sigmas"]
        assert calls(fn, sig, afs=row["afs"]) == row["model_calls"], row
    # the example: NFE 5 with AFS exported as k-diffusion sigmas costs 7 in 1-call samplers, 13 in Heun
    if solver == "ipndm" and afs:
        ks = export_schedule(path, "k")
        assert calls(fk.sample_euler, ks) == 7 and calls(fk.sample_ipndm, ks) == 7 and calls(fk.sample_heun, ks) == 13
        assert calls(fk.sample_ipndm, ks[:-1], afs=True) == 5


@pytest.mark.parametrize("fn", [fk.sample_euler, fk.sample_heun, fk.sample_dpm_2, fk.sample_ipndm,
                                fk.sample_ipndm_v, fk.sample_deis, fk.sample_dpmpp_2m, fk.sample_unipc])
def test_every_k_sampler_takes_afs_and_it_saves_one_call(fn):
    sig = fewstep.get_schedule("polynomial", 5).tolist()
    assert calls(fn, sig, afs=True) == calls(fn, sig) - 1


def test_nfe_interpolation_pays_the_new_nfe(tmp_path, capsys):
    path, sig = _saved(tmp_path, "ipndm", 5, True)
    for k in (3, 5, 7, 9):
        doc = export_document(path, k)
        assert doc["nfe"] == k and calls(fk.sample_ipndm, doc["sigmas"], afs=True) == k
        assert (doc["sigmas"] == sig.tolist()) == (k == 5)
        assert ("interpolated_from" in doc) == (k != 5)
    heun, _ = _saved(tmp_path, "heun", 7, True)
    assert export_document(heun, 9)["num_sigmas"] == 6
    with pytest.raises(ValueError, match="cannot use exactly nfe=8"):
        export_document(heun, 8)
    assert main(["schedule", "export", str(path), "--nfe", "7", "--format", "k"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)) == 10 and "NFE 7" in err and "interpolated from NFE 5" in err


# -------------------------------------------------------------------------------------------- AMED checkpoints


def _train(features, tmp_path):
    gmm = make_gmm(dim=12, components=4, seed=5)
    pred = learned.train("amed", gmm, shape=(3, 2, 2), num_steps=3, options={"features": features},
                         teacher=learned.Teacher(M=2), budget=learned.Budget(batch=8, total_samples=16),
                         progress=False, model_id="gmm-test")
    return pred, pred.save(tmp_path / f"p_{features}.safetensors")


def test_feature_predictor_export_is_refused(tmp_path, capsys):
    pred, path = _train("adapter", tmp_path)
    for fmt in ("json", "list", "k"):
        with pytest.raises(ValueError, match="per sample"):
            export_schedule(path, fmt)
    doc = export_document(path, schedule_only=True)
    assert "steps" not in doc and doc["sigmas"] == pred.config["sigmas"] and doc["notes"]
    assert main(["schedule", "export", str(path)]) == 2
    assert "per sample" in capsys.readouterr().err


def test_table_checkpoint_export_states_its_cost(tmp_path):
    _, path = _train("none", tmp_path)
    doc = export_document(path)
    assert doc["model_id"] == "gmm-test" and len(doc["steps"]) == 2 and doc["afs"] is True
    m = Counting()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64) * 80
    gmm = make_gmm(dim=12, components=4, seed=5)

    def model(x, s):
        m.calls += 1
        return gmm(x, s)
    fk.sample_learned(model, x, None, predictor=learned.load(path), disable=True)
    assert m.calls == doc["nfe"] == 3 and "fewstep.k.sample_learned(" in doc["host"]["to_pay_nfe"]
    assert "predictor=" in doc["host"]["to_pay_nfe"]
    with pytest.raises(ValueError, match="cannot be interpolated"):
        export_document(path, 7)
    assert "steps" not in export_document(path, 7, schedule_only=True)


# AMED and the plugin are left out: their predictor-free tables do export per-step values (r, c, a), tested in
# test_table_checkpoint_export_states_its_cost; a feature AMED predictor in test_feature_predictor_export_is_refused.
@pytest.mark.parametrize("method", [m for m in learned.METHODS if m not in ("amed", "plugin")])
def test_learned_sampler_exports_its_sigmas_only(tmp_path, capsys, method):
    """A DyWeight / EPD / PAS / GS file: refused without --schedule-only (its parameters act inside fewstep's
    solver); with it, the sigmas and the trained sampler's true NFE (EPD's parallel evaluations counted), paid by
    fk.sample_learned."""
    from learned_helpers import make_sampler, perturb

    cls = learned.METHODS[method]
    # EPD: 2 parallel directions (3 evaluations per step); the residual operator: the samples' 3 channels
    options = {"epd": {"K": 2}, "residual": {"channels": 3, "width": 8}}.get(method)
    n = fewstep.steps_for_nfe(cls.probe_solver(options, None, True), 5, True)
    p = perturb(make_sampler(cls, fewstep.get_schedule("polynomial", n), options=options))
    path = p.save(tmp_path / f"{method}.safetensors")
    assert main(["schedule", "export", str(path)]) == 2
    assert "--schedule-only" in capsys.readouterr().err
    assert main(["schedule", "export", str(path), "--schedule-only", "--format", "list"]) == 0
    out, err = capsys.readouterr()
    assert [float(v) for v in out.split(",")] == p.config["sigmas"]
    assert "NFE 5" in err and "sample_learned" in err
    doc = export_document(path, schedule_only=True, sampler=learned.load(path))
    m = Counting()
    fk.sample_learned(m, torch.randn(2, 3) * 80, predictor=path, disable=True)
    assert doc["nfe"] == m.calls == 5 and doc["source"]["kind"] == "learned_sampler" and "steps" not in doc
