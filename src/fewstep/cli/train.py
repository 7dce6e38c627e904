"""``fewstep train``: train a learned sampler (any method of :data:`fewstep.learned.METHODS`) by distillation."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from . import args as cli_args  # cli_args.load_model is looked up when called: tests substitute a model there
from .args import (
    add_model_args,
    add_sigma_args,
    check_class,
    check_negative_prompt,
    class_count,
    guidance_scale,
    json_object,
    kind_or_file,
    positive_int,
    schedule_arg,
    set_threads,
)


def _methods_help() -> str:
    from ..learned import METHODS

    return "; ".join(f"{name}: {cls.summary}" for name, cls in METHODS.items())


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``train`` subcommand."""
    from ..learned import METHODS

    t = sub.add_parser("train", help=f"train a learned sampler ({', '.join(METHODS)}) by distillation")
    add_model_args(t)
    t.add_argument("--out", required=True, help="checkpoint path (.safetensors)")
    t.add_argument("--method", default=None, choices=tuple(METHODS),
                   help=_methods_help() + " (default: the method measured best at the asked NFE and guidance, "
                        "fewstep.defaults.METHOD_RULES: residual unguided, dyweight guided)")
    t.add_argument("--base", default=None,
                   help="base solver of a method built on one you pick (plugin; default: ipndm)")
    t.add_argument("--base-options", default=None, metavar="JSON",
                   help='options of --base, e.g. \'{"max_order": 3}\'')
    t.add_argument("--method-options", default=None, metavar="JSON",
                   help='the method\'s own options, e.g. \'{"window": 3}\' (dyweight), \'{"K": 2}\' (epd), '
                        '\'{"scale_dir": 0.05}\' (amed, plugin); a wrong name lists the method\'s options')
    t.add_argument("--features", default=None,
                   help="amed / plugin: auto (the model's own features or a U-Net's middle block; the default) | none "
                        "(a table) | adapter | MODULE name")
    t.add_argument("--prompts", default=None, metavar="FILE",
                   help="text-to-image pipelines (--diffusers DIR of Stable Diffusion, SDXL, SD3 or Flux): train over "
                        "these prompts (UTF-8, one per line), one drawn per sample from its seed; every 5th is held out for "
                        "the closing report unless --eval-prompts (needs --guidance or --guidance-scales)")
    t.add_argument("--eval-prompts", default=None, metavar="FILE",
                   help="with --prompts: the held-out prompts of the closing report (default: every 5th of --prompts)")
    t.add_argument("--device", default=None, metavar="DEVICE",
                   help="with --prompts: run the pipeline's networks on this device (cuda: cuda:LOCAL_RANK under "
                        "torchrun); fewstep's solver state, teacher targets and learned operator stay on the CPU "
                        "(default: cpu)")
    t.add_argument("--model-dtype", default=None, choices=("float32", "float16", "bfloat16"),
                   help="with --prompts: the pipeline's dtype (float16 / bfloat16 on a GPU; default: float32)")
    t.add_argument("--negative-prompt", default=None, metavar="TEXT",
                   help="with --prompts: the unconditional branch of guidance (default: the pipeline's own, the empty "
                        "prompt)")
    t.add_argument("--guidance", type=float, default=None, metavar="W",
                   help="class-conditional models (--model digits): train under classifier-free guidance at scale W "
                        "(all classes, tiled over each batch, or --class); text-to-image pipelines: the scale the "
                        "pipeline samples with (e.g. 7.5; Flux: its guidance embedding, e.g. 3.5, one call per "
                        "evaluation)")
    t.add_argument("--guidance-scales", default=None, metavar="W1,W2,...",
                   help="class-conditional models: train ONE guidance-aware sampler over these scales (one per "
                        "batch, in turn; its tables are polynomials in w); it samples at any scale in [min, max] "
                        "(fewstep sample --class C --guidance W --predictor OUT)")
    t.add_argument("--guidance-degree", type=positive_int, default=2,
                   help="with --guidance-scales: polynomial degree of the tables in w (default: %(default)s)")
    t.add_argument("--class", dest="class_label", type=int, default=None, metavar="LABEL",
                   help="with --guidance / --guidance-scales: train on this class only (default: all classes)")
    t.add_argument("--time-shift", action="store_true", default=None,
                   help="also learn per-step model-input time shifts xi (gs by default)")
    t.add_argument("--soft-start", type=float, default=0.0, metavar="R",
                   help="LD3 relaxation: the student may start within R*sigma_max*sqrt(D) of x_T")
    t.add_argument("--soft-start-steps", type=positive_int, default=1,
                   help="gradient steps on the start offset per batch (default: %(default)s)")
    t.add_argument("--nfe", type=positive_int, default=None,
                   help="model evaluations per sample (default: 5, or what --schedule FILE / --num-steps implies)")
    t.add_argument("--num-steps", type=positive_int, default=None,
                   help="number of sigmas of the schedule (instead of --nfe)")
    t.add_argument("--afs", dest="afs", action="store_true", default=None,
                   help="use the analytical first step (default: the tuned configuration's choice, else on)")
    t.add_argument("--no-afs", dest="afs", action="store_false", help="disable the analytical first step")
    t.add_argument("--tuned", default=None, metavar="FILE.json",
                   help="start from this tuned classic configuration (fewstep tune --out): its solver as the base "
                        "where the method can be built on it, its AFS and its schedule (default: tune now, about a "
                        "minute, unless --no-tune, --schedule or --base is given)")
    t.add_argument("--no-tune", dest="tune", action="store_false",
                   help="do not tune first: start from the method's own base on --schedule; the closing report then "
                        "has no best classic solver to compare with")
    t.add_argument("--tune-seeds", type=positive_int, default=32,
                   help="held-out seeds of the tuning before training (default: %(default)s)")
    t.add_argument("--report-seeds", type=positive_int, default=64,
                   help="held-out seeds of the closing report (RMSE to the teacher of the trained sampler, its base "
                        "and the best classic configuration; default: %(default)s)")
    t.add_argument("--schedule", default=None, type=schedule_arg,
                   help="polynomial | logsnr | time_uniform | FILE.json (e.g. from fewstep schedule search); "
                        "default: the tuned configuration's, else polynomial")
    t.add_argument("--learn-schedule", action="store_true", default=None,
                   help="learn the schedule's sigmas jointly (dyweight and gs do by default)")
    t.add_argument("--schedule-lr", type=float, default=0.05, help="learning rate of the schedule (default: %(default)s)")
    t.add_argument("--checkpoint-every", type=int, default=0, help="save the training state every N iterations")
    t.add_argument("--resume", action="store_true", help="continue from OUT.train-state if it exists")
    t.add_argument("--teacher", default="deis", help="teacher solver (default: %(default)s)")
    t.add_argument("--teacher-options", default=None, help="JSON options (default for deis: order 4, logrho)")
    t.add_argument("--M", type=int, default=None, help="teacher steps inserted per interval (default: the method's)")
    t.add_argument("--loss", default="final", choices=("per_step", "final"),
                   help="final (default) or per_step (AMED's Algorithm 1; amed and plugin only)")
    t.add_argument("--batch", type=positive_int, default=None, help="training batch (default: the method's)")
    t.add_argument("--total-samples", type=positive_int, default=None,
                   help="training samples (default: the method's)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: the method's)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--overwrite", action="store_true")
    add_sigma_args(t)
    t.add_argument("--threads", type=positive_int, default=None,
                   help="torch threads (default: training 1 for the bed and small networks, else the idle cores; "
                        "the teacher, tuning and the report, which make no gradients, use the idle cores of a network "
                        "model: cores minus the 1-minute load average)")
    t.add_argument("--cache-dir", default=None, metavar="DIR",
                   help="where teacher targets are kept and reused across methods and runs (default: "
                        "$FEWSTEP_CACHE/teachers, else ~/.cache/fewstep/teachers)")
    t.add_argument("--no-cache", dest="cache", action="store_false",
                   help="compute the teacher's targets anew and keep nothing on disk")
    t.set_defaults(func=run)
    return t


