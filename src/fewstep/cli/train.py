"""``fewstep train``: train a learned sampler (AMED, AMED-Plugin, DyWeight, EPD, PAS, GS) by distillation."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from . import args as cli_args  # cli_args.load_model is looked up when called: tests substitute a model there
from .args import (
    add_model_args,
    add_sigma_args,
    check_class,
    class_count,
    guidance_scale,
    json_object,
    kind_or_file,
    positive_int,
    resolve_features,
    schedule_arg,
    set_threads,
    sigma_range,
)


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``train`` subcommand."""
    t = sub.add_parser("train",
                       help="train a learned sampler (AMED, AMED-Plugin, DyWeight, EPD, PAS, GS) by distillation")
    add_model_args(t)
    t.add_argument("--out", required=True, help="checkpoint path (.safetensors)")
    t.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="class-conditional models (--model digits): train under classifier-free guidance at scale W "
                        "(all classes, tiled over each batch, or --class)")
    t.add_argument("--guidance-scales", default=None, metavar="W1,W2,...",
                   help="class-conditional models: train ONE guidance-aware sampler over these scales (one per "
                        "batch, in turn; its tables are polynomials in w); it samples at any scale in [min, max] "
                        "(fewstep sample --class C --guidance W --predictor OUT)")
    t.add_argument("--guidance-degree", type=positive_int, default=2,
                   help="with --guidance-scales: polynomial degree of the tables in w (default: %(default)s)")
    t.add_argument("--class", dest="class_label", type=int, default=None, metavar="LABEL",
                   help="with --guidance / --guidance-scales: train on this class only (default: all classes)")
    t.add_argument("--method", default=None, choices=("amed", "plugin", "dyweight", "epd", "pas", "gs"),
                   help="amed (AMED-Solver), plugin (AMED-Plugin on --base), dyweight (learned multistep), epd "
                        "(parallel directions), pas (PCA-basis corrections of iPNDM), gs (generalised DPM-Solver++(3M)); "
                        "default: what --student says")
    t.add_argument("--base", default=None, help="base solver of --method plugin (default: ipndm)")
    t.add_argument("--method-options", default=None,
                   help='JSON options of dyweight / epd, e.g. \'{"window": 3}\' or \'{"K": 2}\'')
    t.add_argument("--time-shift", action="store_true", default=None,
                   help="also learn per-step model-input time shifts xi (dyweight, epd, pas, gs; gs by default)")
    t.add_argument("--soft-start", type=float, default=0.0, metavar="R",
                   help="LD3 relaxation: the student may start within R*sigma_max*sqrt(D) of x_T "
                        "(dyweight, epd, pas, gs)")
    t.add_argument("--soft-start-steps", type=positive_int, default=1,
                   help="gradient steps on the start offset per batch (default: %(default)s)")
    t.add_argument("--student", default="amed",
                   help="amed (AMED-Solver) or a base solver for AMED-Plugin (the older spelling of --method)")
    t.add_argument("--nfe", type=positive_int, default=None,
                   help="model evaluations per sample (default: 5, or what --schedule FILE / --num-steps implies)")
    t.add_argument("--num-steps", type=positive_int, default=None,
                   help="number of sigmas of the schedule (instead of --nfe)")
    t.add_argument("--no-afs", dest="afs", action="store_false", help="disable the analytical first step")
    t.add_argument("--schedule", default="polynomial", type=schedule_arg,
                   help="polynomial | logsnr | time_uniform | FILE.json (e.g. from fewstep schedule search)")
    t.add_argument("--learn-schedule", action="store_true", default=None,
                   help="learn the schedule's sigmas jointly (dyweight and gs do by default)")
    t.add_argument("--schedule-lr", type=float, default=0.05, help="learning rate of the schedule (default: %(default)s)")
    t.add_argument("--checkpoint-every", type=int, default=0, help="save the training state every N iterations")
    t.add_argument("--resume", action="store_true", help="continue from OUT.train-state if it exists")
    t.add_argument("--teacher", default="deis", help="teacher solver (default: %(default)s)")
    t.add_argument("--teacher-options", default=None, help="JSON options (default for deis: order 4, logrho)")
    t.add_argument("--M", type=int, default=None,
                   help="teacher steps inserted per interval (default: 8 for amed/plugin, the method's own otherwise)")
    t.add_argument("--features", default="auto",
                   help="auto (the model's own features or a U-Net's middle block) | none | adapter | MODULE name")
    t.add_argument("--scale-dir", type=float, default=0.01)
    t.add_argument("--scale-time", type=float, default=0.0)
    t.add_argument("--loss", default="final", choices=("per_step", "final"))
    t.add_argument("--batch", type=positive_int, default=None,
                   help="training batch (default: 64 for amed/plugin, the method's own otherwise)")
    t.add_argument("--total-samples", type=positive_int, default=None,
                   help="training samples (default: 8192 for amed/plugin, the method's own otherwise)")
    t.add_argument("--lr", type=float, default=None, help="default: 0.1 (table), 0.02 (features)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--overwrite", action="store_true")
    add_sigma_args(t)
    t.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads (default: 1 for the bed and small networks, else the idle cores)")
    t.set_defaults(func=run)
    return t


