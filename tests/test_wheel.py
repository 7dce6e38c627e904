"""Issue 28: the sdist and the wheel build, and the wheel installed into a fresh virtual environment with the core
dependencies only (torch at the version this environment runs, from the local package sources) imports, samples,
answers --version and --help, and says which extra a command needs.

Offline: pip reads no configuration and no index but the local ones this machine's pip configuration names
(``file:`` indexes and find-links folders); without any, the install tests skip. The venv is built once per session
(in /dev/shm when it has room: see _venv_folder)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import fewstep

ROOT = Path(__file__).resolve().parents[1]
CORE = {"torch", "numpy", "safetensors", "tqdm", "pillow"}
OPTIONAL_MODULES = ("sklearn", "skimage", "matplotlib", "diffusers", "scipy")
MAX_WHEEL_BYTES = 8_000_000  # 7.3 MB of shipped models (two U-Nets, ~0.3 MB of samplers) + the code


def _pip_env() -> dict[str, str]:
    """This environment without pip's configuration, index or constraints: only the options we pass count."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | {"PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}


def _local_sources() -> list[str]:
    """pip options for the local package sources of this machine's pip configuration (file: indexes, find-links
    folders), and --no-index when there is no local index: never a network index."""
    out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                         timeout=120, check=False).stdout
    indexes, links = [], []
    for line in out.splitlines():
        key, _, value = line.partition("=")
        values = value.strip().strip("'\"").split()
        if key.endswith("index-url"):
            indexes += [v for v in values if v.startswith("file:")]
        elif key.endswith("find-links"):
            links += [v for v in values if Path(v.removeprefix("file://")).is_dir()]
    links += [v for v in os.environ.get("PIP_FIND_LINKS", "").split() if Path(v).is_dir()]
    opts = [] if indexes else ["--no-index"]
    for i, url in enumerate(dict.fromkeys(indexes)):
        opts += ["--index-url" if i == 0 else "--extra-index-url", url]
    for link in dict.fromkeys(links):
        opts += ["--find-links", link]
    return opts


@pytest.fixture(scope="session")
def dist(tmp_path_factory) -> dict[str, Path]:
    """The sdist, built from the files a release ships, and the wheel built from that sdist (as ``python -m build``
    does), with the build backend of this environment (no build isolation: offline)."""
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "src-tree"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "MANIFEST.in"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc"))
    out = tmp / "out"
    build = ("import sys\nfrom setuptools import build_meta\n"
             "print(build_meta.build_sdist(sys.argv[1]))\n")
    r = subprocess.run([sys.executable, "-c", build, str(out)], cwd=src, capture_output=True, text=True, timeout=300,
                       env=_pip_env(), check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    sdist = out / r.stdout.strip().splitlines()[-1]
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "-q", "-w", str(out), str(sdist)], capture_output=True, text=True, timeout=300,
                       env=_pip_env(), check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = out.glob("fewstep-*.whl")
    return {"sdist": sdist, "wheel": wheel}


def test_wheel_and_sdist_carry_the_package_and_nothing_else(dist):
    version = fewstep.__version__
    assert dist["wheel"].name == f"fewstep-{version}-py3-none-any.whl"
    assert dist["sdist"].name == f"fewstep-{version}.tar.gz"
    with zipfile.ZipFile(dist["wheel"]) as z:
        names = z.namelist()
        meta = z.read(f"fewstep-{version}.dist-info/METADATA").decode()
    assert {n.split("/")[0] for n in names} == {"fewstep", f"fewstep-{version}.dist-info"}, sorted(names)
    assert "fewstep/py.typed" in names and f"fewstep-{version}.dist-info/licenses/LICENSE" in names
    data = sorted(n for n in names if not n.endswith(".py") and "dist-info" not in n)
    # the two shipped U-Nets, the learned samplers shipped for them (scripts/train_shipped.py, listed in
    # samplers.json) and the tuned classic configurations the demo compares with
    from fewstep.shipped import entries

    shipped = [f"fewstep/assets/{e['file']}" for e in entries()]
    tuned = [f"fewstep/assets/{p.name}" for p in (Path(fewstep.__file__).parent / "assets").glob("tuned_*.json")]
    index = ["fewstep/assets/samplers.json"] if shipped else []
    assert data == sorted(["fewstep/assets/digits16.safetensors", "fewstep/assets/unet16.safetensors",
                           "fewstep/py.typed", *shipped, *tuned, *index])
    assert dist["wheel"].stat().st_size < MAX_WHEEL_BYTES
    # the core requirements carry no extra marker; the rest do
    core = {line.split(":", 1)[1].strip() for line in meta.splitlines()
            if line.startswith("Requires-Dist:") and "extra ==" not in line}
    assert {c.split(">")[0].split("=")[0] for c in core} == CORE, core
    assert "License-Expression: MIT" in meta and "Classifier: Typing :: Typed" in meta
    assert f"Version: {version}" in meta
    for extra in ("demo", "eval", "diffusers", "test"):
        assert f"Provides-Extra: {extra}" in meta
    with tarfile.open(dist["sdist"]) as t:
        members = {m.name.split("/", 1)[1] for m in t.getmembers() if "/" in m.name}
    assert {"pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md", "src/fewstep/_version.py",
            "src/fewstep/assets/unet16.safetensors"} <= members