def _options(args: argparse.Namespace, cls) -> dict:  # noqa: ANN001
    """The method's options from --method-options and --features; --base only where the method takes one."""
    options = json_object(args.method_options, "--method-options") if args.method_options else {}
    if "features" in cls.OPTIONS:
        if "features" in options and args.features is not None:
            raise ValueError("give the features with --features or in --method-options, not both")
        options.setdefault("features", args.features or "auto")
    elif args.features is not None:
        raise ValueError(f"--features applies to methods that read network features (amed, plugin), not {cls.method}")
    if not cls.takes_base and (args.base is not None or args.base_options is not None):
        raise ValueError(f"--base / --base-options apply to a method built on a solver you pick (plugin), not "
                         f"{cls.method}")
    return options


def run(args: argparse.Namespace) -> int:
    """Train a learned sampler; under ``torchrun`` the batches are split over the processes (gradients summed),
    and ``--checkpoint-every`` / ``--resume`` make a killed run continue to the same sampler."""
    from .. import distributed, learned
    from ..learned.distill import threads as torch_threads

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    state = out.with_name(out.name + ".train-state")
    if state.exists() and not args.resume:  # an interrupted run's state is never restarted over (nor deleted)
        raise ValueError(f"a training state exists at {state} (an interrupted run); pass --resume to continue it, "
                         "or remove it to start over")
    if args.checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    for name in ("lr", "schedule_lr"):
        v = getattr(args, name)
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive finite number, got {v}")
    if not (math.isfinite(args.soft_start) and args.soft_start >= 0):
        raise ValueError(f"--soft-start must be a finite number >= 0, got {args.soft_start}")
    _choose_method(args)
    cache_dir = _cache_dir(args)
    cls = learned.method_class(args.method)
    options = _options(args, cls)  # contradictions before loading the model
    base = None  # a tuned start gives the base (its solver and options) unless --base / --base-options say otherwise
    if cls.takes_base and (args.base is not None or args.base_options is not None):
        base_opts = json_object(args.base_options, "--base-options") if args.base_options else {}
        base = {"solver": args.base or "ipndm", "options": base_opts}
    teacher_options = json_object(args.teacher_options, "--teacher-options") if args.teacher_options else None
    denoiser, shape, model_id, dtype = cli_args.load_model(args.model, args.shape, args)
    threads = set_threads(args, denoiser)
    teacher_threads = _teacher_threads(args, denoiser)
    denoiser, scales = _guided(args, denoiser, cls, options)
    held_out = _held_out(args, denoiser)
    with torch_threads(teacher_threads):
        recipe = _recipe(args, denoiser, shape, model_id, dtype, scales, cache_dir)
    afs = True if args.afs is None else args.afs
    if recipe is not None:
        from ..tune import training_start

        options, base, afs, schedule = training_start(cls, recipe, options, base, args.afs)
    else:
        schedule = kind_or_file(args.schedule or "polynomial")
    if cls.takes_base and base is None:
        base = {"solver": "ipndm", "options": {}}
    if isinstance(schedule, str):
        spec = learned.ScheduleSpec(kind=schedule, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
                                    learn=args.learn_schedule, lr=args.schedule_lr)
    elif args.sigma_min is not None or args.sigma_max is not None:
        raise ValueError("--sigma-min/--sigma-max do not apply to a --schedule FILE or a tuned configuration (its "
                         "sigmas are given)")
    else:
        spec = learned.ScheduleSpec(sigmas=schedule, learn=args.learn_schedule, lr=args.schedule_lr)
    nfe = args.nfe if args.nfe is not None or args.num_steps is not None or recipe is None else recipe.nfe
    settings = dict(
        teacher=learned.Teacher(args.teacher, teacher_options, args.M, cache=cache_dir,
                                threads=teacher_threads),
        budget=learned.Budget(batch=args.batch, total_samples=args.total_samples, lr=args.lr, seed=args.seed),
        objective=learned.Objective(loss=args.loss, soft_start=args.soft_start,
                                    soft_start_steps=args.soft_start_steps),
        checkpoint=learned.Checkpointing(out=out, state=out.with_name(out.name + ".train-state"),  # always: kept until
                                         every=args.checkpoint_every, resume=args.resume),  # the sampler is on disk
        guidance=None if scales is None else learned.GuidanceScales(scales, args.guidance_degree))
    info = distributed.init_distributed("cpu")
    batch = args.batch or cls.DEFAULTS.batch
    if batch < info.world_size:
        distributed.finish(info, barrier=False)
        raise ValueError(f"--batch {batch} is smaller than the {info.world_size} processes; every process needs at "
                         "least one sample of each batch")
    ok = False
    try:
        if info.is_main:
            _plan(args, cls, model_id, denoiser, spec, settings, recipe, nfe, afs, base, info.world_size,
                  f"{threads}" + (f" (teacher {teacher_threads})" if teacher_threads not in (None, threads) else ""))
        sampler = learned.train(args.method, denoiser, shape=shape, nfe=nfe, num_steps=args.num_steps,
                                afs=afs, options=options, base=base, schedule=spec, time_shift=args.time_shift,
                                model_id=model_id, dtype=dtype, progress=info.is_main, **settings)
        if info.is_main:
            _report(sampler, out, info.world_size, threads, scales, shape)
            with torch_threads(teacher_threads):
                if scales is None:
                    _compare(sampler, held_out, shape, dtype, recipe, args.report_seeds, cache_dir)
                else:  # a guidance-aware sampler: the report at each trained scale, the denoiser guiding at it
                    sampler.guidance_scale = None
                    for w in sorted(set(scales)):
                        held_out.scale = w
                        print(f"at guidance scale {w:g}:")
                        _compare(sampler, held_out, shape, dtype, recipe, args.report_seeds, cache_dir)
        ok = True
    finally:
        distributed.finish(info, barrier=ok)
    return 0