def run(args: argparse.Namespace) -> int:
    """Train an AMED predictor; under ``torchrun`` the batches are split over the processes (gradients summed),
    and ``--checkpoint-every`` / ``--resume`` make a killed run continue to the same predictor."""

    from .. import amed, distributed
    from ..sampling import count_nfe

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    if args.checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if not (math.isfinite(args.lr) and args.lr > 0) if args.lr is not None else False:
        raise ValueError(f"--lr must be a positive finite number, got {args.lr}")
    _method(args)  # contradictions before loading the model
    denoiser, shape, model_id, dtype = cli_args.load_model(args.model, args.shape, args)
    threads = set_threads(args, denoiser)
    denoiser, scales = _guided(args, denoiser, method=_method(args))
    features, network = resolve_features(denoiser, args.features)
    schedule = kind_or_file(args.schedule)
    method = _method(args)
    num_steps = _num_steps(args, schedule) if method in ("amed", "plugin") else None
    sigma_min, sigma_max = sigma_range(args, denoiser)
    if not isinstance(schedule, str) and (args.sigma_min is not None or args.sigma_max is not None):
        raise ValueError("--sigma-min/--sigma-max do not apply to a --schedule FILE (its sigmas are given)")
    teacher_options = json_object(args.teacher_options, "--teacher-options") if args.teacher_options else None
    if method not in ("amed", "plugin"):
        return _run_learned(args, method, out, denoiser, shape, model_id, dtype, threads, schedule, sigma_min,
                            sigma_max, teacher_options, scales)
    args.M = 8 if args.M is None else args.M
    args.batch = 64 if args.batch is None else args.batch
    args.total_samples = 8192 if args.total_samples is None else args.total_samples
    args.learn_schedule = bool(args.learn_schedule)
    state = out.with_name(out.name + ".train-state")
    info = distributed.init_distributed("cpu")
    if args.batch < info.world_size:
        distributed.finish(info, barrier=False)
        raise ValueError(f"--batch {args.batch} is smaller than the {info.world_size} processes; every process "
                         "needs at least one sample of each batch")
    ok = False
    try:
        log: list = []
        pred = amed.train(
            denoiser, shape=shape, student=args.student, teacher=args.teacher, teacher_options=teacher_options,
            num_steps=num_steps, M=args.M, schedule=schedule, sigma_min=sigma_min, sigma_max=sigma_max,
            afs=args.afs, scale_dir=args.scale_dir,
            scale_time=args.scale_time, features=features, network=network, batch=args.batch,
            total_samples=args.total_samples, lr=args.lr, loss=args.loss, learn_schedule=args.learn_schedule,
            schedule_lr=args.schedule_lr, seed=args.seed, model_id=model_id, dtype=dtype, progress=True, log=log,
            state_path=state,  # always: the final state is kept until the predictor file is on disk
            checkpoint_every=args.checkpoint_every, resume=args.resume, out=out, guidance_scales=scales,
            guidance_degree=args.guidance_degree,
        )
        if info.is_main:
            nfe = count_nfe(pred.solver(), len(pred.config["sigmas"]), pred.config["afs"])
            print(f"Trained in {log[0].seconds:.1f} s on {info.world_size} process(es) x {threads} thread(s); final "
                  f"loss {log[0].losses[-1]:.4f}; wrote {out} ({nfe} model evaluations per sample)")
            if args.learn_schedule or not isinstance(schedule, str):
                print("  sigmas: " + ", ".join(f"{v:.4g}" for v in pred.config["sigmas"]))
            if scales is not None:
                print(f"  guidance-aware over w in [{min(scales):g}, {max(scales):g}]: sample with --guidance W")
            elif not pred.uses_features:
                for i, row in enumerate(pred.table_values()):
                    print(f"  step {i}: r={row['r']:.4f} c={row['c']:.4f} a={row['a']:.4f}")
                print("  a predictor-free table: runs in fewstep.sample, fewstep.k and diffusers pipelines "
                      "(FewstepScheduler; with AFS via run_pipeline_loop or a pipeline that calls scale_model_input)")
            else:
                print("  reads the network's features: run it with fewstep sample / fewstep.sample; for a diffusers "
                      "pipeline train a table with --features none")
        ok = True
    finally:
        distributed.finish(info, barrier=ok)
    return 0


