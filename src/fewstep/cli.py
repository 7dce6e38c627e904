"""Command-line interface: ``fewstep demo | ...``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from .io import atomic_path, save_figure, write_text_atomic

__all__ = ["main", "load_model", "build_parser"]


def _nfes(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def cmd_demo(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(max(1, args.threads))
    if not args.bed:
        from .demo import DemoConfig, run_demo

        out = Path(args.out or "fewstep-out/demo")
        seeds = args.seeds or 256
        run_demo(DemoConfig(out=out, seeds=seeds, nfes=args.nfe, amed_nfe=args.amed_nfe,
                            train_samples=args.train_samples))
        return 0
    return _bed_demo(args)


def _bed_demo(args: argparse.Namespace) -> int:
    import torch

    from . import data, denoisers, evaluation
    from .sampling import noise_for_seeds

    out = Path(args.out or "fewstep-out/bed")
    args.seeds = args.seeds or 1000
    t0 = time.perf_counter()
    print(f"Fitting a {args.components}-component Gaussian mixture to {args.patch}x{args.patch}x3 natural-image "
          f"patches (scikit-image / scikit-learn photos) ...", flush=True)
    bed = data.gmm_bed(size=args.patch, n_components=args.components)
    gmm = denoisers.GaussianMixture(bed["means"], bed["covariances"], bed["weights"])
    noise = noise_for_seeds(range(args.seeds), (3, args.patch, args.patch), dtype=torch.float64)
    print(f"Reference ODE solutions for {args.seeds} seeds (DEIS-logrho order 4, {args.ref_steps} steps) ...",
          flush=True)
    ref, ref_err = evaluation.reference_solution(gmm, noise, steps=args.ref_steps)
    print(f"  reference relative error vs. half the steps: {ref_err:.1e}", flush=True)
    rows = evaluation.solver_table(gmm, noise, ref, nfes=args.nfe, progress=True)
    table = evaluation.format_table(rows, args.nfe)
    header = (f"RMSE to the exact ODE solution at sigma_min=0.002, {args.seeds} seeds, Gaussian mixture "
              f"({args.components} components, {args.patch}x{args.patch}x3 patches), polynomial schedule rho=7, "
              f"sigma_max=80.\n\n")
    print("\n" + table)
    write_text_atomic(out / "results.md", header + table + "\n")
    write_text_atomic(out / "results.json", json.dumps({"reference_error": ref_err, "rows": rows}, indent=2) + "\n")
    print(f"\nWrote {out / 'results.md'} and {out / 'results.json'} in {time.perf_counter() - t0:.0f} s.")
    return 0


def _seeds(text: str) -> list[int]:
    """'0-99', '3,5,9' or '0-9,20-29' -> list of seeds."""
    out: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-", 1)
                lo, hi = int(a), int(b)
                if hi < lo:
                    raise ValueError
            elif part:
                lo = hi = int(part)
            else:
                continue
            if lo < 0 or hi >= 2**63:
                raise argparse.ArgumentTypeError(f"seeds must be in 0..2**63-1, got {text!r}")
            if len(out) + hi - lo + 1 > MAX_SEEDS:
                raise argparse.ArgumentTypeError(f"at most {MAX_SEEDS} seeds per run, got {text!r}")
            out.extend(range(lo, hi + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seeds like 0-99 or 1,5,9, got {text!r}") from None
    if not out:
        raise argparse.ArgumentTypeError(f"expected a non-empty set of non-negative seeds, got {text!r}")
    return out


MAX_SEEDS = 10**7  # a list of seeds is materialised: refuse ranges that would exhaust memory


MODELS = ("gmm", "unet")
MODEL_HELP = ("gmm (analytic natural-patch bed) | unet (the shipped U-Net) | PATH.safetensors (a SmallUNet file) | "
              "package.module:factory (your code; factory() returns a denoiser D(x, sigma) -> x0, give --shape)")


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a shape like 3,32,32, got {text!r}") from None
    if not shape or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive dimensions, got {text!r}")
    return shape


def load_model(name: str, shape: tuple[int, ...] | None = None):
    """(denoiser, sample shape, model id, dtype) for ``--model``: see MODEL_HELP."""
    import importlib

    import torch

    from . import data, denoisers

    if name == "gmm":
        bed = data.gmm_bed()
        gmm = denoisers.GaussianMixture(bed["means"], bed["covariances"], bed["weights"])
        gmm.model_id = "gmm-bed:8x8x3:k10:seed0"
        return gmm, (3, 8, 8), gmm.model_id, torch.float64
    if name == "unet" or name.endswith(".safetensors"):
        net = denoisers.default_unet() if name == "unet" else denoisers.load_unet(name)
        res = net.config.img_resolution
        return net, (net.config.channels, res, res), net.model_id, torch.float32
    if name.startswith("diffusers:"):  # --diffusers PATH_OR_DIR: a local save_pretrained folder (offline, safetensors)
        from .integrations.diffusers import load_denoiser

        den = load_denoiser(name.split(":", 1)[1])
        return den, den.sample_shape, den.model_id, torch.float32
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load model factory {name!r}: {e}") from None
        den = factory()
        if not callable(den):
            raise ValueError(f"{name} returned {type(den).__name__}, not a denoiser")
        if shape is None:
            raise ValueError("--shape is required with a model factory (e.g. --shape 3,32,32)")
        return den, shape, getattr(den, "model_id", name), torch.float32
    raise ValueError(f"unknown model {name!r}; use {MODEL_HELP}")


def _features(denoiser: object, choice: str) -> tuple[str, object]:
    """--features auto: the denoiser's own features, else the middle block of a U-Net, else none."""
    import torch

    from .amed import provides_features

    if choice != "auto":
        return choice, denoiser if isinstance(denoiser, torch.nn.Module) else None
    if provides_features(denoiser):
        return "adapter", None
    if isinstance(denoiser, torch.nn.Module):
        return "auto", denoiser
    return "none", None


