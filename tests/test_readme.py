"""The README as a test: every ```bash and ```python block of README.md runs, in README order, in one temporary
folder shared by all blocks (as a user following the README in one terminal would: a file made by an earlier
command is there for a later one, and a name used twice collides as it would for the user).

How each block runs
  * ```python                    exec'd in a fresh namespace (no names are provided: snippets are self-contained);
                                  cwd = the shared folder.
  * ```python file=PATH          written to PATH in the shared folder (a module that later commands import).
  * ```bash                      line by line (``\\`` continuations joined, ``#`` comments dropped):
      - ``[VAR=value ...] fewstep ARGS`` runs ``fewstep.cli.main(ARGS)`` in this process (one torch import and one
        analytic bed for the whole README), with the exit status checked. As for the installed ``fewstep`` script,
        the current folder is importable only with ``PYTHONPATH=.``; modules imported from the shared folder are
        forgotten after each command.
      - ``torchrun ...`` (and any other command) runs in ``bash`` in the shared folder, with the venv's ``bin``
        first on PATH; its exit status is checked.
A command with a non-zero exit status, or a snippet that raises, fails the test of its block; later blocks then
fail with "an earlier block failed".

Sizes (the whole file took 35 s on a 2-core CPU at load average 1.2, 3.5 min at load average 8): the tables
below set or replace options of ``fewstep`` commands (SIZE_OPTIONS), keyword arguments of calls in python
snippets (SIZE_KEYWORDS) and fields of their training-settings objects (SIZE_SETTINGS; both by an AST rewrite):
training sets, seed ranges, grids, teacher steps and the torch thread count shrink; NFEs, solvers, schedules,
models, file names and everything else run as written. TORCHRUN_PROCESSES caps torchrun's process count. SKIP_LINES / SKIP_BLOCKS list what does not run, each with its reason; a skipped
python block is still compiled, a skipped ``fewstep`` line still parsed, and a skipped ``make`` target must exist.
Every entry of these tables must match the README (no stale entries).
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
VENV_BIN = Path(sys.executable).parent

# ------------------------------------------------------------------------------------------------ what is skipped
# A bash line is skipped when it contains the key, a python block when it contains the key (reasons: pytest -ra).
SKIP_LINES = {
    "make demo": "the full demo (128 seeds x 36 settings sampled, the digits part) takes about 3 CPU minutes; it "
                 "runs at small size in tests/test_demo.py",
    "make test": "runs the whole test suite, this file included",
    "make bench": "the full benchmark suite (about 15 min); the harnesses run at tiny size in tests/test_benchmarks.py",
    "pip install": "installs from a package index; the wheel's core install is built and tested offline in "
                   "tests/test_wheel.py",
    "--diffusers ./sd15": "needs a Stable Diffusion checkpoint folder; the same commands run on a tiny SD pipeline "
                          "in tests/test_text_to_image.py",
    "--features inception": "needs a TorchScript Inception-v3 network and FID statistics that the user provides "
                            "(fewstep downloads nothing)",
}
SKIP_BLOCKS = {
    "pipe(prompt": "needs a real Stable Diffusion pipeline `pipe` (text encoder, tokenizer, VAE, UNet weights); "
                   "FewstepScheduler in pipelines is tested in tests/test_integrations.py",
    'load_pipeline("./sd15")': "needs a Stable Diffusion checkpoint folder; the same calls run on tiny SD, SDXL and "
                               "SD3 pipelines in tests/test_text_to_image.py",
    "DiffusersDenoiser(pipe.unet": "needs a real Stable Diffusion pipeline `pipe` and its text embeddings; "
                                   "DiffusersDenoiser is tested in tests/test_diffusers_own_model.py",
}

if importlib.util.find_spec("diffusers") is None:  # an optional extra (installed by `make test`)
    SKIP_LINES["--diffusers"] = SKIP_BLOCKS["from diffusers"] = "needs diffusers: pip install 'fewstep[diffusers]'"

# ------------------------------------------------------------------------------------------------ sizes
# fewstep (sub)command -> {option: value}: set, or replace the README's value.
SIZE_OPTIONS: dict[tuple[str, ...], dict[str, str]] = {
    ("train",): {"--total-samples": "16", "--batch": "8", "--M": "2", "--tune-seeds": "2", "--report-seeds": "2"},
    ("tune",): {"--seeds": "900000000-900000001", "--threads": "1"},
    ("sample",): {"--seeds": "0-5", "--batch": "4"},
    ("eval",): {"--ref-count": "64", "--threads": "1"},
    ("schedule", "search"): {"--warmup": "4", "--grid": "13", "--threads": "1"},
    ("schedule", "learn"): {"--total-samples": "8", "--threads": "1"},  # (it has no --batch: one batch of 64)
    ("analyze", "pca"): {"--seeds": "0-3", "--steps": "8", "--threads": "1"},
    ("analyze", "error"): {"--seeds": "800000000-800000003", "--teacher-steps": "2", "--threads": "1"},  # held out
    ("analyze", "align"): {"--seeds": "0-3", "--grid": "3", "--teacher-steps": "2", "--threads": "1"},
    ("bench",): {"--seeds": "4", "--ref-steps": "16", "--train-samples": "8", "--nfe": "5", "--M": "2"},
}
# Options added only where they act (fewstep refuses an option that would change nothing): option -> test on args.
SIZE_ONLY_IF = {"--ref-count": lambda args: any(a.startswith("patches:") for a in args),
                # train tunes first unless told where to start
                "--tune-seeds": lambda args: not {"--tuned", "--no-tune", "--schedule", "--base"} & set(args)}
# (--threads 1: eval, schedule and analyze default to all cores, unlike the other commands, which use 1 thread for
# small models; on a shared 2-core machine all cores are several times slower.)
# function name (as called: the last attribute) -> {keyword: value}: set, or replace the README's value.
SIZE_KEYWORDS: dict[str, dict[str, object]] = {
    "search_schedule": {"warmup": 4, "grid": 13},
}
# function name -> {keyword: (settings class in fewstep.learned, {field: value})}: the settings object the call passes
# as that keyword (written as a call, e.g. ``budget=learned.Budget(lr=0.1)``) gets these fields, set or replaced; a
# call that passes none gets ``fewstep.learned.<class>(fields)``.
SIZE_SETTINGS: dict[str, dict[str, tuple[str, dict[str, object]]]] = {
    # batch 10: mixed digit labels need a multiple of 10
    "train": {"budget": ("Budget", {"total_samples": 20, "batch": 10}), "teacher": ("Teacher", {"M": 2})},
    "learn_schedule": {"budget": ("Budget", {"total_samples": 8, "batch": 8}), "teacher": ("Teacher", {"M": 2})},
}
TORCHRUN_PROCESSES = 2  # --nproc_per_node above this is lowered to it (gloo processes on CPU)
TIMEOUT = 300  # seconds for one subprocess command


# ------------------------------------------------------------------------------------------------ parsing
@dataclass
class Block:
    index: int
    lang: str
    info: str
    code: str
    line: int  # 1-based line of the opening fence
    heading: str

    @property
    def id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")[:28]
        return f"{self.index:02d}-{self.lang}-L{self.line}-{slug}"


def read_blocks(text: str) -> list[Block]:
    """The fenced ```bash / ```python blocks of ``text`` in order (other languages are not run)."""
    blocks, heading, lines, i = [], "", text.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        m = re.match(r"^```(\w+)?(.*)$", line)
        if m:
            start, body = i, []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            lang = m.group(1) or ""
            if lang in ("bash", "python"):
                blocks.append(Block(len(blocks), lang, m.group(2).strip(), "\n".join(body) + "\n", start + 1, heading))
        i += 1
    return blocks


def commands(code: str) -> list[str]:
    """The command lines of a bash block: continuations joined, blank and comment-only lines dropped."""
    if "<<" in code:
        raise AssertionError("heredocs are not supported by this test: show the file as a ```python file=PATH block")
    out, cur = [], ""
    for line in code.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        if shlex.split(cur, comments=True):
            out.append(cur.strip())
        cur = ""
    return out


def words_of(line: str) -> tuple[dict[str, str], list[str]]:
    """(leading VAR=value assignments, the command's words) of a command line."""
    words = shlex.split(line, comments=True)
    env = {}
    while words and re.match(r"^[A-Za-z_]\w*=", words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    return env, words


def skip_reason(text: str, table: dict[str, str]) -> str | None:
    return next((reason for key, reason in table.items() if key in text), None)


# ------------------------------------------------------------------------------------------------ size rewrites
def shrink_args(args: list[str]) -> list[str]:
    """``fewstep`` arguments with SIZE_OPTIONS applied (the command is the first one or two words)."""
    opts = SIZE_OPTIONS.get(tuple(args[:2])) or SIZE_OPTIONS.get(tuple(args[:1])) or {}
    args = list(args)
    for opt, value in opts.items():
        if opt in SIZE_ONLY_IF and not SIZE_ONLY_IF[opt](args):
            continue
        hit = [i for i, a in enumerate(args) if a == opt or a.startswith(opt + "=")]
        if hit:
            i = hit[0]
            args[i: i + (1 if "=" in args[i] else 2)] = [opt, value]
        else:
            args += [opt, value]
    return args


def _set_keywords(call: ast.Call, values: dict[str, object]) -> None:
    """Set or replace keyword arguments of ``call`` by constants."""
    call.keywords = [k for k in call.keywords if k.arg not in values] + [
        ast.keyword(kw, ast.Constant(v)) for kw, v in values.items()]


class _Shrink(ast.NodeTransformer):
    def visit_Call(self, node: ast.Call) -> ast.Call:
        self.generic_visit(node)
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
        _set_keywords(node, SIZE_KEYWORDS.get(name, {}))
        for kw, (cls, fields) in SIZE_SETTINGS.get(name, {}).items():
            given = next((k.value for k in node.keywords if k.arg == kw), None)
            if given is None:  # the method's defaults: pass the settings object with the small fields
                given = ast.parse(f"__import__('fewstep.learned', fromlist=['{cls}']).{cls}()", mode="eval").body
                node.keywords.append(ast.keyword(kw, given))
            elif not (isinstance(given, ast.Call) and isinstance(given.func, (ast.Attribute, ast.Name))
                      and (given.func.attr if isinstance(given.func, ast.Attribute) else given.func.id) == cls):
                raise ValueError(f"cannot shrink {name}({kw}={ast.unparse(given)}): write it as {cls}(...)")
            _set_keywords(given, fields)
        return node


def shrink_python(code: str) -> str:
    """``code`` with SIZE_KEYWORDS and SIZE_SETTINGS applied to its calls."""
    return ast.unparse(ast.fix_missing_locations(_Shrink().visit(ast.parse(code))))


# ------------------------------------------------------------------------------------------------ running
def run_fewstep(line: str, cwd: Path) -> None:
    """``[VAR=value ...] fewstep ARGS`` in this process, as the installed console script would run it."""
    from fewstep.cli import main

    env, words = words_of(line)
    assert words[0] == "fewstep"
    argv = shrink_args(words[1:])
    extra = [str((cwd / p).resolve()) for p in env.pop("PYTHONPATH", "").split(os.pathsep) if p]
    saved_path, saved_env, before = list(sys.path), dict(os.environ), set(sys.modules)
    # The console script's sys.path has no '' (nor the current folder): only PYTHONPATH makes it importable.
    sys.path[:] = extra + [p for p in sys.path if p not in ("", ".", str(cwd))]
    os.environ.update(env)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                rc = main(argv)
            except SystemExit as e:  # argparse errors
                rc = e.code if isinstance(e.code, int) else 1
    finally:
        sys.path[:] = saved_path
        os.environ.clear()
        os.environ.update(saved_env)
        for name in set(sys.modules) - before:  # forget modules imported from the shared folder
            if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(cwd)):
                del sys.modules[name]
    assert rc == 0, f"`{line}` (run as fewstep {shlex.join(argv)}) exited with {rc}:\n{out.getvalue()[-3000:]}"


def run_shell(line: str, cwd: Path) -> None:
    """Any other command line (torchrun, ...) in bash, with TORCHRUN_PROCESSES and SIZE_OPTIONS applied."""
    words = shlex.split(line, comments=True)
    if words[0] == "torchrun":
        i = words.index("-m")
        assert words[i + 1] == "fewstep", line
        head = [re.sub(r"^(--nproc[-_]per[-_]node=)(\d+)$",
                       lambda m: m.group(1) + str(min(int(m.group(2)), TORCHRUN_PROCESSES)), w) for w in words[:i]]
        words = head + ["-m", "fewstep"] + shrink_args(words[i + 2:])
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(VENV_BIN), env.get("PATH", "")])
    p = subprocess.run(["bash", "-c", shlex.join(words)], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=TIMEOUT, check=False)
    assert p.returncode == 0, f"`{line}` exited with {p.returncode}:\n{(p.stdout + p.stderr)[-3000:]}"


