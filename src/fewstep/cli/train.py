"""``fewstep train``: train an AMED predictor by distillation."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from . import args as cli_args  # cli_args.load_model is looked up when called: tests substitute a model there
from .args import add_model_args, json_object, kind_or_file, positive_int, resolve_features, schedule_arg


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``train`` subcommand."""
    t = sub.add_parser("train", help="train an AMED predictor by distillation")
    add_model_args(t)
    t.add_argument("--out", required=True, help="checkpoint path (.safetensors)")
    t.add_argument("--student", default="amed", help="amed (AMED-Solver) or a base solver for AMED-Plugin")
    t.add_argument("--nfe", type=positive_int, default=5, help="target NFE (default: %(default)s)")
    t.add_argument("--num-steps", type=positive_int, default=None, help="number of sigmas (overrides --nfe)")
    t.add_argument("--no-afs", dest="afs", action="store_false", help="disable the analytical first step")
    t.add_argument("--schedule", default="polynomial", type=schedule_arg,
                   help="polynomial | logsnr | time_uniform | FILE.json (e.g. from fewstep schedule search)")
    t.add_argument("--learn-schedule", action="store_true", help="learn the schedule's sigmas jointly")
    t.add_argument("--schedule-lr", type=float, default=0.05, help="learning rate of the schedule (default: %(default)s)")
    t.add_argument("--checkpoint-every", type=int, default=0, help="save the training state every N iterations")
    t.add_argument("--resume", action="store_true", help="continue from OUT.train-state if it exists")
    t.add_argument("--teacher", default="deis", help="teacher solver (default: %(default)s)")
    t.add_argument("--teacher-options", default=None, help="JSON options (default for deis: order 4, logrho)")
    t.add_argument("--M", type=int, default=8, help="teacher steps inserted per interval (default: %(default)s)")
    t.add_argument("--features", default="auto",
                   help="auto (the model's own features or a U-Net's middle block) | none | adapter | MODULE name")
    t.add_argument("--scale-dir", type=float, default=0.01)
    t.add_argument("--scale-time", type=float, default=0.0)
    t.add_argument("--loss", default="final", choices=("per_step", "final"))
    t.add_argument("--batch", type=positive_int, default=64)
    t.add_argument("--total-samples", type=positive_int, default=8192)
    t.add_argument("--lr", type=float, default=None, help="default: 0.1 (table), 0.02 (features)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--overwrite", action="store_true")
    t.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    t.set_defaults(func=run)
    return t


def run(args: argparse.Namespace) -> int:
    """Train an AMED predictor; under ``torchrun`` the batches are split over the processes (gradients summed),
    and ``--checkpoint-every`` / ``--resume`` make a killed run continue to the same predictor."""
    import torch

    from .. import amed, distributed

    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    if args.checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    denoiser, shape, model_id, dtype = cli_args.load_model(args.model, args.shape)
    features, network = resolve_features(denoiser, args.features)
    schedule = kind_or_file(args.schedule)
    if not isinstance(schedule, str):
        num_steps = len(schedule)
    else:
        num_steps = args.num_steps or amed.student_steps_for_nfe(args.student, args.nfe, args.afs)
    teacher_options = json_object(args.teacher_options, "--teacher-options") if args.teacher_options else None
    state = out.with_name(out.name + ".train-state")
    info = distributed.init_distributed("cpu")
    ok = False
    try:
        log: list = []
        pred = amed.train(
            denoiser, shape=shape, student=args.student, teacher=args.teacher, teacher_options=teacher_options,
            num_steps=num_steps, M=args.M, schedule=schedule, afs=args.afs, scale_dir=args.scale_dir,
            scale_time=args.scale_time, features=features, network=network, batch=args.batch,
            total_samples=args.total_samples, lr=args.lr, loss=args.loss, learn_schedule=args.learn_schedule,
            schedule_lr=args.schedule_lr, seed=args.seed, model_id=model_id, dtype=dtype, progress=True, log=log,
            state_path=state if (args.checkpoint_every or args.resume) else None,
            checkpoint_every=args.checkpoint_every, resume=args.resume,
        )
        if info.is_main:
            pred.save(out)
            print(f"Trained in {log[0].seconds:.1f} s on {info.world_size} process(es); final loss "
                  f"{log[0].losses[-1]:.4f}; wrote {out}")
            if args.learn_schedule or not isinstance(schedule, str):
                print("  sigmas: " + ", ".join(f"{v:.4g}" for v in pred.config["sigmas"]))
            if not pred.uses_features:
                for i, row in enumerate(pred.table_values()):
                    print(f"  step {i}: r={row['r']:.4f} c={row['c']:.4f} a={row['a']:.4f}")
        ok = True
    finally:
        distributed.finish(info, barrier=ok)
    return 0
