"""AMED training cost on the shipped U-Net, measured in a fresh process (so that the peak RSS is its own).

    .venv/bin/python -m benchmarks.train_cost --method amed --out cost.json [--save-dir DIR] [--samples 256]

For one student (``--method amed``: the AMED-Solver; ``--method plugin --base NAME``: the AMED-Plugin on that base;
feature predictor on the U-Net's middle block, NFE 5 with AFS) it records the wall time of
``fewstep.learned.train``, the peak resident set size
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``; Linux reports KiB) and its growth during training over the
process with the model loaded and run once at the training batch size (tensor memory is invisible to
tracemalloc, which sees only Python objects), the teacher
evaluations per training sample computed from the teacher / M / schedule and counted (model calls made in
inference mode, i.e. by the teacher's ``fewstep.sample``, weighted by batch size), and the student's.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

from fewstep import count_nfe, get_solver, learned, steps_for_nfe
from fewstep.denoisers.unet import default_unet
from fewstep.schedules import get_schedule, refine_schedule
from fewstep.teacher import teacher_options

LABELS = {"amed": "AMED-Solver", "ipndm": "AMED-Plugin iPNDM"}


class CallCounter:
    """Counts the samples ``model`` evaluates (a forward pre-hook, so the model itself is trained on and its middle
    block hooked for features as usual), split by who called: the teacher's sampling loop runs in inference mode,
    the student's steps with gradients on."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.teacher = self.student = self.other = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, module: torch.nn.Module, args: tuple) -> None:
        n = args[0].shape[0]
        if torch.is_inference_mode_enabled():
            self.teacher += n
        elif torch.is_grad_enabled():
            self.student += n
        else:
            self.other += n  # e.g. the feature-size probe


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def measure(student: str, samples: int, batch: int, M: int, nfe: int, save_dir: Path | None, threads: int) -> dict:
    torch.set_num_threads(threads)
    model = default_unet()
    shape = (model.config.channels, model.config.img_resolution, model.config.img_resolution)
    with torch.inference_mode():  # warm-up at the training batch size, so the growth below is training's own
        model(torch.zeros(batch, *shape), torch.ones(batch))
    teacher = "deis"  # fewstep.learned.Teacher's default, with its default options
    teacher_opts = teacher_options(teacher, None)
    label = LABELS.get(student, f"AMED-Plugin {student}")
    method, base = ("amed", None) if student == "amed" else ("plugin", student)
    n = steps_for_nfe(learned.METHODS[method].probe_solver(None, base, True), nfe, True)
    teacher_sigmas = refine_schedule(get_schedule("polynomial", n), M)
    computed = count_nfe(get_solver(teacher, **teacher_opts), len(teacher_sigmas))
    counter = CallCounter(model)
    rss0 = _peak_rss_mib()
    t0 = time.perf_counter()
    pred = learned.train(method, model, shape=shape, num_steps=n, base=base, options={"features": "auto"},
                         teacher=learned.Teacher(teacher, teacher_opts, M=M),
                         budget=learned.Budget(batch=batch, total_samples=samples), dtype=torch.float32,
                         model_id=model.model_id, progress=False)
    seconds = time.perf_counter() - t0
    counter.handle.remove()
    rss1 = _peak_rss_mib()
    iters = -(-samples // batch)
    seen = iters * batch
    row = {
        "label": label, "student": student, "nfe": nfe, "num_steps": n, "M": M, "samples": samples,
        "batch": batch, "iterations": iters, "seconds": seconds, "seconds_per_iteration": seconds / iters,
        "peak_rss_growth_mib": rss1 - rss0, "peak_rss_mib": rss1,
        "teacher": f"{teacher} {teacher_opts}", "teacher_sigmas": len(teacher_sigmas),
        "teacher_evals_per_sample_computed": computed,
        "teacher_evals_per_sample_counted": counter.teacher / seen,
        "teacher_evals_per_sample_logged": pred.log.teacher_nfe_per_sample,
        "student_evals_per_sample_counted": counter.student / seen,
        "predictor_parameters": sum(p.numel() for p in pred.parameters()),
    }
    if save_dir is not None:
        path = Path(save_dir) / f"{student}_nfe{nfe}.safetensors"
        pred.save(path)
        row["path"] = str(path)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="amed", choices=("amed", "plugin"), help="amed (AMED-Solver) or plugin")
    p.add_argument("--base", default=None, help="with --method plugin: its base solver (default ipndm)")
    p.add_argument("--out", required=True, help="JSON file for the measurements")
    p.add_argument("--save-dir", default=None, help="also save the trained predictors here")
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--M", type=int, default=8)
    p.add_argument("--nfe", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.method == "amed" and a.base is not None:
        p.error("--base applies to --method plugin")
    student = "amed" if a.method == "amed" else a.base or "ipndm"
    row = measure(student, a.samples, a.batch, a.M, a.nfe, Path(a.save_dir) if a.save_dir else None, a.threads)
    Path(a.out).write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