def _choose_method(args: argparse.Namespace) -> None:
    """Without --method: the measured best at the asked NFE and guidance (fewstep.defaults.METHOD_RULES), said."""
    import os

    from ..defaults import default_method

    if args.method is not None:
        return
    scales = []
    if args.guidance is not None:
        scales.append(args.guidance)
    if args.guidance_scales is not None:
        try:
            scales += [float(v) for v in args.guidance_scales.split(",")]
        except ValueError:
            pass  # _guided says what is wrong
    guided = any(w > 1 for w in scales)
    nfe = args.nfe if args.nfe is not None or args.num_steps is not None or args.tuned is not None else 5
    choice = default_method(nfe, guided)
    args.method = choice.method
    if os.environ.get("RANK", "0") == "0":
        at = f"NFE {nfe}" if nfe is not None else "every NFE"
        print(f"method {choice.method}: fewstep's default at {at}{' under guidance (w > 1)' if guided else ''}: "
              f"{choice.why} (--method to choose another)", flush=True)


def _cache_dir(args: argparse.Namespace):  # noqa: ANN202
    """The teacher cache's directory: --cache-dir, else the default; None with --no-cache (or FEWSTEP_CACHE empty)."""
    from ..teacher import default_cache_dir

    if not args.cache:
        if args.cache_dir is not None:
            raise ValueError("give --cache-dir DIR or --no-cache, not both")
        return None
    return args.cache_dir if args.cache_dir is not None else default_cache_dir()


