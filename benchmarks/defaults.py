"""Which classic sampler should be fewstep's default? A measured choice per NFE and guidance regime.

Without a tuned configuration, ``fewstep sample`` (and the diffusers scheduler, ``fewstep.k``) must pick a solver,
its options, AFS and a schedule from the NFE and the guidance scale alone (the sigma range is always the model's
own, :func:`fewstep.denoisers.sigma_range`). This benchmark measures a grid of classic configurations on every
model we have and picks the configuration whose WORST ratio RMSE / (that model's best RMSE at that NFE) over the
models of a regime is smallest:

* unguided: ``gmm`` (the exact GMM bed, 3x8x8, float64), ``unet`` (the shipped patch U-Net, 3x16x16), ``digits``
  (the shipped digits U-Net, unguided), ``ddpm`` (examples/ddpm_digits, its factory: VP eps, integer timesteps);
* guided: the digits U-Net under classifier-free guidance ``Guided(digits_unet(), arange(10), w)``, w = 2, 4, 7.5
  (40 seeds, so every class appears 4 times).

Grid: Euler, Heun, DPM-Solver-2, DPM-Solver++ 1M/2M/3M, UniPC 2M/3M bh2 and 2M bh1, iPNDM 2/3/4, iPNDM-v 2/3/4,
DEIS logrho 2/3 and tAB 3 (multistep solvers with their default lower_order_final), each with and without AFS
where the NFE is reachable (:func:`fewstep.steps_for_nfe`), on the schedules polynomial rho 2/3/5/7, logsnr and
time_uniform rho 1/2 between the model's own sigma_min and sigma_max. RMSE over all pixels to a reference:
DEIS-logrho order 4 on the polynomial rho-7 schedule with ``--ref-steps`` steps; its own error is bounded by the
same teacher with half the steps (reported).

Pruning (to fit the CPU budget): every configuration is measured at NFE 5 and 9 (the screen); at the other NFEs
only ``--top`` configurations: fewstep's current default (iPNDM4 + AFS, polynomial rho 7) and Euler on polynomial
rho 7, then, in turn, the best by the worst ratio of each regime at NFE 5 and at NFE 9, and the best by the mean
log ratio over all seven model settings at NFE 5 and 9, until ``--top`` are chosen. At those NFEs "the best RMSE
of the model" is the best of the configurations measured there.

Then: the simplest rule (one configuration, or one up to an NFE and another above it) per regime with the smallest
worst ratio over all NFEs, and for the guided digits model at w = 4 and 7.5 the class accuracy (judge:
:func:`fewstep.data.digit_classifier`, on images clamped to [-1, 1]) of the proposed guided default and the three
best guided configurations at NFE 3, 5 and 7, against the teacher's.

Every measurement is cached (``--cache``), so the study can run in pieces (``--models``, ``--stage``) and resume;
the CPU time (``time.process_time``) of every piece is summed into the report.
"""

from __future__ import annotations

import argparse
import json
import itertools
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

import fewstep
from fewstep.evaluation import REFERENCE_SOLVER, rmse
from fewstep.io import write_text_atomic
from fewstep.sampling import NonFiniteError

SEED0 = 10000  # RMSE seeds
ACC_SEED0 = 20000  # class-accuracy seeds (independent of the RMSE ones)
NFES = (3, 4, 5, 6, 7, 8, 9, 10)
SCREEN_NFES = (5, 9)
ACC_NFES = (3, 5, 7)
ACC_SCALES = (4.0, 7.5)
UNGUIDED = ("gmm", "unet", "digits", "ddpm")
GUIDED = ("digits_w2", "digits_w4", "digits_w7.5")
MODELS = UNGUIDED + GUIDED
SCALES = {"digits_w2": 2.0, "digits_w4": 4.0, "digits_w7.5": 7.5}
SOLVERS: tuple[tuple[str, str, dict[str, Any]], ...] = (  # label, solver, options
    ("Euler", "euler", {}),
    ("Heun", "heun", {}),
    ("DPM-Solver-2", "dpm2", {}),
    *((f"DPM-Solver++({k}M)", "dpmpp", {"max_order": k}) for k in (1, 2, 3)),
    ("UniPC(2M) bh2", "unipc", {"max_order": 2}),
    ("UniPC(3M) bh2", "unipc", {"max_order": 3}),
    ("UniPC(2M) bh1", "unipc", {"max_order": 2, "variant": "bh1"}),
    *((f"iPNDM{k}", "ipndm", {"max_order": k}) for k in (2, 3, 4)),
    *((f"iPNDM-v{k}", "ipndm_v", {"max_order": k}) for k in (2, 3, 4)),
    ("DEIS logrho2", "deis", {"max_order": 2, "deis_mode": "logrho"}),
    ("DEIS logrho3", "deis", {"max_order": 3, "deis_mode": "logrho"}),
    ("DEIS tAB2", "deis", {"max_order": 3}),  # tABk: k + 1 points; max_order counts points
)
SCHEDULES: tuple[tuple[str, float | None], ...] = (
    ("polynomial", 2.0), ("polynomial", 3.0), ("polynomial", 5.0), ("polynomial", 7.0), ("logsnr", None),
    ("time_uniform", 1.0), ("time_uniform", 2.0))
DEFAULT_KEY = "iPNDM4 +AFS, polynomial rho 7"  # fewstep's default today
EULER_KEY = "Euler, polynomial rho 7"
CFG_FIELDS = ("key", "label", "solver", "options", "afs", "schedule", "rho", "num_sigmas")
TOLERANCE = 1.05  # fewer distinct configurations are preferred when they cost at most this factor


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


