"""Issue 26, class 1: the guidance scale, class labels and sample shape a learned sampler was trained under are
recorded in its checkpoint and its resume fingerprint; sampling or resuming under others is refused, naming the
setting. Checkpoints without the record (written before) still load and sample (tests/test_legacy_checkpoints.py)."""

from __future__ import annotations

import pytest
import torch

import fewstep
from fewstep import learned
from fewstep.denoisers import Guided
from fewstep.denoisers.analytic import GaussianMixture
from fewstep.learned import METHODS, CheckpointError
from fewstep.learned.dyweight import DyWeightSampler
from learned_helpers import make_sampler

torch.set_num_threads(1)

D = 4
KW = dict(shape=(D,), nfe=3, teacher=learned.Teacher(M=1), budget=learned.Budget(batch=6, total_samples=6),
          progress=False)


class CondGMM:
    """D(x, sigma, y): class y a Gaussian, the null class (3) their mixture."""

    null_label = 3

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(1)
        means = 2 * torch.randn(3, 1, D, generator=g, dtype=torch.float64)
        cov = torch.eye(D, dtype=torch.float64)[None] * 0.5
        self.classes = [GaussianMixture(means[c], cov) for c in range(3)]
        self.null = GaussianMixture(means.reshape(3, D), cov.repeat(3, 1, 1))

    def __call__(self, x, sigma, labels=None):  # noqa: ANN001, ANN204
        s = torch.as_tensor(sigma, dtype=x.dtype).reshape(-1).expand(x.shape[0])
        if labels is None:
            return self.null(x, s)
        out = torch.empty_like(x)
        for c in labels.unique().tolist():
            i = labels == c
            out[i] = (self.null if c == self.null_label else self.classes[c])(x[i], s[i])
        return out


class Unconditional:
    """The class-conditional model called without labels (as the CLI does without --class)."""

    null_label = 3

    def __init__(self, cond: CondGMM) -> None:
        self.cond = cond

    def __call__(self, x, sigma):  # noqa: ANN001, ANN204
        return self.cond(x, sigma)


@pytest.fixture(scope="module")
def cond() -> CondGMM:
    return CondGMM()


@pytest.fixture(scope="module")
def trained(cond, tmp_path_factory):
    """DyWeight trained at w = 2 for class 1, saved and loaded back."""
    p = learned.train("dyweight", Guided(cond, 1, 2.0), **KW)
    return learned.load(p.save(tmp_path_factory.mktemp("c") / "w2c1.safetensors"))


def noise(shape=(D,)):  # noqa: ANN001, ANN201
    return fewstep.noise_for_seeds(range(3), shape, dtype=torch.float64)


def test_training_settings_are_recorded(trained, cond):
    rec = trained.config["training"]
    assert rec["conditioning"] == {"guidance": 2.0, "class_labels": [1]} and rec["shape"] == [D]
    mixed = learned.train("dyweight", Guided(cond, torch.arange(3), 4.0), **KW)
    assert mixed.config["training"]["conditioning"] == {"guidance": 4.0, "class_labels": [0, 1, 2]}
    aware = learned.train("dyweight", Guided(cond, 2, 1.0), guidance=[1.0, 3.0], **KW)
    assert aware.config["training"]["conditioning"] == {"guidance": None, "class_labels": [2]}
    plain = learned.train("dyweight", Unconditional(cond), **KW)
    assert plain.config["training"]["conditioning"] == {"guidance": None, "class_labels": None}


def test_sampling_under_the_trained_settings_works(trained, cond):
    x = fewstep.sample(Guided(cond, 1, 2.0), noise(), predictor=trained)
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("den,match", [
    (lambda c: Guided(c, 1, 8.0), r"trained at guidance scale 2, not 8"),
    (lambda c: Guided(c, 1, 2.5), r"trained at guidance scale 2, not 2.5"),
    (lambda c: Guided(c, 2, 2.0), r"trained for class\(es\) 1, not 2"),
    (lambda c: Guided(c, torch.tensor([1, 2]), 2.0), r"trained for class\(es\) 1, not 2"),
    (lambda c: Guided(c, 0, 8.0), r"class\(es\) 1, not 0"),  # the example: another class at another scale
    (lambda c: Unconditional(c), r"model without classes"),
])
def test_sampling_under_other_settings_is_refused(trained, cond, den, match):
    with pytest.raises(ValueError, match=match):
        fewstep.sample(den(cond), noise(), predictor=trained)


def test_another_shape_is_refused(trained, cond):
    with pytest.raises(ValueError, match=r"trained on samples of shape \(4,\), not \(2, 2\)"):
        fewstep.sample(Guided(cond, 1, 2.0), noise((2, 2)), predictor=trained)
    with pytest.raises(ValueError, match=r"shape \(4,\), not \(8,\)"):
        fewstep.k.sample_learned(lambda x, s: x, noise((8,)) * 80, predictor=trained)


def test_a_subset_of_the_trained_classes_is_accepted(cond):
    p = learned.train("dyweight", Guided(cond, torch.arange(3), 3.0), **KW)
    fewstep.sample(Guided(cond, 2, 3.0), noise(), predictor=p)
    with pytest.raises(ValueError, match="guidance scale 3, not 1"):
        fewstep.sample(Guided(cond, 2, 1.0), noise(), predictor=p)


