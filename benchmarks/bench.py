"""``make bench``: quality, speed and training cost of fewstep beside diffusers, written to BENCHMARKS.md.

    .venv/bin/python -m benchmarks.bench [--out BENCHMARKS.md] [--device cpu|cuda] [--dtype fp32|bf16|fp16]
                                         [--threads 1] [--sections train,quality,nan,speed] [--quick]

1. Quality: RMSE to the reference solution and Fréchet distance (fixed random features) for every solver of
   ``fewstep.evaluation.BASELINES`` at NFE 3/5/7/9 (``evaluation.solver_table``), and the diffusers schedulers
   (DPMSolverMultistep, UniPCMultistep, DEISMultistep, EulerDiscrete, HeunDiscrete; benchmarks/diffusers_harness)
   on the same model, seeds and sigmas: the analytic natural-patch Gaussian-mixture bed (exact denoiser) and the
   shipped U-Net (teacher reference), plus AMED predictors trained in section 3.
2. Speed: wall time of a full sample at NFE 5 over NFE x the wall time of one denoiser call on the U-Net, for
   every solver with and without AMED, and for the same loop driven by diffusers' schedulers; medians of
   interleaved repeats, the call timed inside the same run.
3. Training cost of AMED predictors (benchmarks/train_cost.py, one fresh process each).
4. No-NaN sweep of every solver at every NFE in the speed dtype / device (the GPU check: ``--device cuda
   --dtype bf16 --batch 256``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file: make the `benchmarks` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fewstep  # noqa: E402
from benchmarks.diffusers_harness import diffusers_sampler  # noqa: E402
from fewstep import data, evaluation, learned, metrics  # noqa: E402
from fewstep.denoisers import HookFeatures, gmm_denoiser  # noqa: E402
from fewstep.evaluation import BASELINES, SolverSpec  # noqa: E402
from fewstep.experiments.bed import Bed  # noqa: E402
from fewstep.io import write_text_atomic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NFES = (3, 5, 7, 9)
SPEED_NFE = 5
SECTIONS = ("train", "quality", "nan", "speed")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
BED_SEED0 = 10**8  # evaluation seeds disjoint from AMED's training seeds
QUICK = dict(batch=2, repeats=1, warmup=0, bed_seeds=8, bed_ref_steps=16, unet_seeds=4, unet_ref_steps=8, fd_ref=256,
             nan_batch=2, train_samples=2, train_batch=2, train_M=1, nfes="5")  # --quick: the test's sizes


@dataclass(frozen=True)
class DiffusersSpec:
    """A diffusers scheduler run through the harness, with the fewstep solver it is timed against."""

    label: str
    name: str
    options: dict[str, Any] = field(default_factory=dict)
    ours: SolverSpec | None = None

    def steps(self, nfe: int) -> int | None:
        """Steps for ``nfe`` model calls (Heun in diffusers' layout: 2N-1), or None if unreachable."""
        if self.name == "heun":
            return (nfe + 1) // 2 if nfe % 2 else None
        return nfe


DIFFUSERS: tuple[DiffusersSpec, ...] = (
    DiffusersSpec("DPMSolverMultistep 2M", "dpmpp", {"solver_order": 2}, SolverSpec("DPM-Solver++(2M)", "dpmpp",
                                                                                    {"max_order": 2})),
    DiffusersSpec("DPMSolverMultistep 3M", "dpmpp", {"solver_order": 3}, SolverSpec("DPM-Solver++(3M)", "dpmpp",
                                                                                    {"max_order": 3})),
    DiffusersSpec("UniPCMultistep 2M bh2", "unipc", {"solver_order": 2}, SolverSpec("UniPC(2M) bh2", "unipc",
                                                                                    {"max_order": 2})),
    DiffusersSpec("UniPCMultistep 3M bh2", "unipc", {"solver_order": 3}, SolverSpec("UniPC(3M) bh2", "unipc",
                                                                                    {"max_order": 3})),
    DiffusersSpec("DEISMultistep 3 logrho", "deis", {"solver_order": 3},
                  SolverSpec("DEIS logrho3", "deis", {"max_order": 3, "deis_mode": "logrho"})),
    DiffusersSpec("EulerDiscrete", "euler", {}, SolverSpec("Euler (DDIM)", "euler")),
    DiffusersSpec("HeunDiscrete (last step Euler)", "heun", {"final_euler": True},
                  SolverSpec("Heun", "heun", afs=True)),
)


# ------------------------------------------------------------------------------------------------ machine


def machine(device: str, threads: int) -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import diffusers

    info = {
        "cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "torch_threads": threads, "torch": torch.__version__, "diffusers": diffusers.__version__,
        "numpy": np.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "device": device,
    }
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ 1. quality


def _fd_fn(extractor: metrics.FeatureExtractor, ref_stats: tuple[np.ndarray, np.ndarray],
           clamp: bool) -> Callable[[torch.Tensor], float]:
    def fd(x: torch.Tensor) -> float:
        x = x.detach().float().cpu()
        mu, sigma, _ = metrics.feature_stats((x.clamp(-1, 1) if clamp else x).numpy(), extractor)
        return metrics.frechet_distance(mu, sigma, *ref_stats)
    return fd


def bed_on(device: torch.device, denoiser: Callable, shape: tuple[int, ...], seeds: Sequence[int], ref_steps: int,
           model_id: str | None, description: str) -> Bed:
    """The quality bed (float64 noise for ``seeds``, DEIS-4 reference with ``ref_steps`` steps) with its noise and
    reference on ``device``, where ``denoiser`` already is. On the CPU this is
    :meth:`fewstep.experiments.bed.Bed.build`.
    ``Bed.build`` draws its noise on the CPU and has no device argument, so elsewhere the same seeds are drawn
    (on the CPU, as always) and moved to ``device`` first and the reference is solved there, as before the bed
    existed: one ``Bed`` with the same fields."""
    if device.type == "cpu":
        return Bed.build(denoiser, shape, seeds=seeds, ref_steps=ref_steps, model_id=model_id, dtype=torch.float64,
                         description=description)
    seeds = list(seeds)
    noise = fewstep.noise_for_seeds(seeds, shape, torch.float64, device)
    ref, err = evaluation.reference_solution(denoiser, noise, steps=ref_steps)
    return Bed(denoiser=denoiser, noise=noise, ref=ref, ref_error=err, shape=tuple(shape), model_id=model_id,
               dtype=torch.float64, description=description,
               info={"seeds": len(seeds), "first_seed": seeds[0], "ref_steps": ref_steps})


def diffusers_table(bed: Bed, nfes: Sequence[int], specs: Sequence[DiffusersSpec],
                    on_sample: Callable) -> list[dict[str, Any]]:
    """:func:`fewstep.evaluation.solver_table` rows for diffusers schedulers (same seeds, sigmas, reference)."""
    denoiser, noise = bed.denoiser, bed.noise
    rows = []
    for spec in specs:
        run = diffusers_sampler(spec.name, torch.float64, **spec.options)
        row: dict[str, Any] = {"label": f"diffusers {spec.label}", "solver": spec.name, "options": spec.options}
        for nfe in nfes:
            n = spec.steps(nfe)
            if n is None:
                row[nfe] = None
                continue
            sig = fewstep.get_schedule("polynomial", n + 1)
            counted = Meter(denoiser, timing=False)
            with torch.inference_mode():
                x = run(counted, noise.double() * sig[0], sig)
            if counted.calls != nfe:
                raise AssertionError(f"{spec.label}: {counted.calls} model calls, expected {nfe}")
            row[nfe] = bed.rmse(x)
            on_sample(row, nfe, x)
        rows.append(row)
    return rows


def quality(title: str, make_bed: Callable[[], Bed], ref_steps: int, fd: Callable,
            extra: Sequence[tuple[str, Any]] = (), nfes: Sequence[int] = NFES, progress: bool = True) -> dict[str, Any]:
    """RMSE / FD rows of fewstep's baselines, diffusers and ``extra`` (label, learned sampler) on the bed that
    ``make_bed`` builds (its reference solution, with ``ref_steps`` steps, is part of the section's time)."""
    t0 = time.perf_counter()
    say = print if progress else (lambda *a, **k: None)
    say(f"[quality] {title}: reference ({ref_steps} steps) ...", flush=True)
    bed = make_bed()
    denoiser, noise, ref = bed.denoiser, bed.noise, bed.ref

    def add_fd(row: dict[str, Any], nfe: int, x: torch.Tensor) -> None:
        row.setdefault("fd", {})[nfe] = fd(x)

    say(f"[quality] {title}: fewstep solvers ...", flush=True)
    rows = bed.solver_table(nfes, BASELINES, on_sample=add_fd)
    for label, pred in extra:
        res = fewstep.solve(denoiser, noise, predictor=pred)
        row = {"label": label, res.nfe: bed.rmse(res.x)}
        add_fd(row, res.nfe, res.x)
        rows.append(row)
    say(f"[quality] {title}: diffusers schedulers ...", flush=True)
    rows += diffusers_table(bed, nfes, DIFFUSERS, add_fd)
    return {"title": title, "nfes": list(nfes), "seeds": noise.shape[0], "ref_steps": ref_steps,
            "ref_rel_error": bed.ref_error, "ref_fd": fd(ref), "rows": rows, "seconds": time.perf_counter() - t0}


def _fd_table(rows: list[dict[str, Any]], nfes: Sequence[int]) -> str:
    lines = ["| solver | " + " | ".join(f"FD@{n}" for n in nfes) + " |", "|---|" + "---:|" * len(nfes)]
    for r in rows:
        fd = r.get("fd", {})
        lines.append(f"| {r['label']} | " + " | ".join(f"{fd[n]:.4f}" if n in fd else "—" for n in nfes) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ 2. speed


@dataclass
class Job:
    label: str
    kind: str  # "fewstep" | "diffusers"
    nfe: int
    run: Callable[[], torch.Tensor]
    pair: str | None = None  # label of the diffusers job timed against this one
    times: list[float] = field(default_factory=list)
    calls: list[float] = field(default_factory=list)  # the denoiser call timed just before each run
    inside: list[float] = field(default_factory=list)  # time spent in the denoiser during each run (CPU only)


class Meter:
    """The denoiser, counting its calls and, with ``timing``, the time spent in them while a sample runs (the
    model time inside the sample's own wall time). Timing is for the CPU: on a GPU it would have to synchronise
    at every call, changing what is measured."""

    def __init__(self, model: Callable, timing: bool = True) -> None:
        self.model, self.timing = model, timing
        self.total, self.calls = 0.0, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if not self.timing:
            return self.model(x, sigma)
        t = time.perf_counter()
        out = self.model(x, sigma)
        self.total += time.perf_counter() - t
        return out


def speed_jobs(model: Callable, network: torch.nn.Module, noise: torch.Tensor) -> list[Job]:
    """Every fewstep baseline at NFE 5, AMED-Solver / AMED-Plugin (iPNDM) with a predictor-free table and a
    feature predictor (untrained: same cost), and the diffusers schedulers with their fewstep counterparts.
    ``model`` is the denoiser (a :class:`Meter`), ``network`` the module whose middle block gives features."""
    jobs: list[Job] = []
    specs = list(BASELINES) + [d.ours for d in DIFFUSERS if d.ours is not None and d.ours not in BASELINES]

    def add_fewstep(label: str, nfe: int, denoiser: Callable, sig: torch.Tensor, solver: Any, afs: bool,
                    **options: Any) -> None:
        def run() -> torch.Tensor:
            return fewstep.sample(denoiser, noise, sig, solver, afs=afs, **options)
        jobs.append(Job(label, "fewstep", nfe, run))

    for spec in specs:
        nfe = SPEED_NFE if spec.solver != "heun" or spec.afs else SPEED_NFE + 1
        n = fewstep.steps_for_nfe(spec.solver, nfe, spec.afs, **spec.options)
        label = spec.label + (" +AFS" if spec.afs else "")
        add_fewstep(label, nfe, model, fewstep.get_schedule("polynomial", n), spec.solver, spec.afs, **spec.options)

    hooked = HookFeatures(model, network)
    with torch.inference_mode():
        _, f = hooked.denoise_with_features(noise[:1], torch.ones(1, device=noise.device))
    fdim = int(f.reshape(1, -1).shape[1])
    for cls, name in ((learned.AMEDSampler, "AMED-Solver"), (learned.AMEDPluginSampler, "AMED-Plugin iPNDM")):
        base = "ipndm" if cls.takes_base else None
        n = fewstep.steps_for_nfe(cls.probe_solver(None, base, True), SPEED_NFE, True)
        sig = fewstep.get_schedule("polynomial", n)
        for feats in (None, fdim):
            opts = {"scale_dir": 0.01} if feats is None else {
                "scale_dir": 0.01, "features": "hook", "feature_module": hooked.module_name, "feature_dim": feats}
            pred = cls(cls.make_config(sig, afs=True, base=base, options=opts)).to(noise.device).eval()
            label = f"{name} +AFS, {'table' if feats is None else 'feature predictor'}"
            add_fewstep(label, SPEED_NFE, model if feats is None else hooked, sig, pred.solver(), True)

    by_label = {j.label: j for j in jobs}
    for d in DIFFUSERS:
        n = d.steps(SPEED_NFE)
        sig = fewstep.get_schedule("polynomial", n + 1)
        run_d = diffusers_sampler(d.name, noise.dtype, **d.options)

        def run(run_d: Callable = run_d, sig: torch.Tensor = sig) -> torch.Tensor:
            return run_d(model, noise * sig[0], sig)

        label = f"diffusers {d.label}"
        jobs.append(Job(label, "diffusers", SPEED_NFE, run))
        ours = d.ours.label + (" +AFS" if d.ours.afs else "")
        by_label[ours].pair = label
    return jobs


def time_jobs(jobs: list[Job], call: Callable[[], Any], meter: Meter, device: torch.device, repeats: int,
              warmup: int = 1, progress: bool = True) -> None:
    """Interleaved timing: every repeat visits the jobs in a fresh random order, timing one denoiser call right
    before each full sample, so that drift of a shared machine hits calls and samples alike; ``meter`` also
    gives the time spent in model calls inside each sample, and checks the NFE."""
    def timed(f: Callable[[], Any]) -> float:
        _sync(device)
        t = time.perf_counter()
        f()
        _sync(device)
        return time.perf_counter() - t

    with torch.inference_mode():
        for _ in range(warmup):
            for j in jobs:
                timed(call)
                timed(j.run)
        for rep in range(repeats):
            order = list(jobs)
            random.Random(rep).shuffle(order)
            for j in order:
                j.calls.append(timed(call))
                meter.total, meter.calls = 0.0, 0
                j.times.append(timed(j.run))
                j.inside.append(meter.total)
                if meter.calls != j.nfe:
                    raise AssertionError(f"{j.label}: {meter.calls} model calls, expected NFE {j.nfe}")
            if progress:
                print(f"[speed] repeat {rep + 1}/{repeats}", flush=True)


def speed(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, batch: int, repeats: int,
          warmup: int = 1, progress: bool = True) -> dict[str, Any]:
    """Section 2 on ``model`` in ``dtype`` (the state stays float32), batch ``batch``."""
    t0 = time.perf_counter()
    model = model.to(device=device, dtype=dtype)
    shape = (model.config.channels, model.config.img_resolution, model.config.img_resolution)
    noise = fewstep.noise_for_seeds(range(batch), shape, device=device)
    sig_call = torch.ones(batch, device=device)  # what the sampler passes: sigma in the state's dtype, shape (B,)
    x_call = noise * 10.0
    meter = Meter(model, timing=device.type == "cpu")
    jobs = speed_jobs(meter, model, noise)
    time_jobs(jobs, lambda: model(x_call, sig_call), meter, device, repeats, warmup, progress)
    all_calls = [t for j in jobs for t in j.calls]
    call_med = statistics.median(all_calls)
    by_label = {j.label: j for j in jobs}

    def in_sample(j: Job) -> float | None:
        return statistics.median(t / i for t, i in zip(j.times, j.inside)) if meter.timing else None

    rows = []
    for j in jobs:
        med = statistics.median(j.times)
        row = {"label": j.label, "kind": j.kind, "nfe": j.nfe, "sample_ms": 1e3 * med,
               "ratio": med / (j.nfe * call_med),
               "ratio_paired": statistics.median(t / (j.nfe * c) for t, c in zip(j.times, j.calls)),
               "ratio_in_sample": in_sample(j), "repeats": len(j.times)}
        if j.pair is not None:
            other = by_label[j.pair]
            row["diffusers"] = j.pair
            row["vs_diffusers"] = med / statistics.median(other.times)
            row["vs_diffusers_in_sample"] = (row["ratio_in_sample"] / in_sample(other)) if meter.timing else None
        rows.append(row)
    return {"batch": batch, "dtype": str(dtype).replace("torch.", ""), "device": str(device), "nfe": SPEED_NFE,
            "call_ms": 1e3 * call_med, "call_min_ms": 1e3 * min(all_calls), "calls_timed": len(all_calls),
            "repeats": repeats, "rows": rows, "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------------ 3. training


def train_cost(students: Sequence[str], samples: int, batch: int, M: int, threads: int, save_dir: Path,
               progress: bool = True) -> list[dict[str, Any]]:
    """benchmarks/train_cost.py once per student (``amed``: AMED-Solver, else AMED-Plugin on that base), each in a
    fresh process (its own peak RSS)."""
    out = []
    for student in students:
        if progress:
            print(f"[train] {student}: {samples} samples, batch {batch}, M={M} ...", flush=True)
        js = save_dir / f"cost_{student}.json"
        method = ["--method", "amed"] if student == "amed" else ["--method", "plugin", "--base", student]
        cmd = [sys.executable, "-m", "benchmarks.train_cost", *method, "--out", str(js),
               "--save-dir", str(save_dir), "--samples", str(samples), "--batch", str(batch), "--M", str(M),
               "--threads", str(threads)]
        subprocess.run(cmd, check=True, cwd=ROOT)
        out.append(json.loads(js.read_text()))
    return out


# ------------------------------------------------------------------------------------------------ 4. no NaN


def nan_sweep(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, batch: int,
              nfes: Sequence[int] = NFES) -> dict[str, Any]:
    """Every baseline and diffusers scheduler at every NFE in ``dtype`` on ``device``: finite output? The sampler
    also checks every model output (``check_finite``), so a NaN anywhere in the trajectory is caught."""
    model = model.to(device=device, dtype=dtype)
    shape = (model.config.channels, model.config.img_resolution, model.config.img_resolution)
    noise = fewstep.noise_for_seeds(range(batch), shape, device=device)
    rows = []
    with torch.inference_mode():
        for spec in BASELINES:
            row: dict[str, Any] = {"label": spec.label + (" +AFS" if spec.afs else "")}
            for nfe in nfes:
                try:
                    n = fewstep.steps_for_nfe(spec.solver, nfe, spec.afs, **spec.options)
                except ValueError:
                    continue
                try:
                    x = fewstep.sample(model, noise, fewstep.get_schedule("polynomial", n), spec.solver,
                                       afs=spec.afs, **spec.options)
                    row[nfe] = bool(torch.isfinite(x).all())
                except fewstep.NonFiniteError:
                    row[nfe] = False
            rows.append(row)
        for d in DIFFUSERS:
            row = {"label": f"diffusers {d.label}"}
            run = diffusers_sampler(d.name, noise.dtype, **d.options)
            for nfe in nfes:
                n = d.steps(nfe)
                if n is not None:
                    sig = fewstep.get_schedule("polynomial", n + 1)
                    row[nfe] = bool(torch.isfinite(run(model, noise * sig[0], sig)).all())
            rows.append(row)
    runs = sum(1 for r in rows for n in nfes if n in r)
    bad = [(r["label"], n) for r in rows for n in nfes if r.get(n) is False]
    return {"device": str(device), "dtype": str(dtype).replace("torch.", ""), "batch": batch, "nfes": list(nfes),
            "rows": rows,
            "runs": runs, "non_finite": bad}


# ------------------------------------------------------------------------------------------------ report


def _speed_md(sp: dict[str, Any]) -> str:
    def f(v: float | None, fmt: str = ".3f") -> str:
        return "—" if v is None else format(v, fmt)

    lines = [
        f"Denoiser call (U-Net, batch {sp['batch']}, {sp['dtype']}, {sp['device']}): median {sp['call_ms']:.2f} ms, "
        f"min {sp['call_min_ms']:.2f} ms over {sp['calls_timed']} separately timed calls.",
        "",
        "| sampler | NFE | sample ms (median) | ratio: in-sample calls | paired call | medians | ≤ 1.03 "
        "| fewstep / diffusers: in-sample ratios | wall medians |",
        "|---|---:|---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for r in sp["rows"]:
        main = r["ratio_in_sample"] if r["ratio_in_sample"] is not None else r["ratio_paired"]
        vs = vs_wall = ""
        if "vs_diffusers" in r:
            vs = f"{f(r['vs_diffusers_in_sample'])} (vs {r['diffusers'].removeprefix('diffusers ')})"
            vs_wall = f(r["vs_diffusers"])
        lines.append(f"| {r['label']} | {r['nfe']} | {r['sample_ms']:.1f} | {f(r['ratio_in_sample'])} "
                     f"| {r['ratio_paired']:.3f} | {r['ratio']:.3f} | {'✓' if main <= 1.03 else '✗'} | {vs} "
                     f"| {vs_wall} |")
    return "\n".join(lines)


def _train_md(rows: list[dict[str, Any]]) -> str:
    lines = ["| predictor | NFE | samples (batch × iterations) | M | train s | s / iteration | peak RSS MiB "
             "(growth) | teacher evals / sample: computed | counted | student evals / sample |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['label']} (feature predictor, {r['predictor_parameters']:,} params) | {r['nfe']} "
            f"| {r['batch'] * r['iterations']} ({r['batch']} × {r['iterations']}) | {r['M']} | {r['seconds']:.1f} "
            f"| {r['seconds_per_iteration']:.2f} | {r['peak_rss_mib']:.0f} (+{r['peak_rss_growth_mib']:.0f}) "
            f"| {r['teacher_evals_per_sample_computed']} | {r['teacher_evals_per_sample_counted']:g} "
            f"| {r['student_evals_per_sample_counted']:g} |")
    return "\n".join(lines)


def _nan_md(nn: dict[str, Any]) -> str:
    lines = [f"{nn['runs']} runs ({nn['dtype']}, {nn['device']}, batch {nn['batch']}); non-finite: "
             + (", ".join(f"{lab} @ NFE {n}" for lab, n in nn["non_finite"]) or "none") + ".", "",
             "| sampler | " + " | ".join(f"NFE {n}" for n in nn["nfes"]) + " |", "|---|" + ":---:|" * len(nn["nfes"])]
    for r in nn["rows"]:
        lines.append(f"| {r['label']} | " + " | ".join(
            "—" if n not in r else ("finite" if r[n] else "**NaN/inf**") for n in nn["nfes"]) + " |")
    return "\n".join(lines)


def _summary(res: dict[str, Any]) -> list[str]:
    """Headline numbers, computed from the sections below."""
    lines = []
    if res.get("speed"):
        rows = res["speed"]["rows"]
        key = "ratio_in_sample" if rows[0]["ratio_in_sample"] is not None else "ratio_paired"
        ours = [r for r in rows if r["kind"] == "fewstep"]
        worst = max(ours, key=lambda r: r[key])
        theirs = [r[key] for r in rows if r["kind"] == "diffusers"]
        vs = [r["vs_diffusers_in_sample" if key == "ratio_in_sample" else "vs_diffusers"] for r in ours
              if "vs_diffusers" in r]
        lines.append(f"Speed (NFE {res['speed']['nfe']}, batch {res['speed']['batch']}, {res['speed']['device']}): "
                     f"sample time / (NFE × model call) {min(r[key] for r in ours):.3f}–{worst[key]:.3f} for the "
                     f"{len(ours)} fewstep samplers (highest: {worst['label']}), {min(theirs):.3f}–{max(theirs):.3f} "
                     f"for diffusers; fewstep / diffusers {min(vs):.3f}–{max(vs):.3f}"
                     f" ({'in-sample' if key == 'ratio_in_sample' else 'paired'} estimate).")
    for q in res.get("quality", []):
        nfe = 5 if 5 in q["nfes"] else q["nfes"][0]
        ranked = sorted((r for r in q["rows"] if r.get(nfe) is not None), key=lambda r: r[nfe])
        by = {r["label"]: r for r in q["rows"]}
        diffs = [abs(by[d.ours.label][n] - by[f"diffusers {d.label}"][n]) / by[d.ours.label][n]
                 for d in DIFFUSERS if d.name in ("dpmpp", "unipc", "euler") for n in q["nfes"]]
        lines.append(f"Quality, {q['title'].split(' (')[0]}, NFE {nfe}: lowest RMSE {ranked[0]['label']} "
                     f"({ranked[0][nfe]:.4f}), then {ranked[1]['label']} ({ranked[1][nfe]:.4f}). Where the algorithms "
                     f"coincide (DPM-Solver++ 2M/3M, UniPC 2M/3M, Euler) fewstep's and diffusers' RMSE differ by at "
                     f"most {max(diffs):.1e} relative.")
    for r in res.get("train", []):
        lines.append(f"Training {r['label']} (NFE {r['nfe']}): {r['seconds_per_iteration']:.2f} s per iteration of "
                     f"{r['batch']} samples on CPU, peak RSS {r['peak_rss_mib']:.0f} MiB, "
                     f"{r['teacher_evals_per_sample_computed']} teacher evaluations per training sample "
                     f"(counted: {r['teacher_evals_per_sample_counted']:g}).")
    if res.get("nan"):
        nn = res["nan"]
        lines.append(f"No NaN/inf: {nn['runs'] - len(nn['non_finite'])} of {nn['runs']} runs finite "
                     f"({nn['dtype']}, {nn['device']}).")
    return lines


FRONTIER_JSON = {"analytic bed": "docs/frontier.json", "shipped U-Net": "docs/frontier_unet.json",
                 "flow-matching bed": "docs/frontier_flow.json"}


def _frontier_md() -> list[str]:
    """The frontier summary, read from the JSON files that ``benchmarks/frontier.py --json`` saved (no training
    here; rerun that script to refresh them)."""
    from benchmarks.frontier import goal_ratio

    lines = []
    for bed, rel in FRONTIER_JSON.items():
        path = ROOT / rel
        if not path.exists():
            continue
        res = json.loads(path.read_text())
        page = rel.replace(".json", ".md")
        m = res["meta"][0]
        g = goal_ratio(res["rows"])
        tr = m.get("train")
        budget = ("each method's default training budget" if m.get("budget") == "default" else
                  f"one training budget for all, {tr['batch']} x {tr['total_samples']}, M {tr['M']}")
        head = f"- {bed} ([{page}]({page}), {m['seeds']} seeds, {budget}, {m['date']}): "
        if g:
            bl, bc, ratio = g
            head += (f"best learned at NFE 5 / best classic at NFE 9 = **{ratio:.2f}x** ({bl['label']} "
                     f"{bl['rmse']:.4f} vs {bc['label']} {bc['rmse']:.4f})")
        best = []
        for nfe in sorted({r["nfe"] for r in res["rows"] if r["kind"] == "learned"}):
            le = min((r for r in res["rows"] if r["kind"] == "learned" and r["nfe"] == nfe), key=lambda r: r["rmse"])
            cl = [r for r in res["rows"] if r["kind"] == "classic" and r["nfe"] == nfe]
            bc_ = min(cl, key=lambda r: r["rmse"]) if cl else None
            best.append(f"NFE {nfe}: {le['label']} {le['rmse']:.4f}" + (
                f" vs {bc_['label']} {bc_['rmse']:.4f}" if bc_ else ""))
        lines.append(head + ("; " if g else "") + "; ".join(best) + ".")
    if not lines:
        return []
    return ["", "## Frontier (learned samplers; read from saved runs)", "",
            "RMSE of the best learned sampler against the best classic solver, read from the JSON that "
            "`benchmarks/frontier.py --json` saved (`make bench` does not retrain them; the pages say how each was "
            "made):", ""] + lines


def report(res: dict[str, Any]) -> str:
    m, a = res["machine"], res["args"]
    out = [
        "# fewstep benchmarks",
        "",
        "Written by `make bench` (`benchmarks/bench.py`); regenerate rather than edit.",
        "",
        "## Machine and command",
        "",
        f"- Command: `{res['command']}`" + (" (via `make bench`)" if os.environ.get("FEWSTEP_MAKE_BENCH") else ""),
        f"- Date (UTC): {res['date']}; total wall time {res['seconds'] / 60:.1f} min",
        f"- CPU: {m['cpu']}; {m['logical_cores']} logical cores ({m['usable_cores']} usable); torch threads: "
        f"{m['torch_threads']} (`torch.set_num_threads`)",
        f"- Device: {m['device']}" + (f" ({m['gpu']})" if "gpu" in m else "") + f"; speed dtype {a['dtype']}",
        f"- torch {m['torch']}, diffusers {m['diffusers']}, numpy {m['numpy']}, Python {m['python']}, "
        f"{m['platform']}",
        f"- Load average (1/5/15 min, `os.getloadavg()`): at start {res['load_start']}, at end {res['load_end']} "
        "— the machine is shared with other jobs, so timings carry their noise; ratios are taken within one run.",
    ]
    summary = _summary(res)
    if summary:
        out += ["", "## Summary", ""] + [f"- {line}" for line in summary]
    if res.get("train"):
        out += ["", "## 3. AMED training cost (CPU, shipped U-Net)", "",
                "Each predictor is trained in a fresh process (`benchmarks/train_cost.py`): `fewstep.learned.train` "
                "(method amed / plugin) with "
                "the feature predictor on the U-Net's middle block, AFS, polynomial schedule, teacher DEIS-logrho "
                "order 4 (the default), float32, Adam with cosine decay. Peak memory is the peak resident set size "
                "(`resource.getrusage(RUSAGE_SELF).ru_maxrss`) of that process; in brackets its growth during "
                "`train` over the process with the model loaded and run once at the training batch size (tensor "
                "memory is invisible to tracemalloc). Teacher evaluations per training sample: computed as "
                "`count_nfe(teacher, len(refine_schedule(sigmas, M)))` = (N-1)(M+1) for N student sigmas, and "
                "counted (model calls made in inference mode, i.e. by the teacher's sampling loop, weighted by "
                "batch size, over all iterations). The small budget is for measuring cost, not for quality (the "
                "demo trains on 2048 samples).", "", _train_md(res["train"])]
        bad = [r["label"] for r in res["train"]
               if r["teacher_evals_per_sample_counted"] != r["teacher_evals_per_sample_computed"]]
        out += ["", "Computed and counted teacher evaluations agree." if not bad
                else f"**Computed and counted teacher evaluations differ for {', '.join(bad)}.**"]
    for q in res.get("quality", []):
        out += [
            "", f"## 1. Quality: {q['title']}", "",
            q["note"],
            f"Reference: DEIS-logrho order 4 with {q['ref_steps']} polynomial steps "
            "(`fewstep.experiments.bed.Bed`, i.e. "
            f"`evaluation.reference_solution`; its change against half the steps: {q['ref_rel_error']:.1e} relative). {q['seeds']} seeds; polynomial "
            "schedule rho=7 from 80 to 0.002 for every sampler; the diffusers rows run the same sigmas, seeds and "
            "model through the scheduler's own `step` (float64 state, benchmarks/diffusers_harness.py).",
            "", "RMSE to the reference (best per NFE in bold):", "", evaluation.format_table(q["rows"], q["nfes"]), "",
            f"Fréchet distance in a fixed random 64-d feature space (`metrics.FeatureExtractor('random')`) to "
            f"{q['fd_ref']}; the reference solution itself scores {q['ref_fd']:.4f}:", "",
            _fd_table(q["rows"], q["nfes"]),
        ]
    if res.get("nan"):
        out += ["", "## 4. No-NaN check", "", _nan_md(res["nan"])]
    if res.get("speed"):
        sp = res["speed"]
        out += [
            "", "## 2. Speed: sampler overhead over the model calls", "",
            f"A full sample at NFE {sp['nfe']} on the shipped U-Net, batch {sp['batch']}, "
            f"{sp['dtype']} on {sp['device']}, over NFE × one denoiser call (1.0 is the limit; the target is "
            f"≤ 1.03). {sp['repeats']} repeats after a warm-up; each repeat visits all samplers in a new random "
            "order. Three estimates of the same ratio, all medians over the repeats: **in-sample calls** = sample "
            "wall time / time spent inside its own NFE denoiser calls (timed around each call during the sample; "
            "the machine's load slows calls and overhead alike, so this is the robust one on a shared machine, "
            "and the ✓ column uses it); **paired call** = sample / (NFE × one call timed right before it); "
            "**medians** = median sample / (NFE × median of all separately timed calls). Every sample is also "
            "checked to make exactly NFE calls. AMED rows use an untrained predictor (same cost as a trained "
            "one); the feature predictor reads the U-Net's middle block through a forward hook (its pooling runs "
            "inside the model call). Diffusers rows drive the scheduler natively in float32 (built once, "
            "`set_timesteps` per sample, as in a pipeline) on the same model, noise and sigmas; their model input "
            "is converted from the VP sample (one multiply per step). fewstep / diffusers at the same NFE: the "
            "ratio of the two in-sample ratios (sampler overhead against sampler overhead), and of the two median "
            "wall times (noisier).", "", _speed_md(sp),
        ]
    out += _frontier_md()
    out += ["", "## GPU", ""]
    if res["machine"]["device"].startswith("cuda"):
        out += [f"Measured above on {res['machine'].get('gpu')}."]
    else:
        out += ["Not measured: this task had no GPU lent (the session's device status reported "
                "`can_start_another=false`). The harness is ready: `.venv/bin/python -m benchmarks.bench --device "
                "cuda --dtype bf16 --batch 256 --sections nan,speed --out BENCHMARKS_cuda.md` (and `--dtype fp32`) "
                "runs the same speed table on the GPU (synchronising around every timed region) and the no-NaN "
                "check of every sampler at every NFE in that dtype."]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    p.add_argument("--json", default=None, help="also write the raw numbers here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="model dtype for speed and no-NaN")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--batch", type=int, default=64, help="speed batch")
    p.add_argument("--repeats", type=int, default=9, help="interleaved speed repeats")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes over all samplers before the repeats")
    p.add_argument("--nfes", default="3,5,7,9", help="NFEs of the quality tables and the no-NaN sweep")
    p.add_argument("--bed-seeds", type=int, default=512)
    p.add_argument("--bed-ref-steps", type=int, default=512)
    p.add_argument("--unet-seeds", type=int, default=256)
    p.add_argument("--unet-ref-steps", type=int, default=128)
    p.add_argument("--fd-ref", type=int, default=10000, help="reference samples for the Fréchet statistics")
    p.add_argument("--nan-batch", type=int, default=16)
    p.add_argument("--train-samples", type=int, default=256)
    p.add_argument("--train-batch", type=int, default=32)
    p.add_argument("--train-M", type=int, default=8)
    p.add_argument("--train-students", default="amed,ipndm")
    p.add_argument("--quick", action="store_true", help="tiny sizes (the test that keeps this script alive)")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    if a.quick:
        for k, v in QUICK.items():
            setattr(a, k, v)
    nfes = tuple(int(n) for n in a.nfes.split(","))
    sections = [s for s in a.sections.split(",") if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    torch.set_num_threads(a.threads)
    device, dtype, progress = torch.device(a.device), DTYPES[a.dtype], not a.quiet
    t0 = time.perf_counter()
    res: dict[str, Any] = {
        "command": shlex.join([".venv/bin/python", "-m", "benchmarks.bench", *argv]),
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "args": vars(a),
        "load_start": " / ".join(f"{v:.2f}" for v in os.getloadavg()), "machine": machine(a.device, a.threads),
    }
    from fewstep.denoisers.unet import default_unet

    with tempfile.TemporaryDirectory() as tmp:
        preds: list[tuple[str, Any]] = []
        if "train" in sections:
            res["train"] = train_cost(a.train_students.split(","), a.train_samples, a.train_batch, a.train_M,
                                      a.threads, Path(tmp), progress)
            preds = [(f"{r['label']} +AFS (trained above, {r['samples']} samples)", learned.load(r["path"]))
                     for r in res["train"]]
        if "quality" in sections:
            res["quality"] = []
            components, count = (3, 500) if a.quick else (10, 20000)
            gmm = gmm_denoiser(8, components, count).to(device)
            ext = metrics.FeatureExtractor("random", 3 * 8 * 8)
            draws = gmm.sample_data(a.fd_ref, torch.Generator().manual_seed(1)).reshape(-1, 3, 8, 8)
            fd = _fd_fn(ext, metrics.feature_stats(draws.float().numpy(), ext)[:2], clamp=False)
            q = quality("analytic bed (Gaussian mixture of natural-image patches, exact denoiser)",
                        lambda: bed_on(device, gmm, (3, 8, 8), range(BED_SEED0, BED_SEED0 + a.bed_seeds),
                                       a.bed_ref_steps, gmm.model_id, "analytic natural-patch bed"),
                        a.bed_ref_steps, fd, nfes=nfes, progress=progress)
            q["note"] = (f"`fewstep.denoisers.gmm_denoiser()`: {components} full-covariance components fitted to "
                         f"{count} 8×8×3 patches of the training photos (`fewstep.data.gmm_bed`), whose exact denoiser "
                         "(`denoisers.GaussianMixture`) makes the reference the exact ODE solution up to the quoted "
                         "solver error.")
            q["fd_ref"] = f"{a.fd_ref} draws from the mixture"
            res["quality"].append(q)
            model = default_unet().to(device)
            res_ = model.config.img_resolution
            ext = metrics.FeatureExtractor("random", 3 * res_ * res_)
            patches = data.image_patches(size=res_, count=a.fd_ref, seed=12345)
            fd = _fd_fn(ext, metrics.feature_stats(patches.numpy(), ext)[:2], clamp=True)
            q = quality(f"demo model (shipped U-Net {model.model_id})",
                        lambda: bed_on(device, model, (3, res_, res_), range(a.unet_seeds), a.unet_ref_steps,
                                       model.model_id, f"shipped U-Net {model.model_id}"),
                        a.unet_ref_steps, fd, extra=preds, nfes=nfes, progress=progress)
            q["note"] = (f"`fewstep.denoisers.default_unet()` ({model.num_parameters():,} parameters, float32 "
                         "network, float64 state); the reference is a high-NFE teacher solution of the same model. "
                         "AMED rows: the predictors of section 3 (tiny training budget), at their own NFE.")
            q["fd_ref"] = f"{a.fd_ref} training-photo patches (samples clamped to [-1, 1])"
            res["quality"].append(q)
        if "nan" in sections:
            if progress:
                print("[nan] sweep ...", flush=True)
            res["nan"] = nan_sweep(default_unet(), device, dtype, a.nan_batch, nfes)
        if "speed" in sections:
            res["speed"] = speed(default_unet(), device, dtype, a.batch, a.repeats, a.warmup, progress)
    res["load_end"] = " / ".join(f"{v:.2f}" for v in os.getloadavg())
    res["seconds"] = time.perf_counter() - t0
    write_text_atomic(Path(a.out), report(res))
    if a.json:
        write_text_atomic(Path(a.json), json.dumps(res, indent=1, default=str) + "\n")
    if progress:
        print(f"Wrote {a.out} ({res['seconds'] / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