@pytest.fixture(scope="session")
def venv(dist, tmp_path_factory) -> Iterator[Path]:
    """A fresh venv holding the wheel and its core dependencies; torch pinned to the version running here."""
    sources = _local_sources()
    if sources == ["--no-index"]:
        pytest.skip("no local package source in pip's configuration: this test installs offline only")
    import torch

    root = _venv_folder(tmp_path_factory) / "env"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=300,
                   env=_pip_env())
    py = root / "bin" / "python"
    r = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-compile", "-q",
                        *sources, f"torch=={torch.__version__.split('+')[0]}", str(dist["wheel"])],
                       capture_output=True, text=True, timeout=900, env=_pip_env(), check=False)
    assert r.returncode == 0, (r.stdout[-3000:], r.stderr[-3000:])
    print(f"\ncore venv installed in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    yield root
    shutil.rmtree(root.parent, ignore_errors=True)  # about 0.8 GB, torch most of it


def _venv_folder(tmp_path_factory) -> Path:
    """A folder in memory (/dev/shm) when it has room: the 0.8 GB venv's 15,000 files took 18 s to write and 62 s
    to delete on this machine's shared disk (load 8), against seconds in memory; else the pytest temporary folder."""
    shm = Path("/dev/shm")
    try:
        if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 4e9:
            import tempfile

            return Path(tempfile.mkdtemp(prefix="fewstep-wheel-venv-", dir=shm))
    except OSError:
        pass
    return tmp_path_factory.mktemp("venv")


def _in_venv(root: Path, args: list[str], **kw) -> subprocess.CompletedProcess:
    env = _pip_env() | {"OMP_NUM_THREADS": "1", "FEWSTEP_CACHE": ""}
    return subprocess.run(args, capture_output=True, text=True, timeout=600, env=env, cwd=root, check=False, **kw)


SMOKE = r"""
import importlib.metadata as md, importlib.util, json, sys
import torch
import fewstep
from fewstep import _extras

assert fewstep.__file__.startswith(sys.prefix), fewstep.__file__  # the installed wheel, not a source tree
dists = sorted(d.metadata["Name"].lower() for d in md.distributions())
missing = [m for m in %(optional)r if importlib.util.find_spec(m) is not None]
assert not missing, missing

# an analytic model: a 2-component Gaussian mixture in 2-D, whose exact denoiser is closed-form
g = fewstep.denoisers.GaussianMixture(torch.tensor([[-1.0, 0.5], [2.0, -1.0]], dtype=torch.float64),
                                      torch.stack([torch.eye(2), 0.3 * torch.eye(2)]).double(),
                                      torch.tensor([0.4, 0.6], dtype=torch.float64))
noise = fewstep.noise_for_seeds(range(64), (2,), dtype=torch.float64)
ref = fewstep.sample(g, noise, fewstep.get_schedule("polynomial", num_steps=257), solver="heun")
errors = {}
for solver in ("euler", "ipndm", "dpmpp", "unipc"):
    sig = fewstep.get_schedule("polynomial", num_steps=11)
    res = fewstep.solve(g, noise, sig, solver=solver)
    errors[solver] = float((res.x - ref).pow(2).mean().sqrt())
    assert res.nfe == 10, (solver, res.nfe)
assert errors["euler"] < 1.0 and errors["ipndm"] < 0.5 * errors["euler"], errors

# the shipped U-Net loads from the wheel's assets and samples
net = fewstep.denoisers.default_unet()
x = fewstep.sample(net, fewstep.noise_for_seeds([0, 1], (3, 16, 16)), fewstep.get_schedule("polynomial",
                   num_steps=4), solver="ipndm")
assert x.shape == (2, 3, 16, 16) and bool(torch.isfinite(x).all())

# a library function that needs an extra says which
try:
    fewstep.data.gmm_bed()
    raise SystemExit("gmm_bed worked without scikit-learn")
except _extras.MissingExtraError as e:
    message = str(e)
print(json.dumps({"version": fewstep.__version__, "dists": dists, "errors": errors, "message": message}))
""" % {"optional": OPTIONAL_MODULES}


def test_core_install_imports_and_samples(venv):
    r = _in_venv(venv, [str(venv / "bin" / "python"), "-c", SMOKE])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["version"] == fewstep.__version__
    pulled = set(out["dists"]) - {"fewstep", "pip", "setuptools"}
    torch_deps = {"filelock", "typing-extensions", "typing_extensions", "sympy", "mpmath", "networkx", "jinja2",
                  "markupsafe", "fsspec"}
    assert CORE <= pulled and pulled - CORE <= torch_deps, sorted(pulled - CORE - torch_deps)
    assert out["message"].endswith("pip install 'fewstep[demo]'"), out["message"]


def test_core_install_cli(venv, tmp_path):
    exe = str(venv / "bin" / "fewstep")
    r = _in_venv(venv, [exe, "--version"])
    assert (r.returncode, r.stdout.strip()) == (0, f"fewstep {fewstep.__version__}"), r.stderr
    r = _in_venv(venv, [exe, "--help"])
    assert r.returncode == 0 and "demo" in r.stdout and "sample" in r.stdout, r.stderr
    r = _in_venv(venv, [exe, "demo", "--out", str(tmp_path / "demo")])
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.strip() == ("fewstep demo: error: fewstep demo needs the 'matplotlib' package, which is not "
                                "installed: pip install 'fewstep[demo]'"), r.stderr
    assert not (tmp_path / "demo").exists()
    # sampling the shipped U-Net writes PNGs with the core install alone
    r = _in_venv(venv, [exe, "sample", "--model", "unet", "--nfe", "3", "--seeds", "0-1", "--out",
                        str(tmp_path / "png")])
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list((tmp_path / "png").rglob("*.png"))) == 2