def _teacher_threads(args: argparse.Namespace, denoiser) -> int | None:  # noqa: ANN001
    """Threads of the gradient-free parts (teacher, tuning, report): --threads, else the idle cores for a network
    (its forward pass is bitwise the same at any thread count, measured on the shipped U-Net), else unchanged."""
    import torch

    if args.threads:
        return args.threads
    return cli_args.idle_threads() if isinstance(denoiser, torch.nn.Module) else None


def _recipe(args: argparse.Namespace, denoiser, shape, model_id, dtype, scales, cache_dir):  # noqa: ANN001, ANN202
    """The tuned classic configuration to start from: --tuned FILE, else measured now (fewstep.tune), unless
    --no-tune, --schedule, --base or --num-steps asks for something else; None then."""
    from ..recipe import Recipe

    if args.tuned is not None:
        if args.schedule is not None or args.base is not None:
            raise ValueError("--tuned gives the schedule and the base; do not combine it with --schedule or --base")
        recipe = Recipe.load(args.tuned, model_id=model_id)
        if args.nfe is not None and args.nfe != recipe.nfe:
            raise ValueError(f"--tuned {args.tuned} was tuned at NFE {recipe.nfe}, not --nfe {args.nfe}")
        return recipe
    if not args.tune or args.schedule is not None or args.base is not None or args.num_steps is not None or \
            scales is not None:
        return None
    import os

    from ..tune import tune

    main_rank = os.environ.get("RANK", "0") == "0"  # under torchrun every process tunes alike; one of them speaks
    if main_rank:
        print(f"tuning the classic solvers at NFE {args.nfe or 5} first (fewstep tune; --no-tune skips it) ...",
              flush=True)
    from ..teacher import TeacherCache, model_key, provenance

    seeds, guidance = _per_label(denoiser, args.tune_seeds), getattr(denoiser, "scale", None)
    cache = None if cache_dir is None else TeacherCache(cache_dir)
    model = model_key(denoiser, model_id)
    saved = None
    if cache is not None and model is not None:  # the tuning's result, as its own Recipe file beside the targets
        fields = {**provenance("tune.py", "recipe.py", "schedule_search.py"), "kind": "tune", "model": model,
                  "shape": list(shape), "nfe": args.nfe or 5, "seeds": seeds, "sigma_min": args.sigma_min,
                  "sigma_max": args.sigma_max, "dtype": str(dtype), "guidance": guidance}
        saved = cache.directory / f"{cache.key(fields)}.recipe.json"
        if saved.is_file():
            try:
                best = Recipe.load(saved, model_id=model_id)
                if main_rank:
                    print(f"  best classic (tuned before, read from {saved}): {best.label()}: RMSE {best.rmse:.4g} "
                          f"on {seeds} tuning seeds")
                return best
            except (OSError, ValueError) as e:
                print(f"WARNING: ignoring {saved} ({str(e)[:200]}); tuning again", file=sys.stderr, flush=True)
    res = tune(denoiser, shape, args.nfe or 5, seeds=seeds, sigma_min=args.sigma_min, sigma_max=args.sigma_max,
               dtype=dtype, model_id=model_id, guidance=guidance, progress=main_rank, cache=cache)
    if main_rank:
        print(f"  best classic: {res.best.label()}: RMSE {res.best.rmse:.4g} on "
              f"{len(res.seeds) + len(res.extra.get('confirm_seeds', []))} tuning seeds")
        if saved is not None:
            try:
                res.best.save(saved)
            except OSError:
                pass  # an unwritable cache: tune again next time (the teacher cache says so)
    return res.best