# --------------------------------------------------------------------------------------------- configurations

def sched_name(kind: str, rho: float | None) -> str:
    return kind if rho is None else f"{kind} rho {rho:g}"


def sched_rho(rho: float | None) -> str:
    return "—" if rho is None else f"{rho:g}"


def config_key(label: str, afs: bool, kind: str, rho: float | None) -> str:
    return f"{label}{' +AFS' if afs else ''}, {sched_name(kind, rho)}"


def all_configs(nfe: int) -> list[dict[str, Any]]:
    """Every configuration of the grid that makes exactly ``nfe`` model evaluations."""
    out = []
    for label, solver, options in SOLVERS:
        for afs in (False, True):
            try:
                n = fewstep.steps_for_nfe(solver, nfe, afs, **options)
            except ValueError:
                continue
            for kind, rho in SCHEDULES:
                out.append({"key": config_key(label, afs, kind, rho), "label": label, "solver": solver,
                            "options": dict(options), "afs": afs, "schedule": kind, "rho": rho, "num_sigmas": n})
    return out


# ------------------------------------------------------------------------------------------------------ models

def load_model(name: str) -> tuple[Callable, tuple[int, ...], torch.dtype, str]:
    """(denoiser, sample shape, noise dtype, description)."""
    if name == "gmm":
        return fewstep.denoisers.gmm_denoiser(), (3, 8, 8), torch.float64, "exact GMM bed (8x8 natural-image patches)"
    if name == "unet":
        return fewstep.denoisers.default_unet(), (3, 16, 16), torch.float32, "shipped patch U-Net"
    if name == "digits":
        return fewstep.denoisers.digits_unet(), (1, 16, 16), torch.float32, "shipped digits U-Net, unguided"
    if name == "ddpm":
        root = str(Path(__file__).resolve().parents[1])  # examples/ lives at the repository root
        if root not in sys.path:
            sys.path.append(root)
        from examples.ddpm_digits import model as ddpm

        return ddpm.factory(), (1, 16, 16), torch.float32, "examples/ddpm_digits (VP eps, integer timesteps)"
    if name in SCALES:
        w = SCALES[name]
        return (fewstep.denoisers.Guided(fewstep.denoisers.digits_unet(), torch.arange(10), w), (1, 16, 16),
                torch.float32, f"digits U-Net, classifier-free guidance w = {w:g}, labels 0..9 in turn")
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


class Cache:
    """Rows and references on disk (JSON lines and .pt files); ``None``: in memory only."""

    def __init__(self, folder: str | None) -> None:
        self.dir = Path(folder) if folder else None
        self.rows: dict[tuple[str, int, str], dict] = {}
        self.log: list[dict] = []
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            for line in self._lines("rows.jsonl"):
                self.rows[(line["model"], line["nfe"], line["key"])] = line
            self.log = list(self._lines("log.jsonl"))

    def _lines(self, name: str) -> Iterable[dict]:
        p = self.dir / name
        if p.is_file():
            for line in p.read_text().splitlines():
                if line.strip():
                    yield json.loads(line)

    def _append(self, name: str, items: list[dict]) -> None:
        if self.dir is not None and items:
            with open(self.dir / name, "a") as f:
                f.write("".join(json.dumps(i) + "\n" for i in items))

    def add_rows(self, rows: list[dict]) -> None:
        for r in rows:
            self.rows[(r["model"], r["nfe"], r["key"])] = r
        self._append("rows.jsonl", rows)

    def add_log(self, entry: dict) -> None:
        self.log.append(entry)
        self._append("log.jsonl", [entry])

    def tensor(self, name: str, make: Callable[[], Any]) -> Any:
        if self.dir is None:
            return make()
        p = self.dir / f"{name}.pt"
        if p.is_file():
            return torch.load(p)
        value = make()
        torch.save(value, p)
        return value