def _guided(args: argparse.Namespace, denoiser, method: str) -> tuple[object, list[float] | None]:
    """(denoiser, guidance scales): the model under classifier-free guidance for --guidance / --guidance-scales
    (:class:`fewstep.denoisers.Guided`, every class tiled over each batch unless --class), else as it is. Without
    --batch, mixed classes take the method's batch rounded up to a multiple of the class count."""
    import torch

    from ..denoisers import Guided
    from ..learned.train import DEFAULT_BUDGET, FALLBACK_BUDGET

    if args.guidance is None and args.guidance_scales is None:
        if args.class_label is not None:
            raise ValueError("--class needs --guidance W or --guidance-scales W1,W2,... (the scale to train at)")
        return denoiser, None
    if args.guidance is not None and args.guidance_scales is not None:
        raise ValueError("give --guidance (one scale) or --guidance-scales (a guidance-aware sampler), not both")
    classes = class_count(denoiser, args.model, "--guidance / --guidance-scales need")
    scales = None
    if args.guidance_scales is not None:
        try:
            scales = [float(v) for v in args.guidance_scales.split(",")]
        except ValueError:
            raise ValueError(f"--guidance-scales must be numbers separated by commas, got {args.guidance_scales!r}")
        if method in ("amed", "plugin") and args.features != "none":
            raise ValueError(f"--guidance-scales with --method {method} trains a guidance-aware table: add "
                             "--features none")
    w = guidance_scale(args.guidance) if args.guidance is not None else scales[0]
    if args.class_label is not None:
        return Guided(denoiser, check_class(args.class_label, classes, args.model), w), scales
    if args.batch is None:
        default = {**FALLBACK_BUDGET, **DEFAULT_BUDGET.get(method, {})}["batch"]
        args.batch = -(-default // classes) * classes
    elif args.batch % classes:
        raise ValueError(f"--batch {args.batch}: training on all {classes} classes tiles them over each batch; give a "
                         f"multiple of {classes} (or --class LABEL)")
    return Guided(denoiser, torch.arange(classes), w), scales


def _method(args: argparse.Namespace) -> str:
    """--method, or the one --student implies; with --method plugin, --student is set to the base solver (the
    AMED trainer's name for it). New-method options on AMED are errors."""
    if getattr(args, "resolved_method", None):
        return args.resolved_method
    method = args.method
    if method is None:
        if args.base is not None:
            raise ValueError("--base needs --method plugin")
        method = "amed" if args.student == "amed" else "plugin"
    elif args.student != "amed":
        raise ValueError("give --method (with --base for the plugin) or the older --student, not both")
    if method == "plugin":
        if args.method is not None:
            args.student = args.base or "ipndm"
    elif args.base is not None:
        raise ValueError(f"--base applies to --method plugin, not {method}")
    if method in ("amed", "plugin"):
        given = [n for n, v in (("--time-shift", args.time_shift), ("--soft-start", args.soft_start),
                                ("--method-options", args.method_options)) if v]
        if given:
            raise ValueError(f"{', '.join(given)} apply to --method dyweight / epd / pas / gs, not {method}")
    if not (math.isfinite(args.soft_start) and args.soft_start >= 0):
        raise ValueError(f"--soft-start must be a finite number >= 0, got {args.soft_start}")
    args.resolved_method = method
    return method


def _run_learned(args: argparse.Namespace, method: str, out: Path, denoiser, shape, model_id, dtype, threads: int,
                 schedule, sigma_min, sigma_max, teacher_options, scales: list[float] | None = None) -> int:
    """Train dyweight / epd / pas / gs (fewstep.learned.train); under ``torchrun`` data-parallel like AMED (each
    process takes its share of every global batch, gradients summed; rank 0 writes the state and the sampler)."""
    from .. import distributed, learned

    if args.loss != "final":
        raise ValueError(f"--method {method} trains with the final-point loss only")
    options = json_object(args.method_options, "--method-options") if args.method_options else None
    num_steps = _num_steps(args, schedule, method, options)
    info = distributed.init_distributed("cpu")
    ok = False
    try:
        log: list = []
        sampler = learned.train(
            method, denoiser, shape=shape, num_steps=num_steps, afs=args.afs, options=options, schedule=schedule,
            sigma_min=sigma_min, sigma_max=sigma_max, teacher=args.teacher, teacher_options=teacher_options,
            M=args.M, batch=args.batch, total_samples=args.total_samples, lr=args.lr, seed=args.seed,
            soft_start=args.soft_start, soft_start_steps=args.soft_start_steps, time_shift=args.time_shift,
            learn_schedule=args.learn_schedule, schedule_lr=args.schedule_lr, model_id=model_id, dtype=dtype,
            progress=True, log=log,
            state_path=out.with_name(out.name + ".train-state"),  # always: kept until the sampler is on disk
            checkpoint_every=args.checkpoint_every, resume=args.resume, out=out, guidance_scales=scales,
            guidance_degree=args.guidance_degree)
        if info.is_main:
            print(f"Trained {method} in {log[0].seconds:.1f} s on {info.world_size} process(es) x {threads} "
                  f"thread(s); final loss {log[0].losses[-1]:.4f}; wrote {out} ({sampler.nfe()} model evaluations "
                  f"per sample in {sampler.rounds()} sequential rounds)")
            learned_sched = (sampler.config.get("schedule") or {}).get("kind") == "learned"
            if learned_sched or not isinstance(schedule, str):
                print("  sigmas: " + ", ".join(f"{v:.4g}" for v in sampler.config["sigmas"]))
        ok = True
    finally:
        distributed.finish(info, barrier=ok)
    return 0


def _num_steps(args: argparse.Namespace, schedule: object, method: str | None = None,
               options: dict | None = None) -> int:
    """Number of sigmas from --nfe / --num-steps / --schedule FILE; contradictions are errors."""
    from .. import amed, learned
    from ..sampling import count_nfe
    from ..solvers import get_solver

    if method in learned.METHODS:
        cls = learned.METHODS[method]
        solver = cls(cls.make_config([80.0, 0.002], afs=args.afs, options=options)).make_solver()
    elif args.student == "amed":
        solver = get_solver("amed")
    else:
        solver = get_solver("amed_plugin", base=args.student)

    def cost(n: int) -> int:
        return count_nfe(solver, n, args.afs)

    if not isinstance(schedule, str):
        n = len(schedule)
        if args.num_steps is not None and args.num_steps != n:
            raise ValueError(f"--num-steps {args.num_steps} contradicts --schedule {args.schedule} ({n} sigmas)")
        if args.nfe is not None and args.nfe != cost(n):
            raise ValueError(f"--schedule {args.schedule} has {n} sigmas: {cost(n)} model evaluations for "
                             f"{args.student} with afs={args.afs}, not --nfe {args.nfe}")
        return n
    if args.num_steps is not None:
        if args.nfe is not None and args.nfe != cost(args.num_steps):
            raise ValueError(f"--num-steps {args.num_steps} gives {cost(args.num_steps)} model evaluations, not "
                             f"--nfe {args.nfe}; give one of them")
        return args.num_steps
    if method in learned.METHODS:
        return learned.steps_for_nfe(method, args.nfe if args.nfe is not None else 5, args.afs, options)
    return amed.student_steps_for_nfe(args.student, args.nfe if args.nfe is not None else 5, args.afs)
