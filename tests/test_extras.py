"""Issue 28: the optional packages live in extras, and what needs one says which to install (one line, no
traceback); the version is written in one place. Missing packages are simulated with ``sys.modules[name] = None``
in a fresh interpreter (tests/test_wheel.py checks a real core-only install)."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import fewstep
from fewstep import _extras

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                          cwd=cwd)


def test_version_has_one_source():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "fewstep._version.VERSION"}
    assert fewstep.__version__ == _extras_free_version()
    out = subprocess.run([sys.executable, "-m", "fewstep", "--version"], capture_output=True, text=True, timeout=300,
                         check=True)
    assert out.stdout.strip() == f"fewstep {fewstep.__version__}"


def _extras_free_version() -> str:
    from fewstep._version import VERSION

    return VERSION


def test_core_dependencies_are_ranges_and_extras_cover_the_optional_imports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0].split("<")[0].strip(): d for d in project["dependencies"]}
    assert set(core) == {"torch", "numpy", "safetensors", "tqdm", "pillow"}
    assert "==" not in core["torch"], "torch must be a range: a pin would replace the user's torch"
    extras = {k: {d.split(">")[0].split("=")[0].strip() for d in v}
              for k, v in project["optional-dependencies"].items()}
    assert {"scikit-image", "scikit-learn", "matplotlib"} <= extras["demo"]
    assert {"scikit-image", "scikit-learn"} <= extras["eval"]
    assert "diffusers" in extras["diffusers"]
    assert {"diffusers", "transformers"} <= extras["text"]
    # make test installs [test]: it must hold every other extra, so the tests see the whole library
    assert extras["demo"] | extras["eval"] | extras["diffusers"] | extras["text"] <= extras["test"]
    for module, package in _extras.PACKAGES.items():
        if module != "threadpoolctl":  # comes with scikit-learn
            assert any(package in extras[e] for e in ("demo", "eval", "diffusers", "text")), package


def test_no_optional_package_is_imported_at_module_level():
    """Every import of an extra's package is inside a function (or in the diffusers backend, which is itself
    imported on first use), so ``import fewstep`` and ``fewstep --help`` work on the core install."""
    import ast

    optional = set(_extras.PACKAGES) | {"scipy"}
    bad = []
    for path in (ROOT / "src" / "fewstep").rglob("*.py"):
        if path.name == "backend.py":
            continue
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            bad += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in optional]
    assert not bad


def test_check_maps_the_import_name_to_the_package(monkeypatch):
    monkeypatch.setitem(_extras.PACKAGES, "fewstep_absent_module", "absent-dist")
    with pytest.raises(_extras.MissingExtraError) as e:
        _extras.check("json", "fewstep_absent_module.sub", extra="demo", purpose="fewstep demo")
    assert str(e.value) == ("fewstep demo needs the 'absent-dist' package, which is not installed: "
                            "pip install 'fewstep[demo]'")


def test_require_names_the_extra_and_keeps_other_import_errors():
    assert _extras.require("json", extra="demo").__name__ == "json"
    with pytest.raises(ValueError, match="unknown extra"):
        _extras.require("json", extra="plots")
    with pytest.raises(_extras.MissingExtraError) as e:
        _extras.require("fewstep_no_such_package.sub", extra="eval", purpose="the test")
    assert str(e.value) == ("the test needs the 'fewstep_no_such_package' package, which is not installed: "
                            "pip install 'fewstep[eval]'")
    assert isinstance(e.value, ImportError) and isinstance(e.value, ValueError)
    _extras.check("json", "torch", extra="demo")  # installed: nothing to say
    # an installed package whose own import fails is a broken install: its error is kept, not called missing
    code = ("import sys, types\n"
            "from fewstep import _extras\n"
            "try:\n"
            "    _extras.require('fewstep.no_such_submodule', extra='demo')\n"
            "except _extras.MissingExtraError as e:\n"
            "    print('missing', e)\n"
            "except ImportError as e:\n"
            "    print('kept', type(e).__name__)\n")
    out = _run(code)
    assert out.stdout.strip() == "kept ModuleNotFoundError", out.stderr


@pytest.mark.parametrize("blocked,argv,extra,package", [
    ("matplotlib", ["demo"], "demo", "matplotlib"),
    ("sklearn", ["demo", "--bed"], "demo", "scikit-learn"),
    ("skimage", ["demo", "--no-digits"], "demo", "scikit-image"),
    ("sklearn", ["sample", "--out", "OUT", "--nfe", "3", "--seeds", "0"], "demo", "scikit-learn"),
    ("skimage", ["eval", "IMAGES", "--ref", "patches:8"], "eval", "scikit-image"),
])
def test_a_command_that_needs_an_extra_says_which(tmp_path, blocked, argv, extra, package):
    argv = [str(tmp_path / a) if a in ("OUT", "IMAGES") else a for a in argv]
    if "eval" in argv:
        import numpy as np

        np.savez(tmp_path / "IMAGES.npz", images=np.zeros((4, 3, 8, 8), np.float32))
        argv[1] += ".npz"
    code = (f"import sys\nsys.modules[{blocked!r}] = None\n"
            f"from fewstep.cli import main\nsys.exit(main({argv!r}))\n")
    out = _run(code, cwd=tmp_path)  # a fresh folder: a default output left by an earlier run is not in the way
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fewstep {argv[0]}: error: "), out.stderr
    assert lines[0].endswith(f"needs the '{package}' package, which is not installed: pip install 'fewstep[{extra}]'")
    assert not list(tmp_path.glob("OUT*")), "nothing is written before the check"


def test_library_functions_say_which_extra():
    code = ("import sys\nsys.modules['sklearn'] = None\nsys.modules['matplotlib'] = None\n"
            "import fewstep\n"
            "for f in (fewstep.data.gmm_bed, fewstep.data.load_digits16, fewstep.io.pyplot,\n"
            "          lambda: fewstep.data.load_photo('china')):\n"
            "    try:\n"
            "        f()\n"
            "    except ImportError as e:\n"
            "        print(type(e).__name__, e)\n")
    out = _run(code)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4, out.stdout
    assert all(line.startswith("MissingExtraError ") and line.endswith("pip install 'fewstep[demo]'")
               for line in lines), lines
    assert "'scikit-learn'" in lines[0] and "'matplotlib'" in lines[2]

