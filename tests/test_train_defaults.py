"""fewstep train's defaults: the method from fewstep.defaults.METHOD_RULES (said), the residual operator's cost line,
the teacher cache (--cache-dir, --no-cache), and --student retired."""

from __future__ import annotations

import json
import re

import pytest

from fewstep import defaults, learned
from fewstep.cli import main

TINY = ["--model", "gmm", "--no-tune", "--nfe", "5", "--total-samples", "16", "--batch", "8", "--M", "1",
        "--report-seeds", "2", "--threads", "1"]


def test_default_method_table():
    assert defaults.default_method(5).method == "residual" and defaults.default_method(3).method == "residual"
    assert defaults.default_method(5, guided=True).method == "residual"
    assert defaults.default_method(None).method == "residual"
    for _, _, choice in defaults.METHOD_RULES:
        assert choice.method in learned.METHODS and choice.why
    with pytest.raises(ValueError):
        defaults.default_method(0)


def test_train_without_method_takes_the_table_and_prints_the_cost(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(defaults, "METHOD_RULES", ((10**9, False, defaults.MethodChoice("residual", "measured")),
                                                   (10**9, True, defaults.MethodChoice("dyweight", "measured"))))
    out = tmp_path / "r.safetensors"
    assert main(["train", *TINY, "--out", str(out), "--cache-dir", str(tmp_path / "c")]) == 0
    text = capsys.readouterr()
    assert learned.read_config(out)["method"] == "residual"
    assert "method residual: fewstep's default at NFE 5: measured (--method to choose another)" in text.out
    m = re.search(r"residual operator: ([\d.]+k?) parameters, ([\d.]+[kM]?) MACs/step per sample = ([\d.]+)% of one "
                  r"model call \(([\d.]+[kM]?) MACs; time: ([\d.]+)%", text.out)
    assert m, text.out
    cost = learned.load(out).cost((3, 8, 8))
    assert m.group(1) == f"{cost['parameters'] / 1e3:.3g}k" and float(m.group(3)) > 0 and float(m.group(5)) > 0
    assert "teacher targets: computing; they will be cached in" in text.err
    assert len(list((tmp_path / "c").glob("*.safetensors"))) == 2  # the training targets, the report's reference
    # again: the targets come from the cache, and the sampler is bitwise the same
    again = tmp_path / "again.safetensors"
    assert main(["train", *TINY, "--out", str(again), "--cache-dir", str(tmp_path / "c")]) == 0
    assert "teacher targets: read from" in capsys.readouterr().err
    assert again.read_bytes() == out.read_bytes()


def test_counted_macs_match_the_operators_formula(gmm4):
    from fewstep import denoisers
    from fewstep.learned.cost import measure_cost

    unet = denoisers.default_unet()
    sampler = learned.train("residual", unet, shape=(3, 16, 16), nfe=5, base="ipndm",
                            budget=learned.Budget(total_samples=1, batch=1), teacher=learned.Teacher(M=0),
                            progress=False)
    cost = measure_cost(sampler, unet, (3, 16, 16), batch=2, repeats=1)
    assert cost["macs_per_step_counted"] == cost["macs_per_step"]  # the FLOP counter agrees with the formula
    assert 0 < cost["mac_ratio"] < 0.2 and cost["model_macs"] > 1e7
    assert measure_cost(learned.train("dyweight", gmm4, shape=(4,), nfe=4, progress=False,
                                      budget=learned.Budget(total_samples=1, batch=1), teacher=learned.Teacher(M=0)),
                        gmm4, (4,)) is None  # no operator


def test_guided_default_follows_the_table_and_no_cache_flag(tmp_path, capsys):
    out = tmp_path / "g.safetensors"
    assert main(["train", "--model", "digits", "--guidance", "4", "--no-tune", "--nfe", "5", "--total-samples", "10",
                 "--M", "1", "--report-seeds", "10", "--threads", "1", "--no-cache", "--out", str(out)]) == 0
    text = capsys.readouterr()
    want = defaults.default_method(5, guided=True).method
    assert f"method {want}: fewstep's default at NFE 5 under guidance (w > 1)" in text.out
    assert learned.read_config(out)["method"] == want and "teacher targets" not in text.err
    assert main(["train", *TINY, "--no-cache", "--cache-dir", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["train", "--model", "gmm", "--student", "ipndm", "--out", "x.safetensors"],
                                  ["bench", "paper-table4", "--student", "amed"]])
def test_student_is_retired(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "unrecognized arguments: --student" in capsys.readouterr().err


def test_tuning_and_report_references_are_cached_too(tmp_path, capsys):
    argv = ["train", "--model", "gmm", "--method", "dyweight", "--nfe", "5", "--tune-seeds", "2", "--report-seeds",
            "2", "--total-samples", "8", "--M", "1", "--threads", "1", "--cache-dir", str(tmp_path / "c")]
    assert main([*argv, "--out", str(tmp_path / "a.safetensors")]) == 0
    first = capsys.readouterr().out
    recipes = list((tmp_path / "c").glob("*.recipe.json"))
    kinds = sorted(json.loads(p.read_text()).get("kind", "training") for p in (tmp_path / "c").glob("*.json")
                   if not p.name.endswith(".recipe.json"))
    # references: tuning's teacher and its half-steps check, the confirmation seeds' teacher, the report's
    assert len(recipes) == 1 and kinds == ["reference", "reference", "reference", "reference", "training"]
    assert main([*argv, "--out", str(tmp_path / "b.safetensors")]) == 0
    out = capsys.readouterr()
    assert "best classic (tuned before, read from" in out.out and "teacher targets: read from" in out.err
    assert out.out.split("held-out report")[1] == first.split("held-out report")[1]  # the same references
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