def check_skipped_line(line: str) -> None:
    """What can be checked without running: a make target exists, fewstep options parse."""
    words = words_of(line)[1]
    if words[0] == "make":
        assert re.search(rf"^{re.escape(words[1])}:", (ROOT / "Makefile").read_text(), re.MULTILINE), line
    elif words[0] == "fewstep":
        from fewstep.cli import build_parser

        build_parser().parse_args(words[1:])


def run_block(block: Block, cwd: Path) -> None:
    """Run one block in ``cwd`` (pytest.skip after running the rest when a line or the block is skipped)."""
    if block.lang == "python":
        m = re.match(r"file=(\S+)", block.info)
        if m:
            (cwd / m.group(1)).parent.mkdir(parents=True, exist_ok=True)
            (cwd / m.group(1)).write_text(block.code)
            return
        compile(block.code, f"README.md:{block.line}", "exec")  # skipped or not, it must be valid Python
        reason = skip_reason(block.code, SKIP_BLOCKS)
        if reason:
            pytest.skip(reason)
        code = compile(shrink_python(block.code), f"README.md:{block.line} (sizes shrunk)", "exec")
        exec(code, {"__name__": "__readme__"})  # noqa: S102 (the README's own snippets)
        return
    skipped = []
    for line in commands(block.code):
        reason = skip_reason(line, SKIP_LINES)
        if reason:
            check_skipped_line(line)
            skipped.append(f"`{shlex.join(words_of(line)[1])}`: {reason}")
        elif words_of(line)[1][0] == "fewstep":
            run_fewstep(line, cwd)
        else:
            run_shell(line, cwd)
    if skipped:
        pytest.skip("; ".join(skipped))