def _plan(args: argparse.Namespace, cls, model_id, denoiser, spec, settings, recipe, nfe, afs, base,  # noqa: ANN001
          world_size: int, threads: str) -> None:
    """What is about to be trained, in a few lines."""
    from ..denoisers import sigma_range

    d = cls.DEFAULTS
    budget, teacher = settings["budget"], settings["teacher"]
    batch, total = budget.batch or d.batch, budget.total_samples or d.total_samples
    if spec.sigmas is not None:
        where = f"{len(spec.sigmas)} given sigmas {spec.sigmas[0]:.4g} .. {spec.sigmas[-1]:.4g}" + \
            (" (the tuned configuration's, resampled)" if recipe is not None else f" ({args.schedule})")
    else:
        lo, hi, source = sigma_range(denoiser, spec.sigma_min, spec.sigma_max)
        where = f"{spec.kind} rho {spec.rho:g} on sigma {hi:.4g} .. {lo:.4g} ({source})"
    if cls.takes_base:
        on = base["solver"] + "".join(f" {k}={v}" for k, v in base["options"].items())  # set in run()
    else:
        on = "its own"
    learn = d.learn_schedule if spec.learn is None else spec.learn
    print(f"training {cls.method} for model {model_id} at NFE {nfe if nfe is not None else 5}, AFS "
          f"{'on' if afs else 'off'}; base: {on}; schedule: {where}, {'learned' if learn else 'fixed'}"
          f"; teacher {teacher.solver} with M = {teacher.M if teacher.M is not None else d.M}; {total} samples in batches "
          f"of {batch}; {world_size} process(es) x {threads} thread(s)", flush=True)


def _compare(sampler, denoiser, shape, dtype, recipe, seeds: int, cache_dir=None) -> None:  # noqa: ANN001
    """The closing report: trained vs its base vs the best classic configuration on held-out seeds."""
    from ..tune import report

    from ..teacher import TeacherCache

    rep = report(sampler, denoiser, shape, recipe=recipe, seeds=_per_label(denoiser, seeds), dtype=dtype,
                 cache=None if cache_dir is None else TeacherCache(cache_dir))
    s = rep["seeds"]
    print(f"held-out report: RMSE to the teacher (DEIS-4, {rep['teacher_steps']} steps) on seeds {s[0]}-{s[-1]}:")
    for row in rep["rows"]:
        print(f"  {row['label'][:70]:<70} NFE {row['nfe']:>2}  {row['rmse']:.4g}")
    teacher = next((r for r in rep["rows"] if r.get("teacher")), None)
    if teacher is not None and rep["rows"][0]["rmse"] <= 1.25 * teacher["rmse"]:
        print(f"  the trained sampler is within 25% of its teacher's own error ({teacher['rmse']:.4g}): the teacher is "
              "the limit; a finer one (--M, e.g. twice as large) can let it get closer")
    if rep["ratio"] is None:
        print("  (no best classic configuration to compare with: run fewstep tune, or train without --no-tune)")
    elif rep["ratio"] < 1:
        print(f"  the trained sampler is {1 / rep['ratio']:.2f}x closer to the teacher than the best classic solver "
              "at its NFE")
    else:
        print(f"WARNING: the trained sampler is NOT better than the best classic solver at NFE {sampler.nfe()} "
              f"({rep['ratio']:.2f}x its error); sample with the tuned configuration instead (fewstep tune --out "
              "FILE; fewstep sample --predictor FILE), or train longer / another --method", flush=True)


