"""The shape of the code (issue 13): imports point down (no cycle in src/fewstep, module-level or inside
functions), no module imports another module's private names, one sampling loop, subpackages reachable from a
plain ``import fewstep``."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "fewstep"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def _resolve(mod: str, path: Path, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """(module -> fewstep modules it imports, anywhere in the file; private names imported across modules)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for mod, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(mod, path, node)
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    targets.append(sub if sub in mods else src)
                    if a.name.startswith("_") and sub not in mods and src != mod:
                        private.append(f"{mod} imports {a.name} from {src}")
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t.startswith("fewstep") and t != mod:
                    graph[mod].add(t)
    return graph, private


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (c := visit(n)):
                return c
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (c := visit(m)):
            return c
    return None


def test_no_import_cycle():
    """Edges are every import of a fewstep module, also inside functions; a package's __init__ re-exporting its
    children is an edge down, so a child importing its own package closes a cycle and is caught."""
    graph, _ = import_graph()
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_check_can_fail():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_private_name_is_imported_across_modules():
    _, private = import_graph()
    assert not private, "\n".join(private)


def test_one_sampling_loop():
    """Only fewstep.sampling.iterate calls solver.step in a loop over the schedule; the replay of the diffusers
    stepper (one step at a time) and the per-step grid search of the paper's Fig. 5 call single steps."""
    callers = sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
                     if ".step(" in p.read_text() and "def iterate(" not in p.read_text())
    loops = []
    for rel in callers:
        tree = ast.parse((PKG / rel).read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.For, ast.While)):
                body = ast.unparse(node)
                if "solver.step(" in body or "solv.step(" in body:
                    loops.append(rel)
    allowed = {"integrations/stepper.py"}  # replays one interval at a time for host loops (diffusers)
    assert set(loops) <= allowed, loops


@pytest.mark.parametrize("name", ["amed", "k", "integrations", "evaluation", "teacher", "metrics", "io",
                                  "experiments"])
def test_import_fewstep_exposes_its_subpackages(name):
    code = f"import fewstep; m = fewstep.{name}; print(m.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"fewstep.{name}"


def test_the_learned_package_does_not_import_amed():
    """fewstep.learned is the home of every learned method, AMED's included; fewstep.amed sits above it."""
    graph, _ = import_graph()
    bad = sorted(f"{m} -> {t}" for m, ts in graph.items() if m.startswith("fewstep.learned")
                 for t in ts if t == "fewstep.amed" or t.startswith("fewstep.amed."))
    assert not bad, bad


def test_one_steps_for_nfe():
    defs = sorted(str(p.relative_to(PKG)) for p in PKG.rglob("*.py")
                  for node in ast.walk(ast.parse(p.read_text()))
                  if isinstance(node, ast.FunctionDef) and "steps_for_nfe" in node.name)
    assert defs == ["sampling.py"], defs


MAX_LINES = 700


def test_no_module_is_too_long():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def _public_functions():
    for p in PKG.rglob("*.py"):
        tree = ast.parse(p.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                a = node.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) + bool(a.vararg) + bool(a.kwarg)
                n -= bool(a.args) and a.args[0].arg in ("self", "cls")
                yield f"{p.relative_to(PKG)}:{node.name}", n


def test_no_public_function_takes_more_than_20_parameters():
    wide = {name: n for name, n in _public_functions() if n > 20}
    assert not wide, wide


def test_the_width_check_counts_parameters():
    counts = dict(_public_functions())
    assert counts["learned/train.py:train"] >= 15  # the widest public call: settings objects keep it in bounds
    assert counts["sampling.py:steps_for_nfe"] == 4