def test_unguided_sampler_refuses_guidance(cond):
    p = learned.train("dyweight", Unconditional(cond), **KW)
    fewstep.sample(Unconditional(cond), noise(), predictor=p)
    with pytest.raises(ValueError, match=r"without classes or guidance, but the denoiser guides towards class\(es\) 1"):
        fewstep.sample(Guided(cond, 1, 2.0), noise(), predictor=p)


def test_guidance_aware_sampler_refuses_scales_outside_its_range(cond):
    p = learned.train("dyweight", Guided(cond, 0, 1.0), guidance=[1.0, 3.0], **KW)
    for w in (1.0, 2.2, 3.0):
        fewstep.sample(Guided(cond, 0, w), noise(), predictor=p)
    for w in (0.5, 3.5, 8.0):
        with pytest.raises(ValueError, match="outside the range"):
            fewstep.sample(Guided(cond, 0, w), noise(), predictor=p)
    with pytest.raises(ValueError, match=r"class\(es\) 0, not 1"):
        fewstep.sample(Guided(cond, 1, 2.0), noise(), predictor=p)


def test_checkpoint_without_the_record_is_not_checked(trained, cond):
    cfg = dict(trained.config, training={k: v for k, v in trained.config["training"].items() if k != "conditioning"})
    old = DyWeightSampler(cfg)
    old.load_state_dict(trained.state_dict())
    fewstep.sample(Guided(cond, 2, 8.0), noise(), predictor=old)  # nothing recorded: nothing to check against


@pytest.mark.parametrize("bad", [{"guidance": "2", "class_labels": None}, {"guidance": 2.0},
                                 {"guidance": None, "class_labels": [True]}, {"guidance": None, "class_labels": []},
                                 {"guidance": float("inf"), "class_labels": None}, [2.0, [1]]])
def test_forged_record_is_refused(bad):
    cls = METHODS["dyweight"]
    with pytest.raises(CheckpointError, match="training.conditioning"):
        make_sampler(cls, training={"shape": [D], "conditioning": bad})
    with pytest.raises(CheckpointError, match="training.shape"):
        make_sampler(cls, training={"shape": [D, "4"]})


def test_resume_under_other_settings_is_refused_naming_them(cond, tmp_path, monkeypatch):
    out, state = tmp_path / "p.safetensors", tmp_path / "p.state"
    ck = learned.Checkpointing(out=out, state=state, every=1)

    def disk_full(self, path):  # noqa: ANN001, ANN202
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as mp:  # the final save fails: the training state is kept, as after a kill
        mp.setattr(DyWeightSampler, "save", disk_full)
        with pytest.raises(OSError):
            learned.train("dyweight", Guided(cond, 1, 2.0), checkpoint=ck, **KW)
    assert state.exists()
    resume = learned.Checkpointing(out=out, state=state, every=1, resume=True)
    for den, shape, match in [(Guided(cond, 1, 8.0), (D,), r"training\.conditioning\.guidance: 2\.0 there, 8\.0 now"),
                              (Guided(cond, 2, 2.0), (D,), r"training\.conditioning\.class_labels: \[1\] there, \[2\] now"),
                              (Unconditional(cond), (D,), r"training\.conditioning\.guidance: 2\.0 there, null now"),
                              (Guided(cond, 1, 2.0), (2, 2), r"training\.shape: \[4\] there, \[2, 2\] now")]:
        with pytest.raises(CheckpointError, match=match):
            learned.train("dyweight", den, checkpoint=resume, **dict(KW, shape=shape))
    p = learned.train("dyweight", Guided(cond, 1, 2.0), checkpoint=resume, **KW)  # the same settings resume
    assert out.exists() and not state.exists() and p.config["training"]["conditioning"]["guidance"] == 2.0


def test_cli_refuses_another_class_and_scale(tmp_path, capsys):
    from fewstep.cli import main

    out = tmp_path / "d.safetensors"
    assert main(["train", "--model", "digits", "--method", "dyweight", "--nfe", "3", "--guidance", "2", "--class",
                 "3", "--total-samples", "4", "--batch", "4", "--M", "1", "--no-tune", "--report-seeds", "1",
                 "--out", str(out)]) == 0
    capsys.readouterr()
    for extra, match in [(["--class", "7", "--guidance", "8"], "class(es) 3, not 7"),
                         (["--class", "3", "--guidance", "8"], "guidance scale 2, not 8"),
                         ([], "model without classes")]:
        o = tmp_path / f"s{len(extra)}{extra[-1] if extra else ''}.npz"
        assert main(["sample", "--model", "digits", "--predictor", str(out), "--seeds", "0-1", *extra,
                     "--out", str(o)]) == 2
        err = capsys.readouterr().err
        assert "fewstep sample: error:" in err and match in err and not o.exists()
    assert main(["sample", "--model", "digits", "--predictor", str(out), "--seeds", "0-1", "--class", "3",
                 "--guidance", "2", "--out", str(tmp_path / "ok.npz")]) == 0