class Bed:
    """A model with its seeds' noise and the reference (built on first use, cached)."""

    def __init__(self, name: str, seeds: int, ref_steps: int, cache: Cache) -> None:
        self.name, self.cache = name, cache
        self.den, self.shape, dtype, self.description = load_model(name)
        self.lo, self.hi, _ = fewstep.denoisers.sigma_range(self.den)
        self.seeds = seeds
        self.noise = fewstep.noise_for_seeds(range(SEED0, SEED0 + seeds), self.shape, dtype=dtype)
        self.ref_steps = ref_steps
        self._ref: dict | None = None

    def teacher(self, steps: int, noise: torch.Tensor | None = None) -> torch.Tensor:
        sig = fewstep.get_schedule("polynomial", steps + 1, self.lo, self.hi, 7.0)
        return fewstep.sample(self.den, self.noise if noise is None else noise, sig, REFERENCE_SOLVER[0],
                              **REFERENCE_SOLVER[1])

    @property
    def ref(self) -> dict:
        if self._ref is None:
            def make() -> dict:
                t = time.process_time()
                ref = self.teacher(self.ref_steps)
                err = rmse(self.teacher(self.ref_steps // 2), ref)
                return {"x": ref, "half_steps_rmse": err, "cpu_seconds": time.process_time() - t}

            self._ref = self.cache.tensor(f"ref_{self.name}_{self.seeds}_{self.ref_steps}", make)
        return self._ref

    def measure(self, cfg: dict, nfe: int) -> dict:
        sig = fewstep.get_schedule(cfg["schedule"], cfg["num_sigmas"], self.lo, self.hi, cfg["rho"] or 7.0)
        try:
            res = fewstep.solve(self.den, self.noise, sig, cfg["solver"], afs=cfg["afs"], **cfg["options"])
            assert res.nfe == nfe, (cfg["key"], res.nfe, nfe)
            err = rmse(res.x, self.ref["x"]) if bool(torch.isfinite(res.x).all()) else math.inf
        except NonFiniteError:
            err = math.inf
        return {"model": self.name, "nfe": nfe, **cfg, "rmse": err}


def run_configs(bed: Bed, nfe: int, cfgs: list[dict], cache: Cache, log: Callable[[str], None]) -> None:
    todo = [c for c in cfgs if (bed.name, nfe, c["key"]) not in cache.rows]
    if not todo:
        return
    t, load = time.process_time(), uptime()
    rows = [bed.measure(c, nfe) for c in todo]
    cache.add_rows(rows)
    cpu = time.process_time() - t
    cache.add_log({"model": bed.name, "nfe": nfe, "rows": len(rows), "cpu_seconds": cpu, "load_before": load,
                   "load_after": uptime()})
    best = min(rows, key=lambda r: r["rmse"])
    log(f"{bed.name} NFE {nfe}: {len(rows)} rows in {cpu:.0f} s CPU, best of them {best['key']} {best['rmse']:.4f}")


# ---------------------------------------------------------------------------------------------------- analysis

def rmse_table(rows: Iterable[dict]) -> dict[tuple[str, int], dict[str, float]]:
    """{(model, nfe): {key: rmse}}"""
    out: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        out.setdefault((r["model"], r["nfe"]), {})[r["key"]] = r["rmse"]
    return out


def ratios(table: dict, models: Iterable[str], nfe: int) -> dict[str, float]:
    """Worst ratio RMSE / (the model's best at this NFE) over ``models``, for the keys measured on all of them."""
    models = list(models)
    per = [table.get((m, nfe), {}) for m in models]
    if not per or any(not p for p in per):
        return {}
    keys = sorted(set.intersection(*(set(p) for p in per)))  # sorted: ties keep one order
    best = [min(p.values()) for p in per]
    return {k: max(p[k] / b for p, b in zip(per, best)) for k in keys}


def select(table: dict, models: Iterable[str], regimes: dict[str, tuple[str, ...]], top: int,
           screen_nfes: tuple[int, ...] = SCREEN_NFES) -> list[str]:
    """The configurations measured beyond the screen (see the module docstring)."""
    models = list(models)
    chosen = [k for k in (DEFAULT_KEY, EULER_KEY) if all(k in table.get((m, n), {}) for m in models
                                                          for n in screen_nfes)]
    lists = []
    for n in screen_nfes:
        for reg in regimes.values():
            w = ratios(table, reg, n)
            lists.append(sorted(w, key=w.get))
    mean = {}
    for k in sorted(set.intersection(*(set(table[(m, n)]) for m in models for n in screen_nfes))):
        logs = [math.log(table[(m, n)][k] / min(table[(m, n)].values())) for m in models for n in screen_nfes]
        mean[k] = sum(logs) / len(logs)
    lists.append(sorted(mean, key=mean.get))
    i = 0
    while len(chosen) < top and any(i < len(lst) for lst in lists):
        for lst in lists:
            if i < len(lst) and lst[i] not in chosen and len(chosen) < top:
                chosen.append(lst[i])
        i += 1
    return chosen


def worst_by_nfe(table: dict, models: Iterable[str], nfes: Iterable[int]) -> dict[int, dict[str, float]]:
    return {n: ratios(table, models, n) for n in nfes}


def search_rules(worst: dict[int, dict[str, float]]) -> dict[str, Any]:
    """The best rule of 1, 2 and 3 pieces (one configuration per contiguous NFE range) by the worst ratio over all
    NFEs (ties: the mean over NFEs), among configurations measured at every NFE; ``chosen``: the fewest pieces
    (at most two, the simple forms) whose worst ratio is within TOLERANCE of the two-piece rule's."""
    nfes = sorted(worst)
    keys = sorted(set.intersection(*(set(worst[n]) for n in nfes)))

    def piece(ns: list[int]) -> tuple[str, float, float]:
        k = min(keys, key=lambda k: (max(worst[n][k] for n in ns), sum(worst[n][k] for n in ns)))
        return k, max(worst[n][k] for n in ns), sum(worst[n][k] for n in ns)

    out: dict[str, Any] = {}
    for count, name in ((1, "single"), (2, "two"), (3, "three")):
        best = None
        for cuts in itertools.combinations(range(1, len(nfes)), count - 1):
            bounds = [0, *cuts, len(nfes)]
            parts = [(nfes[i:j], piece(nfes[i:j])) for i, j in zip(bounds, bounds[1:])]
            if len({p[1][0] for p in parts}) < count:
                continue  # the same configuration on both sides of a cut: a rule of fewer pieces
            score = (max(p[1][1] for p in parts), sum(p[1][2] for p in parts) / len(nfes))
            if best is None or score < best["score"]:
                best = {"pieces": [[ns[0], ns[-1], k] for ns, (k, _, _) in parts], "score": score}
        if best is not None:
            best["per_nfe"] = {n: worst[n][rule_key(best, n)] for n in nfes}
        out[name] = best
    two = out["two"]
    use_single = two is None or out["single"]["score"][0] <= TOLERANCE * two["score"][0]
    out["chosen"] = out["single"] if use_single else two
    return out


def rule_key(rule: dict, nfe: int) -> str:
    return next(k for lo, hi, k in rule["pieces"] if lo <= nfe <= hi)


def rule_text(rule: dict) -> str:
    p = rule["pieces"]
    if len(p) == 1:
        return f"{p[0][2]} (every NFE)"
    return "; ".join(f"NFE {nfe_range(lo, hi)}: {k}" for lo, hi, k in p)


def nfe_range(lo: int, hi: int) -> str:
    return str(lo) if lo == hi else f"{lo}-{hi}"


# ---------------------------------------------------------------------------------------------------- accuracy

def class_accuracy(per_class: int, scales: Iterable[float], nfes: Iterable[int], configs: dict[tuple[float, int],
                   list[dict]], teacher_steps: int, cache: Cache, log: Callable[[str], None]) -> list[dict]:
    """Per-class accuracy of the judge on ``per_class`` guided samples per class; the teacher's first."""
    from fewstep.data import digit_classifier

    clf, held_out = digit_classifier()
    labels = torch.arange(10).repeat(per_class)
    seeds = range(ACC_SEED0, ACC_SEED0 + len(labels))
    noise = fewstep.noise_for_seeds(seeds, (1, 16, 16))
    out = []

    def judge(x: torch.Tensor) -> dict:
        pred = torch.as_tensor(clf.predict(x.clamp(-1, 1).reshape(len(x), -1).double().numpy()))
        hit = (pred == labels).double()
        per = [float(hit[labels == c].mean()) for c in range(10)]
        return {"accuracy": float(hit.mean()), "per_class": per, "min_class": min(per)}

    for w in scales:
        den = fewstep.denoisers.Guided(fewstep.denoisers.digits_unet(), labels, w)
        lo, hi, _ = fewstep.denoisers.sigma_range(den)

        def teach() -> torch.Tensor:
            sig = fewstep.get_schedule("polynomial", teacher_steps + 1, lo, hi, 7.0)
            return fewstep.sample(den, noise, sig, REFERENCE_SOLVER[0], **REFERENCE_SOLVER[1])

        t = time.process_time()
        x_t = cache.tensor(f"acc_teacher_w{w:g}_{per_class}_{teacher_steps}", teach)
        teacher = judge(x_t)
        out.append({"w": w, "nfe": None, "key": f"teacher (DEIS logrho4, {teacher_steps} steps)", "role": "teacher",
                    **teacher, "rmse_to_teacher": 0.0, "held_out": held_out})
        log(f"accuracy w={w:g}: teacher {teacher['accuracy']:.3f} ({time.process_time() - t:.0f} s CPU)")
        for nfe in nfes:
            for cfg in configs[(w, nfe)]:
                t = time.process_time()
                sig = fewstep.get_schedule(cfg["schedule"], cfg["num_sigmas"], lo, hi, cfg["rho"] or 7.0)
                res = fewstep.solve(den, noise, sig, cfg["solver"], afs=cfg["afs"], **cfg["options"])
                assert res.nfe == nfe
                j = judge(res.x)
                out.append({"w": w, "nfe": nfe, "key": cfg["key"], "role": cfg["role"], **j,
                            "rmse_to_teacher": rmse(res.x, x_t), "ratio_to_teacher": j["accuracy"] /
                            teacher["accuracy"], "cpu_seconds": time.process_time() - t})
                log(f"accuracy w={w:g} NFE {nfe} {cfg['key']} ({cfg['role']}): {j['accuracy']:.3f}, "
                    f"worst class {j['min_class']:.2f}")
    return out


# ------------------------------------------------------------------------------------------------------ report

def fmt(v: float) -> str:
    return "inf" if not math.isfinite(v) else f"{v:.2f}"


READING = "## Reading (hand-written)"


def command_lines(doc: dict) -> list[str]:
    """The runs that made the cache (earlier pieces from the log, with their CPU time) and the final one."""
    runs = [e for e in doc.get("log", []) if "run" in e]
    if not runs:
        return [f"`{doc['command']}`"]
    out = ["The study ran in pieces sharing one cache (`--cache`); each run's CPU time:", ""]
    out += [f"{i + 1}. `python benchmarks/defaults.py {' '.join(e['run'])}`: {e['cpu_seconds'] / 60:.1f} min"
            for i, e in enumerate(runs)]
    final = doc["cpu_seconds"]["total"] - sum(e["cpu_seconds"] for e in runs)
    out.append(f"{len(runs) + 1}. `{doc['command']}` (measures what the cache lacks, then the analysis, the class "
               f"accuracy and this page): {final / 60:.1f} min")
    return out


def kept_reading(out: str) -> str | None:
    """The hand-written section of an existing page (kept when the page is written again)."""
    p = Path(out)
    if not p.is_file():
        return None
    text = p.read_text()
    if READING not in text:
        return None
    rest = text[text.index(READING):]
    end = rest.find("\n## ", len(READING))
    return rest if end < 0 else rest[:end + 1]


def render(doc: dict) -> str:
    table = rmse_table(doc["rows"])
    table = {k: {kk: (math.inf if v is None else v) for kk, v in t.items()} for k, t in table.items()}
    nfes = doc["nfes"]
    o = ["# A measured default sampler per NFE and guidance regime", "",
         *command_lines(doc), "",
         "Which classic configuration (solver, options, AFS, schedule) should fewstep use when nothing is tuned? "
         "Each model's RMSE to its reference (DEIS-logrho order 4, polynomial rho 7, "
         f"{doc['ref_steps']} steps) at each NFE, divided by the best RMSE any measured configuration reaches on "
         "that model at that NFE; a configuration's score in a regime is its WORST ratio over the regime's models. "
         "Sigma range: each model's own (`fewstep.denoisers.sigma_range`). Models: unguided = gmm (exact GMM bed, "
         "3x8x8, float64), unet (shipped patch U-Net), digits (shipped digits U-Net, unguided), ddpm "
         "(examples/ddpm_digits); guided = digits U-Net with classifier-free guidance w = 2, 4, 7.5. "
         f"Seeds {SEED0}- ({doc['seeds']} unguided, {doc['guided_seeds']} guided: labels 0..9 in turn).", "",
         f"Grid: {len(SOLVERS)} solvers/orders ({', '.join(s[0] for s in SOLVERS)}), with and without AFS where the "
         f"NFE is reachable, on {len(SCHEDULES)} schedules ({', '.join(sched_name(*s) for s in SCHEDULES)}): "
         f"{doc['grid_size']} configurations per NFE. **Pruning:** all of them at NFE "
         f"{' and '.join(map(str, doc['screen_nfes']))}; at the other NFEs only {len(doc['selected'])}: "
         "today's default "
         "and Euler rho 7, then in turn the best by each regime's worst ratio at each screened NFE and the best by the "
         "mean log ratio over all seven model settings (list at the end). At those NFEs a model's best is the best "
         "of these, so ratios there are relative to a pruned set (a ratio can only be underestimated, by at most "
         "what the screen missed).", ""]
    cpu = doc["cpu_seconds"]
    o += [f"CPU time (`time.process_time`, 1 torch thread, torch {doc['torch']}): **{cpu['total'] / 60:.1f} min** "
          f"in all (references {cpu['references'] / 60:.1f}, screen {cpu['screen'] / 60:.1f}, other NFEs "
          f"{cpu['extend'] / 60:.1f}, class accuracy {cpu['accuracy'] / 60:.1f} min). The machine has 2 shared "
          f"cores; load (`uptime`) at the start: `{doc['load_first']}`; at the end: `{doc['load_last']}`.", ""]

    if doc.get("reading"):
        o += [doc["reading"].rstrip(), ""]
    o += ["## The proposed rule", ""]
    prop = doc["proposal"]
    o += [prop["text"], "", "| regime | NFE | solver | options | AFS | schedule | rho |",
          "|---|---|---|---|---|---|---:|"]
    cfg_by_key = {r["key"]: r for r in doc["rows"]}
    for reg, rule in prop["rules"].items():
        for lo, hi, k in rule["pieces"]:
            c = cfg_by_key[k]
            o.append(f"| {reg} | {nfe_range(lo, hi)} | {c['solver']} | {json.dumps(c['options'])} | "
                     f"{'on' if c['afs'] else 'off'}"
                     f" | {c['schedule']} | {sched_rho(c['rho'])} |")
    o += ["", "Worst ratio of the proposed rule at every NFE (the best possible per NFE, i.e. the per-NFE minimax "
          "configuration, in brackets):", "",
          "| regime | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|" + "---:|" * len(nfes)]
    for reg, rule in prop["rules"].items():
        w = doc["worst"][reg]
        o.append(f"| {reg} | " + " | ".join(f"{w[str(n)][rule_key(rule, n)]:.2f} ({min(w[str(n)].values()):.2f})"
                                             for n in nfes) + " |")
    for reg, rule in prop["rules"].items():
        for other in prop["checked_on"].get(reg, []):
            w = doc["worst"][other]
            o.append(f"| {other} (under the {reg} rule) | " + " | ".join(
                f"{w[str(n)][rule_key(rule, n)]:.2f} ({min(w[str(n)].values()):.2f})" for n in nfes) + " |")
    o += ["", "Each model's ratio RMSE / (its best at that NFE) under the proposed rule:", "",
          "| model | rule | " + " | ".join(f"NFE {n}" for n in nfes) + " |", "|---|---|" + "---:|" * len(nfes)]
    for reg, rule in prop["rules"].items():
        for m in doc["regimes"][reg]:
            cells = []
            for n in nfes:
                t = table[(m, n)]
                cells.append(fmt(t[rule_key(rule, n)] / min(t.values())))
            o.append(f"| {m} | {reg} | " + " | ".join(cells) + " |")
    o += ["", "Rules considered, per regime (score: the worst ratio over all NFEs / its mean over NFEs; the rule "
          "chosen is the single configuration unless the best two-piece rule is more than "
          f"{(TOLERANCE - 1) * 100:.0f}% better; three pieces are shown for reference, not proposed):", "",
          "| regime | pieces | rule | score |", "|---|---:|---|---|"]
    for reg, res in doc["rules"].items():
        for name, count in (("single", 1), ("two", 2), ("three", 3)):
            r = res[name]
            if r is not None:
                mark = " (chosen)" if r["pieces"] == res["chosen"]["pieces"] else ""
                o.append(f"| {reg} | {count}{mark} | {rule_text(r)} | {r['score'][0]:.2f} / {r['score'][1]:.2f} |")
    o.append("")

    o += ["## Worst ratio per NFE and regime", "",
          "The three configurations with the smallest worst ratio, today's default (iPNDM4 + AFS, polynomial rho 7) "
          "and Euler (polynomial rho 7, no AFS); configurations measured at that NFE (all of the grid at NFE "
          f"{' and '.join(map(str, doc['screen_nfes']))}).", ""]
    for reg in doc["worst"]:
        o += [f"### {reg}: {', '.join(doc['regimes'][reg])}", "",
              "| NFE | measured | 1st | 2nd | 3rd | default | Euler |", "|---:|---:|---|---|---|---:|---:|"]
        for n in nfes:
            w = doc["worst"][reg][str(n)]
            top = sorted(w, key=lambda k: (w[k], k))[:3]
            o.append(f"| {n} | {len(w)} | " + " | ".join(f"{k} **{fmt(w[k])}**" for k in top)
                     + f" | {fmt(w.get(DEFAULT_KEY, math.nan))} | {fmt(w.get(EULER_KEY, math.nan))} |")
        o.append("")

    o += ["## Each model's best (for reference)", "", "| model | NFE | best configuration | RMSE | default | Euler |",
          "|---|---:|---|---:|---:|---:|"]
    for m in doc["models"]:
        for n in nfes:
            t = table.get((m, n))
            if not t:
                continue
            k = min(t, key=t.get)
            o.append(f"| {m} | {n} | {k} | {t[k]:.4f} | {t.get(DEFAULT_KEY, math.nan):.4f} | "
                     f"{t.get(EULER_KEY, math.nan):.4f} |")
    o += ["", "References (DEIS-logrho4, polynomial rho 7) and their own error (RMSE of the same teacher with half the "
          "steps to it):", "", "| model | sigma range | seeds | steps | half-steps RMSE |", "|---|---|---:|---:|---:|"]
    for m, r in doc["references"].items():
        o.append(f"| {m} | {r['sigma_min']:.6g} .. {r['sigma_max']:.6g} | {r['seeds']} | {r['steps']} | "
                 f"{r['half_steps_rmse']:.1e} |")
    o.append("")

    acc = doc.get("accuracy") or []
    if acc:
        o += ["## Class accuracy of the guided digits model", "",
              f"Judge: `fewstep.data.digit_classifier()` (held-out accuracy {acc[0]['held_out']:.3f}) on the samples "
              f"clamped to [-1, 1]; {doc['acc_per_class']} samples per class (seeds {ACC_SEED0}-"
              f"{ACC_SEED0 + 10 * doc['acc_per_class'] - 1}, labels 0..9 in turn). Goal at w = 4 and 7.5, NFE 5: the "
              "default reaches at least 0.9x the teacher's accuracy and no class below 0.5.", "",
              "| w | NFE | configuration | role | accuracy | / teacher | worst class | per class 0..9 | RMSE to "
              "teacher | goal |", "|---:|---:|---|---|---:|---:|---:|---|---:|---|"]
        for r in acc:
            goal = "" if r["nfe"] is None else ("met" if r["ratio_to_teacher"] >= 0.9 and r["min_class"] >= 0.5
                                                else "missed")
            o.append(f"| {r['w']:g} | {r['nfe'] or '—'} | {r['key']} | {r['role']} | {r['accuracy']:.3f} | "
                     f"{r.get('ratio_to_teacher', 1.0):.3f} | {r['min_class']:.2f} | "
                     f"{' '.join(f'{v:.2f}' for v in r['per_class'])} | {r['rmse_to_teacher']:.4f} | {goal} |")
        o.append("")
    o += ["## Configurations measured at every NFE", "", ", ".join(f"`{k}`" for k in doc["selected"]), ""]
    o += ["## Load during the run", "", "| piece | rows | CPU s | load before | load after |",
          "|---|---:|---:|---|---|"]
    for e in doc["log"]:
        if "rows" in e:
            o.append(f"| {e['model']} NFE {e['nfe']} | {e['rows']} | {e['cpu_seconds']:.0f} | "
                     f"{e['load_before'].split('load average: ')[-1]} | "
                     f"{e['load_after'].split('load average: ')[-1]} |")
    return "\n".join(o) + "\n"


def dump_json(doc: dict) -> str:
    """``doc`` as JSON, one line per measured row and accuracy row (inf: null)."""
    def clean(r: dict) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()}

    def finite(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return None if isinstance(v, float) and not math.isfinite(v) else v

    body = finite({k: v for k, v in doc.items() if k not in ("rows", "accuracy", "log", "reading")})
    text = json.dumps(body, indent=1, allow_nan=False)[:-2]
    for name in ("log", "accuracy", "rows"):
        items = doc.get(name) or []
        text += f',\n "{name}": [\n' + ",\n".join(json.dumps(clean(r), allow_nan=False) for r in items) + "\n ]"
    return text + "\n}\n"


# -------------------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS), help="models to measure in this run")
    p.add_argument("--stage", choices=("screen", "extend", "all"), default="all",
                   help="screen: NFE 5 and 9 only; extend: also the other NFEs; all: also accuracy and the report")
    p.add_argument("--seeds", type=int, default=32, help="seeds of the unguided models")
    p.add_argument("--guided-seeds", type=int, default=40, help="seeds of the guided model (a multiple of 10)")
    p.add_argument("--ref-steps", type=int, default=192)
    p.add_argument("--top", type=int, default=30, help="configurations measured beyond the screen")
    p.add_argument("--per-class", type=int, default=20, help="class-accuracy samples per class")
    p.add_argument("--teacher-steps", type=int, default=64, help="steps of the teacher of the accuracy table")
    p.add_argument("--cache", default=None, help="folder of cached rows and references (resume, run in pieces)")
    p.add_argument("--quick", action="store_true", help="tiny sizes (tests): 4/10 seeds, NFE 3 and 5, 8-step reference")
    p.add_argument("--out", default="docs/defaults.md")
    p.add_argument("--json", default="docs/defaults.json")
    p.add_argument("--rerender", action="store_true",
                   help="no measurement: the analysis and --out again from the rows in --json")
    args = p.parse_args(argv)
    if args.rerender:
        return rerender(args.json, args.out)
    torch.set_num_threads(1)
    nfes, screen_nfes, acc_nfes = NFES, SCREEN_NFES, ACC_NFES
    if args.quick:
        args.seeds, args.guided_seeds, args.ref_steps, args.per_class, args.teacher_steps = 4, 10, 8, 2, 8
        nfes, screen_nfes, acc_nfes = (3, 5), (5,), (5,)
    if args.guided_seeds % 10:
        raise SystemExit("--guided-seeds must be a multiple of 10 (every class equally often)")
    cache = Cache(args.cache)
    cpu0 = time.process_time()
    try:
        return run(args, argv, cache, cpu0, nfes, screen_nfes, acc_nfes)
    finally:  # every run's CPU time is logged, so the report sums the pieces of a study run in parts
        cache.add_log({"run": argv, "cpu_seconds": time.process_time() - cpu0, "load_end": uptime()})


def run(args: argparse.Namespace, argv: list[str], cache: Cache, cpu0: float, nfes: tuple[int, ...],
        screen_nfes: tuple[int, ...], acc_nfes: tuple[int, ...]) -> int:
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    measure = [m for m in args.models.split(",") if m]
    load_first = uptime()
    beds: dict[str, Bed] = {}

    def bed(m: str) -> Bed:
        if m not in beds:
            beds[m] = Bed(m, args.guided_seeds if m in SCALES else args.seeds, args.ref_steps, cache)
            r = beds[m].ref
            log(f"{m}: reference ({r['cpu_seconds']:.0f} s CPU), half-steps RMSE {r['half_steps_rmse']:.2e}")
        return beds[m]

    for m in measure:
        for n in screen_nfes:
            run_configs(bed(m), n, all_configs(n), cache, log)
    regimes = {"unguided": UNGUIDED, "guided": GUIDED}
    if args.stage == "screen":
        return 0
    table = rmse_table(cache.rows.values())
    missing = [m for m in MODELS for n in screen_nfes if (m, n) not in table]
    if missing:
        raise SystemExit(f"the screen is incomplete (missing {sorted(set(missing))}); run --stage screen for them")
    selected = select(table, MODELS, regimes, args.top, screen_nfes)
    for m in measure:
        for n in nfes:
            if n not in screen_nfes:
                cfgs = [c for c in all_configs(n) if c["key"] in selected]
                run_configs(bed(m), n, cfgs, cache, log)
    if args.stage == "extend":
        return 0
    table = rmse_table(cache.rows.values())
    missing = [m for m in MODELS for n in nfes if (m, n) not in table]
    if missing:
        raise SystemExit(f"the other NFEs are incomplete (missing {sorted(set(missing))}); run --stage extend")

    all_regimes, worst, rules, proposal = analyse(table, nfes)
    log(proposal["text"])

    by_nfe_key = {(r["nfe"], r["key"]): r for r in cache.rows.values() if r["model"] == "digits_w4"}
    acc_cfgs: dict[tuple[float, int], list[dict]] = {}
    guided_rule = proposal["rules"][proposal["guided_regime"]]
    for w in ACC_SCALES:
        for n in acc_nfes:
            w_guided = worst["guided"][n]
            keys = [(rule_key(guided_rule, n), "proposed guided default")]
            keys += [(k, f"guided #{i + 1} at NFE {n}") for i, k in enumerate(sorted(w_guided, key=w_guided.get)[:3])]
            keys += [(DEFAULT_KEY, "today's default"), (EULER_KEY, "Euler")]
            seen, cfgs = set(), []
            for k, role in keys:
                if k in seen:
                    cfgs[[c["key"] for c in cfgs].index(k)]["role"] += f", {role}"
                    continue
                seen.add(k)
                cfgs.append({**{f: by_nfe_key[(n, k)][f] for f in CFG_FIELDS}, "role": role})
            acc_cfgs[(w, n)] = cfgs
    t_acc = time.process_time()
    acc_rows = class_accuracy(args.per_class, ACC_SCALES, acc_nfes, acc_cfgs, args.teacher_steps, cache, log)
    cache.add_log({"stage": "accuracy", "cpu_seconds": time.process_time() - t_acc})

    # CPU time: every run on the same cache (the earlier ones logged) and this one so far.
    refs = sum(bed(m).ref["cpu_seconds"] for m in MODELS)
    screen = sum(e["cpu_seconds"] for e in cache.log if "rows" in e and e["nfe"] in screen_nfes)
    extend = sum(e["cpu_seconds"] for e in cache.log if "rows" in e and e["nfe"] not in screen_nfes)
    accuracy = sum(e["cpu_seconds"] for e in cache.log if e.get("stage") == "accuracy")
    total = sum(e["cpu_seconds"] for e in cache.log if "run" in e) + time.process_time() - cpu0
    references = {m: {"sigma_min": b.lo, "sigma_max": b.hi, "seeds": b.seeds, "steps": b.ref_steps,
                      "half_steps_rmse": b.ref["half_steps_rmse"]} for m, b in ((m, bed(m)) for m in MODELS)}
    rows = sorted(cache.rows.values(), key=lambda r: (MODELS.index(r["model"]), r["nfe"], r["rmse"]))
    first_load = next((e["load_before"] for e in cache.log if "load_before" in e), load_first)
    doc = {"command": "python benchmarks/defaults.py " + " ".join(argv), "torch": torch.__version__,
           "nfes": list(nfes), "screen_nfes": list(screen_nfes), "seeds": args.seeds,
           "guided_seeds": args.guided_seeds, "ref_steps": args.ref_steps, "grid_size": len(all_configs(5)),
           "regimes": all_regimes, "selected": selected, "references": references,
           "worst": {reg: {str(n): v for n, v in w.items()} for reg, w in worst.items()},
           "rules": rules, "proposal": proposal, "acc_per_class": args.per_class,
           "cpu_seconds": {"total": total, "references": refs, "screen": screen, "extend": extend,
                           "accuracy": accuracy},
           "load_first": first_load, "load_last": uptime(), "models": list(MODELS),
           "log": cache.log, "accuracy": acc_rows, "rows": rows}
    write_text_atomic(Path(args.json), dump_json(doc))
    write_text_atomic(Path(args.out), render({**doc, "reading": kept_reading(args.out)}))
    log(f"wrote {args.out} and {args.json}; CPU {total / 60:.1f} min in all")
    return 0


def analyse(table: dict, nfes: Iterable[int]) -> tuple[dict, dict, dict, dict]:
    """Regimes, their worst ratios per NFE, rules and the proposal: per regime, and for the split at a guidance
    scale (w = 2 with the unguided models)."""
    regimes = {"unguided": UNGUIDED, "guided": GUIDED, "all": MODELS,
               "unguided + w2": UNGUIDED + ("digits_w2",), "w4 + w7.5": ("digits_w4", "digits_w7.5")}
    worst = {reg: worst_by_nfe(table, ms, nfes) for reg, ms in regimes.items()}
    rules = {reg: search_rules(worst[reg]) for reg in regimes}
    return regimes, worst, rules, propose(rules, worst)


def rerender(path: str, out: str) -> int:
    """The analysis and the page again from a written JSON (no measurement; the accuracy rows are kept, and a
    change of the proposed guided rule since they were measured is an error)."""
    doc = json.loads(Path(path).read_text())
    for r in doc["rows"]:
        r["rmse"] = math.inf if r["rmse"] is None else r["rmse"]
    table = rmse_table(doc["rows"])
    regimes, worst, rules, proposal = analyse(table, doc["nfes"])
    rule = proposal["rules"][proposal["guided_regime"]]
    for r in doc.get("accuracy") or []:
        if "proposed guided default" in r["role"] and r["key"] != rule_key(rule, r["nfe"]):
            raise SystemExit(f"the proposed guided rule changed ({r['key']} at NFE {r['nfe']} was measured): "
                             "run the study again")
    doc.update(regimes=regimes, worst={reg: {str(n): v for n, v in w.items()} for reg, w in worst.items()},
               rules=rules, proposal=proposal)
    write_text_atomic(Path(path), dump_json(doc))
    write_text_atomic(Path(out), render({**doc, "reading": kept_reading(out)}))
    print(f"rendered {out} and {path} again from {path}", file=sys.stderr)
    return 0


def propose(rules: dict, worst: dict) -> dict:
    """One rule for everything if it costs each regime at most TOLERANCE over the regime's own rule; else the
    unguided rule and a guided one (the guided regime either w = 2, 4, 7.5, or w = 4, 7.5 with w = 2 following the
    unguided rule, whichever has the smaller worst ratio over the guided scales)."""
    def cost(rule: dict, reg: str) -> float:
        return max(worst[reg][n][rule_key(rule, n)] for n in worst[reg])

    own = {reg: cost(rules[reg]["chosen"], reg) for reg in ("unguided", "guided")}
    joint = rules["all"]["chosen"]
    if all(cost(joint, reg) <= TOLERANCE * own[reg] for reg in own):
        return {"rules": {"all": joint}, "guided_regime": "all", "checked_on": {},
                "text": f"One rule for every model and guidance scale: {rule_text(joint)}."}
    # Split at w: is w = 2 better served by the unguided-plus-w2 rule, with w >= 4 on its own?
    split_u, split_g = rules["unguided + w2"]["chosen"], rules["w4 + w7.5"]["chosen"]
    plain = max(cost(rules["unguided"]["chosen"], "unguided"), cost(rules["guided"]["chosen"], "guided"))
    split = max(cost(split_u, "unguided + w2"), cost(split_g, "w4 + w7.5"))
    if split < plain / TOLERANCE:
        return {"rules": {"unguided + w2": split_u, "w4 + w7.5": split_g}, "guided_regime": "w4 + w7.5",
                "checked_on": {"unguided + w2": ["w4 + w7.5"], "w4 + w7.5": ["unguided + w2"]},
                "text": f"Guidance scale w < 3 (and unguided): {rule_text(split_u)}. Guidance scale w >= 3: "
                        f"{rule_text(split_g)}."}
    return {"rules": {"unguided": rules["unguided"]["chosen"], "guided": rules["guided"]["chosen"]},
            "guided_regime": "guided", "checked_on": {"unguided": ["guided"], "guided": ["unguided"]},
            "text": f"Unguided: {rule_text(rules['unguided']['chosen'])}. Guided (w > 1): "
                    f"{rule_text(rules['guided']['chosen'])}."}


if __name__ == "__main__":
    sys.exit(main())