def _per_label(denoiser, n: int) -> int:  # noqa: ANN001
    """``n`` rounded up to a multiple of a guided model's label count (every label equally often)."""
    import torch

    labels = getattr(denoiser, "labels", None)
    k = labels.numel() if isinstance(labels, torch.Tensor) else 1
    return -(-n // k) * k


def _report(sampler, out: Path, world_size: int, threads: int, scales: list[float] | None,  # noqa: ANN001
            shape: tuple[int, ...]) -> None:
    """What was trained and where it went."""
    log, cfg = sampler.log, sampler.config
    rounds = sampler.rounds()
    unit = math.prod(shape) ** 0.5 if cfg["training"]["distance"] == "l2" else None
    loss = log.losses[-1] / unit if unit else log.losses[-1] ** 0.5
    print(f"Trained {sampler.describe()} in {log.seconds:.1f} s ({log.cpu_seconds:.1f} CPU s) on {world_size} "
          f"process(es) x {threads} thread(s); final training loss {loss:.4g} (RMS distance to the teacher per "
          f"element); wrote {out} ({sampler.nfe()} model evaluations per sample"
          + (f" in {rounds} sequential rounds" if rounds != sampler.nfe() else "") + ")")
    if log.restored is not None:
        it, best, last = log.restored
        f = (lambda v: v / unit) if unit else (lambda v: v ** 0.5)
        print(f"WARNING: the training diverged (loss {f(best):.4g} around iteration {it}, {f(last):.4g} at the end, "
              f"RMS per element): the parameters of iteration {it} were kept; a lower --lr (or --schedule-lr) or "
              "another --method may do better", flush=True)
    if (cfg.get("schedule") or {}).get("kind") in ("learned", "tensor"):
        print("  sigmas: " + ", ".join(f"{v:.4g}" for v in cfg["sigmas"]))
    if scales is not None:
        print(f"  guidance-aware over w in [{min(scales):g}, {max(scales):g}]: sample with --guidance W")
    steps = sampler.export_steps()
    if steps is not None:
        for i, row in enumerate(steps):
            print(f"  step {i}: r={row['r']:.4f} c={row['c']:.4f} a={row['a']:.4f}")
        print("  a predictor-free table: runs in fewstep.sample, fewstep.k and diffusers pipelines "
              "(FewstepScheduler; with AFS via run_pipeline_loop or a pipeline that calls scale_model_input)")
    elif sampler.uses_features:
        print("  reads the network's features: run it with fewstep sample / fewstep.sample; for a diffusers "
              "pipeline train a table with --features none")


def _guided(args: argparse.Namespace, denoiser, cls, options: dict) -> tuple[object, list[float] | None]:  # noqa: ANN001
    """(denoiser, guidance scales): the model under classifier-free guidance for --guidance / --guidance-scales
    (:class:`fewstep.denoisers.Guided`, every class tiled over each batch unless --class), else as it is. Without
    --batch, mixed classes take the method's batch rounded up to a multiple of the class count."""
    import torch

    from ..denoisers import Guided

    if getattr(denoiser, "prompt_conditioned", False):
        return _prompt_guided(args, denoiser, cls, options)
    if args.guidance is None and args.guidance_scales is None:
        if args.class_label is not None:
            raise ValueError("--class needs --guidance W or --guidance-scales W1,W2,... (the scale to train at)")
        return denoiser, None
    classes = class_count(denoiser, args.model, "--guidance / --guidance-scales need")
    w, scales = _scales(args, cls, options)
    if args.class_label is not None:
        return Guided(denoiser, check_class(args.class_label, classes, args.model), w), scales
    if args.batch is None:
        args.batch = -(-cls.DEFAULTS.batch // classes) * classes
    elif args.batch % classes:
        raise ValueError(f"--batch {args.batch}: training on all {classes} classes tiles them over each batch; give a "
                         f"multiple of {classes} (or --class LABEL)")
    return Guided(denoiser, torch.arange(classes), w), scales


def _scales(args: argparse.Namespace, cls, options: dict) -> tuple[float, list[float] | None]:  # noqa: ANN001
    """(the first guidance scale, the scales of a guidance-aware sampler or None) from --guidance / --guidance-scales."""
    if args.guidance is not None and args.guidance_scales is not None:
        raise ValueError("give --guidance (one scale) or --guidance-scales (a guidance-aware sampler), not both")
    scales = None
    if args.guidance_scales is not None:
        try:
            scales = [float(v) for v in args.guidance_scales.split(",")]
        except ValueError:
            raise ValueError(f"--guidance-scales must be numbers separated by commas, got {args.guidance_scales!r}")
        if options.get("features", "none") != "none":
            raise ValueError(f"--guidance-scales with --method {cls.method} trains a guidance-aware table: add "
                             "--features none")
    return (guidance_scale(args.guidance) if args.guidance is not None else scales[0]), scales


def _prompt_guided(args: argparse.Namespace, denoiser, cls, options: dict) -> tuple[object, list[float] | None]:  # noqa: ANN001
    """A text-to-image pipeline under guidance over the training prompts (PromptGuided, a prompt drawn per seed)."""
    from ..integrations.diffusers.text import CALLS_SCALE_MODEL_INPUT, PromptGuided

    if args.class_label is not None:
        raise ValueError("--class applies to class-conditional models; a text-to-image pipeline takes --prompts")
    if args.guidance is None and args.guidance_scales is None:
        raise ValueError("--prompts needs --guidance W (the scale the pipeline samples with, e.g. 7.5; 1 trains "
                         "without guidance) or --guidance-scales W1,W2,... (one guidance-aware sampler)")
    w, scales = _scales(args, cls, options)
    if scales is None:
        check_negative_prompt(args.negative_prompt, w)
    if not CALLS_SCALE_MODEL_INPUT[denoiser.kind]:
        if args.afs is None:
            args.afs = False
            print(f"AFS off: the {denoiser.pipeline_class} never calls scheduler.scale_model_input, so a sampler with "
                  "AFS could not run in it (--afs trains one for fewstep sample)", flush=True)
        if args.time_shift or cls.method in ("dyweight", "epd"):
            print(f"WARNING: --method {cls.method}{' --time-shift' if args.time_shift else ''} moves the first model "
                  f"input; the sampler runs in fewstep sample, not in the {denoiser.pipeline_class} (use residual, "
                  "pas or amed there)", flush=True)
    if denoiser.kind == "flux" and cls.method == "residual":
        print("WARNING: --method residual: its operator convolves unpacked latents; FluxPipeline hands its scheduler "
              "packed ones, so the sampler runs in fewstep sample, not in the pipeline (use pas or amed there)",
              flush=True)
    train_idx, _ = denoiser.prompt_split
    return PromptGuided(denoiser, w, train_idx), scales


def _held_out(args: argparse.Namespace, denoiser):  # noqa: ANN001, ANN202
    """The denoiser of the closing report: for a text-to-image pipeline the held-out prompts (said), else itself."""
    from ..integrations.diffusers.text import PromptGuided

    if not isinstance(denoiser, PromptGuided):
        return denoiser
    train_idx, eval_idx = denoiser.denoiser.prompt_split
    where = f"--eval-prompts {args.eval_prompts}" if args.eval_prompts else f"every 5th prompt of {args.prompts}"
    if eval_idx:
        print(f"prompts: {len(train_idx)} train, {len(eval_idx)} held out for the report ({where})", flush=True)
    else:
        print(f"prompts: {len(train_idx)} train; fewer than 5, so the report uses them on held-out seeds (give "
              "--eval-prompts FILE for held-out prompts)", flush=True)
    return PromptGuided(denoiser.denoiser, denoiser.scale, eval_idx or train_idx)