BLOCKS = read_blocks(README.read_text(encoding="utf-8"))


class _Runner:
    """Runs the blocks in README order in one folder; a block's test first runs any earlier block not yet run
    (so that a single block can be selected with -k)."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.result = folder, {}

    def ensure(self, index: int) -> None:
        for b in BLOCKS[:index]:
            if b.index not in self.result:
                self._run(b)
            if self.result[b.index] == "failed":
                pytest.fail(f"an earlier block failed: README.md line {b.line} ({b.id})")
        self._run(BLOCKS[index], reraise=True)

    def _run(self, block: Block, reraise: bool = False) -> None:
        old = os.getcwd()
        os.chdir(self.folder)
        try:
            run_block(block, self.folder)
            self.result[block.index] = "passed"
        except pytest.skip.Exception:
            self.result[block.index] = "skipped"
            if reraise:
                raise
        except BaseException:
            self.result[block.index] = "failed"
            if reraise:
                raise
        finally:
            os.chdir(old)


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    shutil.copytree(ROOT / "examples", folder / "examples")  # the README's commands run from the repository root
    return _Runner(folder)


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block(block, runner):
    runner.ensure(block.index)


# ------------------------------------------------------------------------------------------------ the tables
def test_readme_starts_with_make_demo_and_make_test():
    first = BLOCKS[0]
    assert first.lang == "bash", first.code
    assert [words_of(c)[1] for c in commands(first.code)][:2] == [["make", "demo"], ["make", "test"]]


def test_skip_and_size_tables_match_the_readme():
    """No stale entries: every skip key and every size rewrite applies to something in the README."""
    bash = [c for b in BLOCKS if b.lang == "bash" for c in commands(b.code)]
    python = "\n".join(b.code for b in BLOCKS if b.lang == "python")
    for key in SKIP_LINES:
        assert any(key in c for c in bash), f"SKIP_LINES entry {key!r} matches no README command"
    for key in SKIP_BLOCKS:
        assert key in python, f"SKIP_BLOCKS entry {key!r} matches no README python block"
    args = [w[w.index("fewstep") + 1:] for w in (words_of(c)[1] for c in bash) if "fewstep" in w]
    for cmd in SIZE_OPTIONS:
        assert any(tuple(a[: len(cmd)]) == cmd for a in args), f"SIZE_OPTIONS {cmd} matches no README command"
    for name in [*SIZE_KEYWORDS, *SIZE_SETTINGS]:
        assert re.search(rf"\b{name}\(", python), f"SIZE_KEYWORDS / SIZE_SETTINGS {name!r} matches no README call"
    assert any(words_of(c)[1][0] == "torchrun" for c in bash)


def test_size_rewrites():
    assert shrink_args(["sample", "--seeds", "0-49999", "--out", "x.npz"]) == [
        "sample", "--seeds", "0-5", "--out", "x.npz", "--batch", "4"]
    assert shrink_args(["train", "--M=8"])[:3] == ["train", "--M", "2"]
    small = "budget=__import__('fewstep.learned', fromlist=['Budget']).Budget(total_samples=20, batch=10)"
    assert small in shrink_python("learned.train('amed', d, shape=(3,))")
    assert "budget=learned.Budget(lr=0.1, total_samples=20, batch=10)" in shrink_python(
        "learned.train('amed', d, shape=(3,), budget=learned.Budget(total_samples=8192, lr=0.1))")
    assert "teacher=Teacher('heun', M=2)" in shrink_python("train('amed', d, teacher=Teacher('heun', M=8))")
    assert "warmup=4, grid=13" in shrink_python("search_schedule(d, s, warmup=256)")
    with pytest.raises(ValueError, match="write it as Budget"):
        shrink_python("learned.train('amed', d, budget=b)")
    assert [shlex.split(c, comments=True) for c in commands("a \\\n  b  # c\n# d\n\ne\n")] == [["a", "b"], ["e"]]