def _json_object(text: str, name: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{name} must be a JSON object like '{{\"max_order\": 3}}', got {text!r} ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a JSON object like '{{\"max_order\": 3}}', got {text!r}")
    return value


def cmd_train(args: argparse.Namespace) -> int:
    """Train an AMED predictor; under ``torchrun`` the batches are split over the processes (gradients summed),
    and ``--checkpoint-every`` / ``--resume`` make a killed run continue to the same predictor."""
    import torch

    from . import amed, distributed

    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    if args.checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    denoiser, shape, model_id, dtype = load_model(args.model, args.shape)
    features, network = _features(denoiser, args.features)
    schedule = _kind_or_file(args.schedule)
    if not isinstance(schedule, str):
        num_steps = len(schedule)
    else:
        num_steps = args.num_steps or amed.steps_for_nfe(args.student, args.nfe, args.afs)
    teacher_options = _json_object(args.teacher_options, "--teacher-options") if args.teacher_options else None
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


def cmd_sample(args: argparse.Namespace) -> int:
    """Sample seeds: one .npz (``--out FILE.npz``) or one file per seed under a folder, resumable; under
    ``torchrun`` the seeds are sharded over the processes (fewstep.distributed)."""
    import numpy as np
    import torch

    from . import amed, distributed
    from .io import tensor_digest
    from .sampling import noise_for_seeds, sample, steps_for_nfe
    from .schedules import get_schedule

    out = Path(args.out)
    single_file = out.suffix == ".npz"
    fmt = "npz" if single_file else args.format
    if single_file and args.format != "png":
        raise ValueError("--format applies to an output folder; --out FILE.npz already writes one .npz")
    if out.is_dir() if single_file else (out.exists() and not out.is_dir()):
        raise ValueError(f"--out {out} exists and is not {'a file' if single_file else 'a directory'}")
    # Everything that can fail on bad input is checked before the process group starts and before any output.
    denoiser, shape, model_id, dtype = load_model(args.model, args.shape)
    if not single_file:
        distributed.check_image_shape(shape, fmt)
    if args.predictor:
        pred = amed.load(args.predictor, model_id=model_id)
        kwargs: dict = {"predictor": pred}
        run = {"predictor": tensor_digest(pred.state_dict()), "sigmas": pred.config["sigmas"], "afs": pred.config["afs"]}
    else:
        sigmas = _kind_or_file(args.schedule)  # a searched / learned schedule fixes the number of steps
        if isinstance(sigmas, str):
            sigmas = get_schedule(sigmas, steps_for_nfe(args.solver, args.nfe, args.afs))
        kwargs = {"sigmas": sigmas, "solver": args.solver, "afs": args.afs}
        run = {"solver": args.solver, "sigmas": sigmas.tolist(), "afs": args.afs}
    info = distributed.init_distributed(args.device)
    threads = args.threads or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(threads)
    if info.device.type != "cpu":
        for m in (denoiser, kwargs.get("predictor")):
            if m is not None and callable(getattr(m, "to", None)):
                m.to(info.device)
    nfe = [0]

    def sample_batch(seeds: list[int]) -> torch.Tensor:
        res = sample(denoiser, noise_for_seeds(seeds, shape, dtype=dtype, device=info.device), return_result=True,
                     denoise_to_zero=args.denoise_to_zero, **kwargs)
        nfe[0] = res.nfe
        return res.x

    ok = False
    try:
        if single_file:
            seeds, images = distributed.sample_seeds(sample_batch, args.seeds, batch=args.batch, info=info,
                                                     progress=True)
            if info.is_main:
                try:
                    with atomic_path(out, suffix=".npz") as tmp:
                        np.savez(tmp, images=images.float().clamp(-1, 1).numpy(), seeds=np.array(seeds))
                except OSError as e:
                    raise OSError(e.errno, f"cannot write {out}: {e.strerror}") from None
                print(f"Wrote {len(seeds)} samples ({nfe[0]} NFE each) to {out}")
        else:
            # --batch is part of it: batched float kernels are not bitwise batch-invariant (README "Many GPUs").
            settings = {"model": model_id, "shape": list(shape), "dtype": str(dtype).removeprefix("torch."),
                        "denoise_to_zero": args.denoise_to_zero, "format": fmt, "batch": args.batch, **run}
            counts = distributed.sample_seeds_to_dir(sample_batch, args.seeds, out, batch=args.batch, fmt=fmt,
                                                     settings=settings, info=info, progress=True)
            if info.is_main:
                print(f"Wrote {counts['written']} of {counts['seeds']} seeds to {out} ({counts['skipped']} were "
                      f"already there; {info.world_size} process{'es' if info.world_size > 1 else ''})")
        ok = True
    finally:
        distributed.finish(info, barrier=ok)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from . import data, metrics

    torch.set_num_threads(max(1, args.threads))
    images = metrics.load_images(args.images)
    ext = metrics.FeatureExtractor(args.features, int(np.prod(images.shape[1:])), args.inception)
    mu, sigma, feats = metrics.feature_stats(images, ext, args.batch, progress=True)
    ref_feats = None
    ref = args.ref
    if ref.startswith("patches:"):
        size = int(ref.split(":", 1)[1])
        ref_images = data.image_patches(size=size, count=args.ref_count, seed=12345).numpy()
    elif (stats := metrics.load_stats(ref, args.features)) is not None:
        (mu_r, sigma_r), ref_images = stats, None
    else:
        ref_images = metrics.load_images(ref)
    if ref_images is not None:
        if ref_images.shape[1:] != images.shape[1:]:
            raise ValueError(f"reference images have shape {ref_images.shape[1:]}, samples {images.shape[1:]}")
        mu_r, sigma_r, ref_feats = metrics.feature_stats(ref_images, ext, args.batch, progress=True)
        if args.save_ref_stats:
            with atomic_path(args.save_ref_stats, suffix=".npz") as tmp:
                np.savez(tmp, mu=mu_r, sigma=sigma_r, features=np.array(args.features))
    if mu_r.shape != mu.shape:
        raise ValueError(f"reference statistics have {mu_r.shape[0]} features, the extractor gives {mu.shape[0]}")
    result = {"images": len(images), "features": args.features, "fd": metrics.frechet_distance(mu, sigma, mu_r, sigma_r)}
    if args.kid:
        if ref_feats is None:
            raise ValueError("--kid needs reference images, not only statistics")
        result["kid"] = metrics.kid(feats, ref_feats)
    if args.pr:
        if ref_feats is None:
            raise ValueError("--pr needs reference images, not only statistics")
        result["precision"], result["recall"] = metrics.precision_recall(ref_feats, feats, k=args.pr_k)
    print(json.dumps(result))
    if args.out:
        write_text_atomic(Path(args.out), json.dumps(result, indent=1) + "\n")
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    """Paper figures: PCA of sampling trajectories (Fig. 4) and the learned r_n, c_n of a predictor (Fig. 7)."""
    import torch

    from . import amed, metrics
    from .io import pyplot
    from .sampling import noise_for_seeds, sample
    from .schedules import get_schedule

    torch.set_num_threads(max(1, args.threads))
    out = Path(args.out)
    args.solver = args.solver or {"pca": "heun", "error": "ipndm", "align": "amed,ipndm,dpmpp"}.get(args.what)
    if args.what == "align":
        fig, (ax, ax2) = pyplot().subplots(1, 2, figsize=(11, 4))
    else:
        fig, ax = pyplot().subplots(figsize=(6, 4))
    if args.what == "pca":
        denoiser, shape, model_id, dtype = load_model(args.model, args.shape)
        noise = noise_for_seeds(args.seeds, shape, dtype=dtype)
        sig = get_schedule("polynomial", args.steps + 1)
        traj = sample(denoiser, noise, sig, args.solver, return_trajectory=True, progress=True).trajectory
        ks = list(range(1, args.max_k + 1))
        errs = [metrics.trajectory_pca_error(traj, k) for k in ks]  # each (T, B)
        rows = ["k,mean_rel_error,max_rel_error,explained_variance"]
        x = traj.reshape(traj.shape[0], traj.shape[1], -1).double().transpose(0, 1)
        sv = torch.linalg.svdvals(x - x.mean(1, keepdim=True))  # (B, T)
        cum = (sv**2).cumsum(-1) / (sv**2).sum(-1, keepdim=True)
        for k, e in zip(ks, errs):
            rows.append(f"{k},{float(e.mean()):.6g},{float(e.max()):.6g},{float(cum[:, k - 1].mean()):.6g}")
        ax.plot(ks, [float(e.mean()) for e in errs], "o-", label="relative projection error (mean)")
        ax.plot(ks, [float(cum[:, k - 1].mean()) for k in ks], "s--", label="cumulative explained variance")
        ax.set_xlabel("principal components k")
        ax.set_title(f"{model_id}: {args.solver}, {args.steps} steps, {len(args.seeds)} trajectories", fontsize=8)
    elif args.what in ("error", "align"):
        rows = _analyze_error(args, ax) if args.what == "error" else _analyze_align(args, ax, ax2)
    else:
        if not args.predictor:
            raise ValueError("analyze predictor needs --predictor PATH")
        pred = amed.load(args.predictor)
        if pred.uses_features:
            raise ValueError("analyze predictor plots predictor-free tables; this predictor reads features")
        table = pred.table_values()
        rows = ["step,sigma_cur,sigma_next,r,c,a"]
        sig = pred.config["sigmas"]
        for i, v in enumerate(table):
            rows.append(f"{i},{sig[i]:.6g},{sig[i + 1]:.6g},{v['r']:.6g},{v['c']:.6g},{v['a']:.6g}")
        steps = list(range(len(table)))
        ax.plot(steps, [v["r"] for v in table], "o-", label="r_n")
        ax.plot(steps, [v["c"] for v in table], "s-", label="c_n")
        ax.set_xlabel("step n (largest sigma first)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out.with_suffix(".png"))
    write_text_atomic(out.with_suffix(".csv"), "\n".join(rows) + "\n")
    print("\n".join(rows))
    print(f"Wrote {out.with_suffix('.png')} and {out.with_suffix('.csv')}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """The AMED paper's Tables 2, 4, 5 regenerated on the analytic bed (or a model): Markdown + JSON."""
    import torch

    from . import data, paper

    torch.set_num_threads(max(1, args.threads))
    which = args.which.replace("paper-", "")
    denoiser, shape, model_id, dtype = load_model(args.model, args.shape)
    seeds = args.seeds or (1000 if args.model == "gmm" else 200)
    ref_steps = args.ref_steps or (256 if args.model == "gmm" else 64)
    if args.model == "gmm":
        desc, fd_ref = "Gaussian mixture fitted to 8x8x3 natural-image patches (10 components; exact denoiser)", None
    else:
        desc = f"model {model_id} (RMSE to a high-accuracy teacher solution, not to an exact one)"
        fd_ref = data.image_patches(size=shape[-1], count=args.fd_count, seed=12345).to(dtype) \
            if len(shape) == 3 and shape[0] == 3 else None
    out = Path(args.out or f"fewstep-out/paper/{which}.md")
    command = (f"fewstep bench {args.which} --model {args.model} --seeds {seeds} --ref-steps {ref_steps} "
               f"--nfe {','.join(map(str, args.nfe))} --train-samples {args.train_samples} --M {args.M}"
               + (f" --plugin-base {args.plugin_base}" if which == "table2" else "")
               + (f" --shape {','.join(map(str, args.shape))}" if args.shape else "")
               + (f" --fd-count {args.fd_count}" if fd_ref is not None else "") + f" --out {out}")
    print(f"{command}\nReference solution for {seeds} seeds ...", flush=True)
    bed = paper.make_bed(denoiser, shape, seeds=seeds, ref_steps=ref_steps, model_id=model_id, dtype=dtype,
                         description=desc, fd_reference=fd_ref)
    result, seconds = paper.run_table(which, bed, args.nfe, args.train_samples, args.M, args.plugin_base,
                                      progress=True)
    text = paper.report(which, result, bed, args.nfe, command,
                        {"total_samples": args.train_samples, "M": args.M}, seconds)
    write_text_atomic(out, text)
    write_text_atomic(out.with_suffix(".json"), json.dumps(paper.json_safe(
        {"command": command, "seconds": seconds, "reference_error": bed.ref_error, **result}), indent=1) + "\n")
    print(text)
    print(f"Wrote {out} and {out.with_suffix('.json')} in {seconds:.0f} s")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    """GITS schedule search, schedule learning by distillation, and export of schedules / AMED tables."""
    import torch

    from . import amed
    from .schedules import save_schedule

    torch.set_num_threads(max(1, args.threads))
    if args.action == "export":
        if args.source is None:
            raise ValueError("schedule export needs SOURCE: a schedule .json or an AMED checkpoint .safetensors")
        return _export(Path(args.source), args.format, args.out)
    if args.source is not None:
        raise ValueError(f"schedule {args.action} takes no SOURCE argument (got {args.source!r})")
    if not args.out:
        raise ValueError(f"schedule {args.action} needs --out FILE.json")
    denoiser, shape, model_id, dtype = load_model(args.model, args.shape)
    options = json.loads(args.solver_options) if args.solver_options else {}
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    info = {"method": args.action, "model_id": model_id, "solver": args.solver, "solver_options": options,
            "nfe": args.nfe, "afs": args.afs}
    if args.action == "search":
        from .schedule_search import search_schedule

        sig = search_schedule(denoiser, shape, nfe=args.nfe, solver=args.solver, solver_options=options, afs=args.afs,
                              grid=args.grid, grid_kind=args.grid_kind, warmup=args.warmup, coeff=args.coeff,
                              teacher=args.teacher, dtype=dtype, progress=True)
        info.update(grid=args.grid, grid_kind=args.grid_kind, warmup=args.warmup, coeff=args.coeff, teacher=args.teacher)
    else:
        init = _kind_or_file(args.init)
        sig = amed.learn_schedule(denoiser, shape=shape, solver=args.solver, solver_options=options, nfe=args.nfe,
                                  afs=args.afs, schedule=init, total_samples=args.total_samples, lr=args.lr,
                                  seed=args.seed, dtype=dtype, progress=True)
        info.update(init=args.init, total_samples=args.total_samples, lr=args.lr, seed=args.seed)
    save_schedule(out, sig, **info)
    print(f"{args.action}: {', '.join(f'{v:.4g}' for v in sig.tolist())} ({time.perf_counter() - t0:.1f} s); wrote {out}")
    return 0


def _export(source: Path, fmt: str, out: str | None) -> int:
    """A schedule file or an AMED checkpoint as plain numbers for other tools."""
    from . import amed
    from .schedules import load_schedule
    from .solvers.base import geometric_time

    if source.suffix == ".safetensors":
        pred = amed.load(source)
        sig = pred.config["sigmas"]
        doc: dict = {"sigmas": sig, "afs": pred.config["afs"], "student": pred.config["student"]}
        if not pred.uses_features:
            steps = []
            for i, v in enumerate(pred.table_values()):
                s_n = geometric_time(sig[i], sig[i + 1], v["r"])  # AMED eq. 10
                steps.append({"t_cur": sig[i], "t_next": sig[i + 1], "r": v["r"], "s": s_n, "eval_sigma": v["a"] * s_n,
                              "c": v["c"]})
            doc["steps"] = steps
    else:
        sig = load_schedule(source).tolist()
        doc = {"sigmas": sig}
    if fmt == "list":
        text = ", ".join(repr(v) for v in sig)
    elif fmt == "k":  # k-diffusion / diffusers `sigmas=`: the final jump to 0 is part of the list
        text = json.dumps(sig + [0.0])
    else:
        doc["k_diffusion_sigmas"] = sig + [0.0]
        text = json.dumps(doc, indent=1)
    if out:
        write_text_atomic(Path(out), text + "\n")
    print(text)
    return 0


def _analyze_error(args: argparse.Namespace, ax) -> list[str]:  # noqa: ANN001
    """Per-step RMSE / L2 of solvers (and an AMED predictor) to a DEIS-4 teacher on the same sigmas."""
    from . import amed, evaluation
    from .sampling import noise_for_seeds, steps_for_nfe
    from .schedules import get_schedule

    denoiser, shape, model_id, dtype = load_model(args.model, args.shape)
    noise = noise_for_seeds(args.seeds, shape, dtype=dtype)
    m = args.teacher_steps or 16
    runs = []
    for name in [v.strip() for v in args.solver.split(",") if v.strip()]:
        sig = get_schedule(args.schedule, steps_for_nfe(name, args.nfe, args.afs))
        label = name + (" +AFS" if args.afs else "")
        runs.append((label, evaluation.trajectory_error(denoiser, noise, sig, name, afs=args.afs, teacher_steps=m)))
    if args.predictor:
        pred = amed.load(args.predictor, model_id=model_id)
        st = pred.config["student"]
        label = "AMED-Solver" if st["solver"] == "amed" else f"AMED-Plugin on {st['base']}"
        runs.append((label, evaluation.trajectory_error(denoiser, noise, None, predictor=pred, teacher_steps=m)))
    rows = ["solver,nfe,step,sigma,rmse,l2,teacher_change"]
    for label, e in runs:
        for i, (sg, r, l2, tc) in enumerate(zip(e["sigma"], e["rmse"], e["l2"], e["teacher_change"])):
            rows.append(f"{label},{e['nfe'][0]},{i},{sg:.6g},{r:.6g},{l2:.6g},{tc:.3g}")
        ax.plot(e["sigma"][1:], e["rmse"][1:], "o-", label=f"{label} (NFE {e['nfe'][0]})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("sigma (sampling runs right)")
    ax.set_ylabel("RMSE to the teacher")
    ax.set_title(f"{model_id}: per-step error, {len(args.seeds)} seeds, {args.schedule} schedule;\n"
                 f"teacher DEIS-4 with {m} steps inserted per interval", fontsize=8)
    return rows


def _analyze_align(args: argparse.Namespace, ax, ax2) -> list[str]:  # noqa: ANN001
    """Grid-searched intermediate times vs r = 0.5 per step and solver (paper Fig. 5)."""
    from . import paper
    from .sampling import noise_for_seeds

    denoiser, shape, model_id, dtype = load_model(args.model, args.shape)
    noise = noise_for_seeds(args.seeds, shape, dtype=dtype)
    solvers = [v.strip() for v in args.solver.split(",") if v.strip()]
    res = paper.alignment(denoiser, noise, nfe=args.nfe, solvers=solvers, grid=args.grid, afs=True,
                          schedule=args.schedule, M=args.teacher_steps or 8)
    keys = list(res[0])
    rows = [",".join(keys)] + [",".join(f"{r[k]:.6g}" if isinstance(r[k], float) else str(r[k]) for k in keys)
                               for r in res]
    for label in dict.fromkeys(r["solver"] for r in res):
        sel = [r for r in res if r["solver"] == label]
        steps = [r["step"] for r in sel]
        line, = ax.plot(steps, [r["r_opt"] for r in sel], "o-", label=label)
        ax.errorbar(steps, [r["r_sample_mean"] for r in sel], [r["r_sample_std"] for r in sel], fmt="none",
                    ecolor=line.get_color(), alpha=0.5, capsize=3)
        ax2.plot(steps, [r["ratio"] for r in sel], "o-", color=line.get_color(), label=label)
    from matplotlib.ticker import MaxNLocator

    for a in (ax, ax2):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.axhline(0.5, color="k", ls="--", lw=1, label="r = 0.5 (DPM-Solver-2 / plugin default)")
    ax.set_ylim(0, 1)
    ax.set_xlabel("step n (largest sigma first)")
    ax.set_ylabel("grid-searched r_n (bars: per-sample mean ± std)")
    ax.set_title(f"{model_id}: s_n = t_n^r t_(n+1)^(1-r), NFE {args.nfe}, {len(args.seeds)} seeds", fontsize=8)
    ax2.set_yscale("log")
    ax2.axhline(1.0, color="k", lw=1)
    ax2.set_xlabel("step n")
    ax2.set_ylabel("RMSE at r = 0.5 / RMSE at grid-searched r")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    return rows


def _kind_or_file(text: str):  # noqa: ANN202 (str or a float64 tensor)
    """A ``--schedule`` / ``--init`` value: a schedule kind as is, or the sigmas of a .json schedule file."""
    from .schedules import load_schedule

    return load_schedule(text) if text.endswith(".json") else text


def _schedule_arg(text: str) -> str:
    if text in ("polynomial", "logsnr", "time_uniform") or text.endswith(".json"):
        return text
    raise argparse.ArgumentTypeError(f"expected polynomial, logsnr, time_uniform or a .json schedule file, got {text!r}")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gmm", help=MODEL_HELP + " (default: %(default)s)")
    p.add_argument("--shape", type=_shape, default=None, help="sample shape C,H,W for a model factory")
    p.add_argument("--diffusers", dest="model", type=lambda path: "diffusers:" + path, metavar="PATH_OR_DIR",
                   help="instead of --model: a diffusers UNet2DModel pipeline or UNet folder saved with save_pretrained")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fewstep", description="Few-step ODE sampling of diffusion models (AMED).")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="train AMED on the shipped U-Net and compare every solver at NFE 3/5/7/9")
    d.add_argument("--bed", action="store_true", help="instead: solver table on the analytic natural-patch bed")
    d.add_argument("--out", default=None, help="output folder (default: fewstep-out/demo or fewstep-out/bed)")
    d.add_argument("--seeds", type=_positive, default=None, help="number of seeds (default: 256; bed 1000)")
    d.add_argument("--amed-nfe", type=_positive, default=5, help="NFE the AMED predictors are trained for")
    d.add_argument("--train-samples", type=_positive, default=2048, help="AMED training samples")
    d.add_argument("--nfe", type=_nfes, default=[3, 5, 7, 9], help="comma-separated NFEs (default: 3,5,7,9)")
    d.add_argument("--patch", type=_positive, default=8, help="patch size (default: %(default)s)")
    d.add_argument("--components", type=_positive, default=10, help="mixture components (default: %(default)s)")
    d.add_argument("--ref-steps", type=_positive, default=256, help="reference solver steps (default: %(default)s)")
    d.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    d.set_defaults(func=cmd_demo)

    t = sub.add_parser("train", help="train an AMED predictor by distillation")
    _add_model_args(t)
    t.add_argument("--out", required=True, help="checkpoint path (.safetensors)")
    t.add_argument("--student", default="amed", help="amed (AMED-Solver) or a base solver for AMED-Plugin")
    t.add_argument("--nfe", type=_positive, default=5, help="target NFE (default: %(default)s)")
    t.add_argument("--num-steps", type=_positive, default=None, help="number of sigmas (overrides --nfe)")
    t.add_argument("--no-afs", dest="afs", action="store_false", help="disable the analytical first step")
    t.add_argument("--schedule", default="polynomial", type=_schedule_arg,
                   help="polynomial | logsnr | time_uniform | FILE.json (e.g. from fewstep schedule search)")
    t.add_argument("--learn-schedule", action="store_true", help="learn the schedule's sigmas jointly (issue 8)")
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
    t.add_argument("--batch", type=_positive, default=64)
    t.add_argument("--total-samples", type=_positive, default=8192)
    t.add_argument("--lr", type=float, default=None, help="default: 0.1 (table), 0.02 (features)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--overwrite", action="store_true")
    t.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="sample seeds with a solver or a trained AMED predictor")
    _add_model_args(s)
    s.add_argument("--predictor", default=None, help="AMED checkpoint; its schedule, solver and AFS are used")
    s.add_argument("--solver", default="ipndm", help="solver when no predictor is given")
    s.add_argument("--nfe", type=_positive, default=5)
    s.add_argument("--afs", action="store_true")
    s.add_argument("--schedule", default="polynomial", type=_schedule_arg,
                   help="polynomial | logsnr | time_uniform | FILE.json (fewstep schedule search/learn; fixes the NFE)")
    s.add_argument("--seeds", type=_seeds, default=_seeds("0-63"), help="e.g. 0-99 (default: 0-63)")
    s.add_argument("--batch", type=_positive, default=64,
                   help="seeds per model call (default: %(default)s); outputs are bitwise reproducible for a fixed "
                        "--batch whatever the number of processes")
    s.add_argument("--denoise-to-zero", action="store_true")
    s.add_argument("--out", required=True,
                   help="FILE.npz (images in [-1, 1], seeds) or a folder: one file per seed, OUT/000000/000123.png, "
                        "1000 per sub-folder; rerun the same command to resume")
    s.add_argument("--format", default="png", choices=("png", "npy"),
                   help="per-seed files in a folder: png (uint8 RGB/grey) or npy (float32 in [-1, 1]) "
                        "(default: %(default)s)")
    s.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda:LOCAL_RANK if available)")
    s.add_argument("--threads", type=_positive, default=None,
                   help="torch threads (default: the CPU count, divided among torchrun's local processes)")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="Fréchet distance (and KID) of generated images to reference statistics")
    e.add_argument("images", help="generated images: .npz (images in [-1, 1] or uint8) or a folder of PNGs")
    e.add_argument("--ref", required=True,
                   help="reference: statistics .npz (mu, sigma; EDM layout), images (.npz / folder), or patches:SIZE")
    e.add_argument("--ref-count", type=_positive, default=10000, help="patches for --ref patches:SIZE")
    e.add_argument("--features", default="random", choices=("random", "pixels", "inception"))
    e.add_argument("--inception", default=None, help="TorchScript Inception-v3 file for --features inception")
    e.add_argument("--save-ref-stats", default=None, help="cache the reference statistics to this .npz")
    e.add_argument("--kid", action="store_true", help="also compute KID (needs reference images)")
    e.add_argument("--pr", action="store_true",
                   help="also compute improved precision/recall (Kynkäänniemi et al., 2019; needs reference images)")
    e.add_argument("--pr-k", type=_positive, default=3, help="k of the k-NN balls for --pr (default: 3)")
    e.add_argument("--batch", type=_positive, default=256)
    e.add_argument("--out", default=None, help="write the result as JSON here")
    e.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    e.set_defaults(func=cmd_eval)

    a = sub.add_parser("analyze", help="trajectory PCA (paper Fig. 4), grid-searched intermediate steps (Fig. 5), "
                                       "a predictor's learned r, c (Fig. 7), per-step error to a teacher")
    a.add_argument("what", choices=("pca", "predictor", "error", "align"))
    _add_model_args(a)
    a.add_argument("--predictor", default=None, help="AMED checkpoint (for 'predictor'; for 'error' an extra row)")
    a.add_argument("--solver", default=None,
                   help="pca: trajectory solver (default heun); error: comma-separated solvers (default ipndm); "
                        "align: comma-separated forms, amed (AMED-Solver / DPM-Solver-2) or a plugin base solver "
                        "(default amed,ipndm,dpmpp)")
    a.add_argument("--nfe", type=_positive, default=5, help="error / align: NFE (default: %(default)s)")
    a.add_argument("--afs", action="store_true", help="error: use AFS (align always does)")
    a.add_argument("--schedule", default="polynomial", choices=("polynomial", "logsnr", "time_uniform"),
                   help="error / align: time schedule (default: %(default)s)")
    a.add_argument("--teacher-steps", type=_positive, default=None,
                   help="error / align: teacher steps inserted per interval (default: 16 / 8)")
    a.add_argument("--grid", type=_positive, default=49, help="align: grid points for r in (0, 1) (plus r = 0.5)")
    a.add_argument("--steps", type=_positive, default=32, help="trajectory steps (default: %(default)s)")
    a.add_argument("--seeds", type=_seeds, default=_seeds("0-63"))
    a.add_argument("--max-k", type=_positive, default=5)
    a.add_argument("--out", required=True, help="output path stem; writes .png and .csv")
    a.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    a.set_defaults(func=cmd_analyze)

    b = sub.add_parser("bench", help="the AMED paper's Tables 2, 4, 5 regenerated on the analytic bed (or a model)")
    b.add_argument("which", choices=("paper-table2", "paper-table4", "paper-table5"),
                   help="table2: solvers x NFE; table4: teacher solvers; table5: time schedules +- AMED-Plugin")
    _add_model_args(b)
    b.add_argument("--seeds", type=_positive, default=None, help="held-out seeds (default: 1000 gmm, 200 otherwise)")
    b.add_argument("--ref-steps", type=_positive, default=None, help="reference steps (default: 256 gmm, 64 otherwise)")
    b.add_argument("--nfe", type=_nfes, default=[3, 5, 7, 9], help="comma-separated NFEs (default: 3,5,7,9)")
    b.add_argument("--train-samples", type=_positive, default=4096, help="AMED training samples per predictor")
    b.add_argument("--M", type=_positive, default=8, help="teacher steps inserted per interval (default: 8)")
    b.add_argument("--plugin-base", default="auto", help="table2: base solver of AMED-Plugin (auto: the best)")
    b.add_argument("--fd-count", type=_positive, default=10000, help="reference patches for the FD of image models")
    b.add_argument("--out", default=None, help="output .md (and .json beside it); default fewstep-out/paper/")
    b.add_argument("--threads", type=int, default=1, help="torch threads (default: 1)")
    b.set_defaults(func=cmd_bench)
    sc = sub.add_parser("schedule", help="search (GITS), learn or export time schedules")
    sc.add_argument("action", choices=("search", "learn", "export"))
    sc.add_argument("source", nargs="?", default=None, help="for export: a schedule .json or an AMED checkpoint")
    _add_model_args(sc)
    sc.add_argument("--solver", default="ipndm", help="solver the schedule is for (default: %(default)s)")
    sc.add_argument("--solver-options", default=None, help='JSON, e.g. \'{"max_order": 3}\'')
    sc.add_argument("--nfe", type=_positive, default=5)
    sc.add_argument("--afs", action="store_true", help="the solver uses the analytical first step")
    sc.add_argument("--grid", type=_positive, default=61, help="search: fine grid points (default: %(default)s)")
    sc.add_argument("--grid-kind", default="polynomial", choices=("polynomial", "logsnr", "time_uniform"))
    sc.add_argument("--warmup", type=_positive, default=256, help="search: teacher trajectories (default: %(default)s)")
    sc.add_argument("--coeff", type=float, default=1.15, help="search: GITS cost-to-go weight (default: %(default)s)")
    sc.add_argument("--teacher", default="deis", help="teacher solver (default: %(default)s)")
    sc.add_argument("--init", default="polynomial", help="learn: initial schedule kind or .json file")
    sc.add_argument("--total-samples", type=_positive, default=8192)
    sc.add_argument("--lr", type=float, default=0.05)
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--format", default="json", choices=("json", "list", "k"),
                    help="export: json (everything), list (plain sigmas), k (k-diffusion / diffusers sigmas=, ending in 0)")
    sc.add_argument("--out", default=None, help="output .json (search/learn: required)")
    sc.add_argument("--overwrite", action="store_true")
    sc.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    sc.set_defaults(func=cmd_schedule)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (ValueError, TypeError, OSError) as e:
        print(f"fewstep {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fewstep {args.command}: interrupted", file=sys.stderr)
        return 130
