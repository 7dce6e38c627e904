"""Image-to-image (partial denoising): fewstep.sample(x_init=, strength=), img2img_sigmas and the CLI.

Definitions under test: with ``x_init`` the ODE starts at x_init + noise * sigmas[0]; ``strength`` keeps the last
int(strength * (N - 1)) steps of an N-sigma schedule (diffusers' convention) and strength 1 is plain sampling
(x_init ignored, the start is noise * sigma_max exactly).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fewstep
from fewstep.sampling import count_nfe, img2img_sigmas
from fewstep.solvers import get_solver
from conftest import CountingDenoiser, make_gmm

SOLVERS = ["euler", "heun", "dpm2", "dpmpp", "unipc", "ipndm", "ipndm_v", "deis", "amed", "amed_plugin"]


@pytest.fixture(scope="module")
def bed():
    gmm = make_gmm(dim=4, components=3, seed=0)
    images = gmm.means[torch.arange(6) % 3] + 0.05  # "images": points near the mixture's modes
    return gmm, images, fewstep.noise_for_seeds(range(6), (4,), dtype=torch.float64)


def test_img2img_sigmas():
    sig = fewstep.get_schedule("polynomial", 11)
    assert torch.equal(img2img_sigmas(sig, 1.0), sig)
    assert torch.equal(img2img_sigmas(sig, 0.5), sig[5:])
    assert torch.equal(img2img_sigmas(sig, 0.3), sig[7:])  # int(0.3 * 10) = 3 steps, despite 0.3 * 10 = 2.99..
    assert torch.equal(img2img_sigmas(sig, 0.1), sig[9:])
    with pytest.raises(ValueError, match="keeps no step"):
        img2img_sigmas(sig, 0.05)
    for bad in (0, 1.5, -0.1, True, "0.5"):
        with pytest.raises(ValueError, match="strength"):
            img2img_sigmas(sig, bad)


@pytest.mark.parametrize("solver", SOLVERS)
def test_strength_one_is_plain_sampling(bed, solver):
    """strength 1: the whole schedule from noise * sigma_max, bit for bit plain sampling; x_init is ignored."""
    gmm, images, noise = bed
    sig = fewstep.get_schedule("polynomial", 6)
    plain = fewstep.solve(gmm, noise, sig, solver)
    res = fewstep.solve(gmm, noise, sig, solver, x_init=images, strength=1.0)
    assert torch.equal(res.x, plain.x) and res.nfe == plain.nfe


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("afs", [False, True])
def test_partial_nfe_and_start(bed, solver, afs):
    """NFE is that of the schedule actually run; the first model call sees x_init + noise * sigmas[0]; the
    strength form equals x_init with the cut schedule."""
    gmm, images, noise = bed
    sig = fewstep.get_schedule("polynomial", 9)
    sub = img2img_sigmas(sig, 0.5)
    assert sub.numel() == 5
    seen = []
    den = CountingDenoiser(lambda x, s: (seen.append((x.clone(), float(s[0]))), gmm(x, s))[1])
    res = fewstep.solve(den, noise, sig, solver, x_init=images, strength=0.5, afs=afs, trajectory=True)
    want = count_nfe(get_solver(solver), sub.numel(), afs)
    assert res.nfe == den.calls == want
    assert torch.equal(res.sigmas, sub)
    assert torch.equal(res.trajectory[0], images + noise * sub[0])
    if not afs:
        assert seen[0][1] == pytest.approx(float(sub[0])) and torch.equal(seen[0][0], images + noise * sub[0])
    same = fewstep.sample(gmm, noise, sub, solver, x_init=images, afs=afs)
    assert torch.equal(res.x, same)


def test_low_strength_stays_near_the_image():
    """On the analytic model (images near the mixture's modes), strength 0.3 of an 11-sigma 0.002..80 schedule
    starts at sigma 0.32 and ends in the image's neighbourhood (mean distance 0.48 against 2.55 for plain samples
    from the same noise, measured); the distance grows with strength."""
    gmm = make_gmm(dim=4, components=3, seed=0)
    images = gmm.means[torch.arange(64) % 3] + 0.05
    noise = fewstep.noise_for_seeds(range(64), (4,), dtype=torch.float64)
    sig = fewstep.get_schedule("polynomial", 11)
    far = float((fewstep.sample(gmm, noise, sig, "heun") - images).norm(dim=1).mean())
    dist = {}
    for strength in (0.2, 0.3, 0.5):
        out = fewstep.sample(gmm, noise, sig, "heun", x_init=images, strength=strength)
        dist[strength] = (out - images).norm(dim=1)
    start = float(img2img_sigmas(sig, 0.3)[0])
    assert 0.2 < start < 0.5
    assert float(dist[0.3].mean()) < 0.3 * far
    assert float(dist[0.3].max()) < 4 * 2 * start  # 4 standard deviations of the 4-dim start noise
    assert float(dist[0.2].mean()) < float(dist[0.3].mean()) < float(dist[0.5].mean()) < far


def test_batch_one_x_init_broadcasts(bed):
    gmm, images, noise = bed
    sig = fewstep.get_schedule("polynomial", 6)
    one = fewstep.sample(gmm, noise, sig, "ipndm", x_init=images[:1], strength=0.6)
    full = fewstep.sample(gmm, noise, sig, "ipndm", x_init=images[:1].expand_as(noise), strength=0.6)
    assert torch.equal(one, full)


def test_errors(bed):
    gmm, images, noise = bed
    sig = fewstep.get_schedule("polynomial", 6)
    with pytest.raises(TypeError, match="strength needs x_init"):
        fewstep.sample(gmm, noise, sig, "euler", strength=0.5)
    with pytest.raises(ValueError, match="shape"):
        fewstep.sample(gmm, noise, sig, "euler", x_init=images[:, :3])
    with pytest.raises(ValueError, match="NaN"):
        fewstep.sample(gmm, noise, sig, "euler", x_init=images * float("nan"))
    with pytest.raises(TypeError, match="x_init"):
        fewstep.sample(gmm, noise, sig, "euler", x_init=images.numpy())
    from fewstep.learned import AMEDSampler

    pred = AMEDSampler(AMEDSampler.make_config([14.0, 2.5, 0.4, 0.03], afs=False,
                                               options={"scale_dir": 0.2, "scale_time": 0.2}))
    with pytest.raises(ValueError, match="train a sampler for the partial schedule"):
        fewstep.sample(gmm, noise, predictor=pred, x_init=images, strength=0.5)


# ------------------------------------------------------------------------------------------------------------ CLI
def _cli(argv):
    from fewstep.cli import main

    return main(argv)


def test_cli_round_trip(tmp_path):
    """fewstep sample --init-images FILE.npz --strength S: strength 1 equals plain sampling; strength 0.4 equals
    fewstep.sample(x_init=...) with image j for the j-th seed (cyclically)."""
    from fewstep.denoisers import gmm_denoiser

    rng = np.random.default_rng(0)
    imgs = rng.uniform(-0.9, 0.9, size=(2, 3, 8, 8)).astype(np.float32)
    src = tmp_path / "init.npz"
    np.savez(src, images=imgs)
    common = ["sample", "--model", "gmm", "--solver", "ipndm", "--nfe", "6", "--seeds", "3-5", "--threads", "1"]
    assert _cli(common + ["--out", str(tmp_path / "plain.npz")]) == 0
    assert _cli(common + ["--init-images", str(src), "--strength", "1", "--out", str(tmp_path / "s1.npz")]) == 0
    assert _cli(common + ["--init-images", str(src), "--strength", "0.4", "--out", str(tmp_path / "s04.npz")]) == 0
    plain, s1, s04 = (np.load(tmp_path / f) for f in ("plain.npz", "s1.npz", "s04.npz"))
    assert np.array_equal(plain["images"], s1["images"])
    assert list(s04["seeds"]) == [3, 4, 5]
    den = gmm_denoiser()
    sig = fewstep.get_schedule("polynomial", 7, sigma_min=0.002, sigma_max=80.0)
    noise = fewstep.noise_for_seeds([3, 4, 5], (3, 8, 8), dtype=torch.float64)
    x_init = torch.from_numpy(imgs[[0, 1, 0]]).double()
    ref = fewstep.sample(den, noise, sig, "ipndm", x_init=x_init, strength=0.4).float().clamp(-1, 1).numpy()
    assert np.allclose(s04["images"], ref, atol=1e-6)
    assert np.abs(s04["images"] - imgs[[0, 1, 0]]).mean() < np.abs(plain["images"] - imgs[[0, 1, 0]]).mean()


def test_cli_errors(tmp_path, capsys):
    src = tmp_path / "init.npz"
    np.savez(src, images=np.zeros((1, 3, 4, 4), dtype=np.float32))
    base = ["sample", "--model", "gmm", "--seeds", "0-1", "--out", str(tmp_path / "o.npz")]
    assert _cli(base + ["--strength", "0.5"]) == 2
    assert _cli(base + ["--init-images", str(src)]) == 2
    assert _cli(base + ["--init-images", str(src), "--strength", "0.5"]) == 2  # 4x4 images, 8x8 model
    err = capsys.readouterr().err
    assert "--strength applies to --init-images only" in err and "needs --strength" in err and "shape" in err


@pytest.mark.parametrize("arr", [np.zeros((0, 3, 8, 8), np.uint8), np.zeros((0, 8, 8, 3), np.uint8),
                                 np.zeros((2, 3, 0, 8), np.uint8), np.zeros((0, 3, 8, 8), np.float32)],
                         ids=["uint8-nchw", "uint8-nhwc", "zero-height", "float32"])
def test_cli_refuses_empty_init_images(tmp_path, capsys, arr):
    """An empty image array (uint8 once skipped the size check and ended in a ZeroDivisionError) is refused before
    any sampling; so is a folder without PNG files."""
    src = tmp_path / "init.npz"
    np.savez(src, images=arr)
    out = tmp_path / "o.npz"
    base = ["sample", "--model", "gmm", "--seeds", "0-1", "--strength", "0.5", "--out", str(out)]
    assert _cli(base + ["--init-images", str(src)]) == 2
    assert "no images" in capsys.readouterr().err and not out.exists()
    (tmp_path / "empty").mkdir()
    assert _cli(base + ["--init-images", str(tmp_path / "empty")]) == 2
    assert "has no .png files" in capsys.readouterr().err and not out.exists()
