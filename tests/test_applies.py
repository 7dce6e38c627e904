"""Every option acts or is refused (issue 26, class 5): fewstep.cli.applies declares which options act in which
mode; an option typed where it would change nothing is an error naming it, exit code 2, before any work."""

from __future__ import annotations

import argparse

import pytest

from fewstep import cli
from fewstep.cli import applies
from fewstep.cli.args import load_model

F = ["--model", "factory_model:make", "--shape", "12"]
REFUSED = [
    (["sample", "--model", "gmm", "--prediction-type", "epsilon"], "--prediction-type applies to --diffusers"),
    (["sample", "--model", "unet", "--beta-schedule", "linear"], "--beta-schedule applies to --diffusers"),
    (["sample", "--model", "digits", "--beta-start", "0.001"], "--beta-start applies to --diffusers"),
    (["train", *F, "--beta-end", "0.02"], "--beta-end applies to --diffusers"),
    (["tune", *F, "--num-train-timesteps", "1000"], "--num-train-timesteps applies to --diffusers"),
    (["sample", *F, "--schedule", "logsnr", "--rho", "3"], "--rho applies to the polynomial"),
    (["sample", *F, "--allow-other-model"], "--allow-other-model applies to --predictor only"),
    (["sample", *F, "--strength", "0.5"], "--strength applies to --init-images only"),
    (["train", *F, "--schedule-lr", "0.1"], "--schedule-lr applies with --learn-schedule only"),
    (["train", *F, "--soft-start-steps", "3"], "--soft-start-steps applies with --soft-start"),
    (["train", *F, "--guidance-degree", "3"], "--guidance-degree applies with --guidance-scales only"),
    (["train", *F, "--no-tune", "--tune-seeds", "8"], "--tune-seeds applies when train tunes first"),
    (["analyze", "predictor", "--predictor", "p.safetensors", "--seeds", "0-3"], "--seeds does not apply"),
    (["analyze", "pca", "--nfe", "5"], "--nfe applies to analyze error / align / span"),
    (["analyze", "error", "--steps", "8"], "--steps applies to analyze pca only"),
    (["analyze", "align", "--points", "6"], "--points applies to analyze align --protocol paper only"),
    (["analyze", "pca", "--afs"], "--afs applies to analyze error"),
    (["eval", "imgs", "--ref", "r.npz", "--pr-k", "3"], "--pr-k applies with --pr only"),
    (["eval", "imgs", "--ref", "r.npz", "--inception", "i.pt"], "--inception applies with --features inception"),
    (["eval", "imgs", "--ref", "r.npz", "--ref-count", "10"], "--ref-count applies to --ref patches:SIZE only"),
    (["demo", "--bed", "--train"], "--train does not apply to demo --bed"),
    (["demo", "--patch", "4"], "--patch applies to demo --bed only"),
    (["bench", "paper-table5", "--render-only", "--seeds", "8"], "--seeds does not apply with --render-only"),
    (["bench", "paper-table5", "--teachers", "paper"], "--teachers applies to paper-table4 only"),
    (["bench", "paper-table4", "--plugin-base", "dpm2"], "--plugin-base applies to paper-table2 only"),
    (["schedule", "export", "s.json", "--solver", "heun"], "--solver applies to schedule search / learn only"),
    (["schedule", "export", "s.json", "--grid", "9"], "--grid applies to schedule search only"),
    (["schedule", "search", "--init", "logsnr"], "--init applies to schedule learn only"),
    (["schedule", "learn", "--schedule-only"], "--schedule-only applies to schedule export only"),
]


@pytest.mark.parametrize("argv,match", REFUSED, ids=[" ".join(a[:3]) for a, _ in REFUSED])
def test_an_option_that_would_not_act_is_refused(argv, match, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = [] if argv[0] in ("analyze", "bench", "demo", "eval", "schedule") else ["--out", "o.npz"]
    if argv[0] == "analyze":
        out = ["--out", "o"]
    assert cli.main(argv + out) == 2
    err = capsys.readouterr().err
    assert f"fewstep {argv[0]}: error: {match}" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_given_reads_typed_options_and_their_abbreviations():
    parser = cli.build_parser()
    assert applies.given(parser, ["sample", "--rho=3", "--allow-o", "--out", "x", "--", "--beta-start"]) == \
        {"rho", "allow_other_model", "out"}
    assert applies.given(parser, ["sample"]) == set()


def test_options_that_act_are_accepted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sample", *F, "--schedule", "time_uniform", "--rho", "2", "--solver", "ipndm", "--nfe", "3",
                     "--seeds", "0-1", "--out", "a.npz"]) == 0
    assert cli.main(["sample", *F, "--rho", "7", "--solver", "euler", "--nfe", "3", "--seeds", "0-1",
                     "--out", "b.npz"]) == 0  # the default schedule (polynomial) takes rho


def test_load_model_refuses_noise_settings_for_every_non_diffusers_model():
    for name in ("gmm", "unet", "digits", "factory_model:make", "weights.safetensors"):
        for key in applies.NOISE:
            ns = argparse.Namespace(**{k: None for k in applies.NOISE})
            setattr(ns, key, "epsilon" if key == "prediction_type" else 1)
            with pytest.raises(ValueError, match=f"--{key.replace('_', '-')} applies to --diffusers models only"):
                load_model(name, (12,) if ":" in name else None, ns)
