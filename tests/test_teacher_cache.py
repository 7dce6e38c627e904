"""The disk cache of teacher targets: a hit trains bitwise like no cache and calls no teacher; every field of the
key matters; a damaged entry is recomputed; a model without an id is not cached."""

from __future__ import annotations

import warnings

import pytest
import torch

from conftest import CountingDenoiser, make_gmm
from fewstep import learned
from fewstep.teacher import TeacherCache

SMALL = learned.Budget(batch=8, total_samples=24)


class Counted(CountingDenoiser):
    model_id = "gmm4-test-cache"


def _train(den, cache=None, method="dyweight", shape=(4,), budget=SMALL, **kw):
    return learned.train(method, den, shape=shape, nfe=5 if method == "amed" else 4, teacher=learned.Teacher(M=2, cache=cache), budget=budget,
                         progress=False, **kw)


def _same(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("method", ["dyweight", "amed"])
def test_hit_is_bitwise_and_calls_no_teacher(tmp_path, method):
    kw = {"options": {"features": "none"}, "objective": learned.Objective(loss="per_step")} if method == "amed" else {}
    plain = Counted(make_gmm())
    ref = _train(plain, None, method, **kw)
    first = Counted(make_gmm())
    a = _train(first, tmp_path, method, **kw)
    assert first.calls == plain.calls and len(list(tmp_path.glob("*.safetensors"))) == 1
    assert len(list(tmp_path.glob("*.json"))) == 1  # the sidecar of the key's fields
    second = Counted(make_gmm())
    b = _train(second, tmp_path, method, **kw)
    teacher_calls = ref.log.teacher_nfe_per_sample * 3  # one batched call per evaluation, 3 batches
    assert teacher_calls > 0 and second.calls == plain.calls - teacher_calls
    assert b.log.teacher_nfe_per_sample == ref.log.teacher_nfe_per_sample
    assert _same(ref, a) and _same(ref, b) and ref.log.losses == b.log.losses


def test_key_changes_miss(tmp_path):
    den = Counted(make_gmm())
    _train(den, tmp_path)
    _train(den, tmp_path, budget=learned.Budget(batch=8, total_samples=24, seed=1))  # other seeds
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
    other = Counted(make_gmm(dim=3))
    _train(other, tmp_path, shape=(3,))  # other shape
    _train(den, tmp_path, budget=learned.Budget(batch=8, total_samples=32))  # more samples
    other.model_id = "another-model"
    _train(other, tmp_path, shape=(3,))  # other model
    assert len(list(tmp_path.glob("*.safetensors"))) == 5
    base = {"model": {"model_id": "m"}, "shape": [4], "sigmas": ["0x1.0p+0"]}
    keys = {TeacherCache.key(base), TeacherCache.key({**base, "shape": [5]}), TeacherCache.key({**base, "M": 3})}
    assert len(keys) == 3 and TeacherCache.key(dict(reversed(base.items()))) == TeacherCache.key(base)


def test_corrupt_entry_is_recomputed(tmp_path):
    ref = _train(Counted(make_gmm()), tmp_path)
    (path,) = tmp_path.glob("*.safetensors")
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated
    den = Counted(make_gmm())
    with pytest.warns(UserWarning, match="teacher cache: ignoring"):
        again = _train(den, tmp_path)
    assert _same(ref, again) and path.read_bytes() == good  # recomputed and rewritten
    data = bytearray(good)
    data[-8:] = torch.tensor([float("nan")], dtype=torch.float64).view(torch.uint8).numpy().tobytes()
    path.write_bytes(bytes(data))  # a NaN in the targets
    with pytest.warns(UserWarning, match="NaN"):
        assert _same(ref, _train(Counted(make_gmm()), tmp_path))
    path.write_bytes(b"\x80\x04 pickled")  # never unpickled
    with pytest.warns(UserWarning, match="pickle"):
        assert _same(ref, _train(Counted(make_gmm()), tmp_path))


def test_no_model_id_is_not_cached(tmp_path):
    import fewstep.teacher as teacher

    teacher._SAID.clear()
    den = CountingDenoiser(make_gmm())
    with pytest.warns(UserWarning, match="no model_id"):
        _train(den, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once
        _train(den, tmp_path)
    assert not list(tmp_path.glob("*"))


def test_size_limit(tmp_path):
    import fewstep.teacher as teacher

    teacher._SAID.clear()
    small = TeacherCache(tmp_path, max_bytes=100)
    with pytest.warns(UserWarning, match="limit"):
        from fewstep.learned import distill

        plan = distill.Plan(shape=(4,), teacher="deis", teacher_options={}, M=2, batch=8, total_samples=24, lr=1e-3,
                    lr_decay=True, loss="final", distance="l2", seed=0, afs=True, cache=small,
                    model_key={"model_id": "m"}, progress=False)
        assert distill._cached_targets(plan, torch.tensor([80.0, 1.0, 0.002], dtype=torch.float64), 3, 0, 1, False) == \
            (None, None)
