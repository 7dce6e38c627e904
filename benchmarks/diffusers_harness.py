"""Diffusers harness: drive the *diffusers* schedulers with a fewstep (EDM) denoiser.

Used by the benchmarks (quality and speed of diffusers beside fewstep on the same model and seeds) and by
tests/test_peers.py (step-for-step agreement).  It runs the schedulers on exactly a given sigma schedule, by
default in float64 (``dtype=torch.float64``: exact comparisons), or natively in another dtype (float32 for
timing: no float64 patching, the scheduler's own arithmetic).

Checked against diffusers 0.42.1 (``diffusers.schedulers``).

Conventions of fewstep (the side we bridge *to*)
------------------------------------------------
* EDM / Karras parameterisation: ``x_sigma = x0 + sigma * n``.
* A model is a denoiser ``D(x, sigma) -> x0_hat``; ``x`` has shape ``(B, ...)``
  and we always pass ``sigma`` as a float64 tensor of shape ``(B,)``.
* A schedule is a 1-D float64 tensor of sigmas, strictly descending from
  ``sigma_max`` to ``sigma_min > 0`` (no trailing 0).  ``len(sigmas) - 1``
  steps are taken.
* ``run_diffusers(name, denoiser, x_T, sigmas, **options)`` takes ``x_T``, the
  state *at* ``sigmas[0]`` (i.e. ``noise * sigmas[0]``, already scaled) and
  returns the state at ``sigmas[-1]`` in the EDM space, in ``dtype`` (float64 by default), with no
  final denoising step.

Convention differences bridged (per scheduler details in the driver functions)
------------------------------------------------------------------------------
1. Spaces.  ``DPMSolverMultistepScheduler``, ``UniPCMultistepScheduler`` and
   ``DEISMultistepScheduler`` keep their ``sample`` in *VP space*:
   ``x_vp = alpha * x_edm`` with, for an EDM sigma ``s``,
   ``alpha = 1/sqrt(1+s^2)``, ``sigma_vp = s/sqrt(1+s^2)``
   (their ``_sigma_to_alpha_sigma_t``).  Their ``self.sigmas`` are the EDM
   sigmas ``sqrt((1-abar)/abar)`` and
   ``lambda = log(alpha) - log(sigma_vp) = -log(s)``.
   We therefore step ``x_vp = x_edm / sqrt(1+s^2)`` and convert back at the end.
   ``EulerDiscreteScheduler``, ``EDMEulerScheduler``, ``HeunDiscreteScheduler``
   and ``EDMDPMSolverMultistepScheduler`` keep ``sample`` in EDM space already
   (the EDM DPM variant uses ``alpha_t = 1``, so again ``lambda = -log s``).
   ``scale_model_input`` of Euler/Heun returns ``x / sqrt(1+s^2)`` (the VP input
   of an epsilon network, i.e. EDM ``c_in`` with sigma_data = 1) and the EDM
   schedulers' one returns ``c_in * x``: that is a *network-input* convention;
   our denoiser takes the EDM ``x`` itself, so the scaled value is not used
   (Euler's is still called because ``step`` warns otherwise).  The
   multistep VP schedulers' ``scale_model_input`` is the identity.

2. Model output.  ``prediction_type`` defaults to whatever the algorithm
   consumes, so that no lossy round trip happens:
   ``"sample"`` (the denoiser output D itself) for data-prediction solvers
   (dpmsolver++, UniPC predict_x0=True, Euler, Heun) and ``"epsilon"`` with
   ``eps = (x_edm - D) / s`` for noise-prediction ones (dpmsolver, UniPC
   predict_x0=False, DEIS; DEIS converts everything to x0 and back to eps
   internally).  Either can be forced with ``prediction_type=``.  The EDM
   schedulers (``variant="edm"``) only take a raw network output F with
   ``D = c_skip x + c_out F`` (c_skip = sd^2/(s^2+sd^2),
   c_out = s sd/sqrt(s^2+sd^2), sd = config.sigma_data): we invert that.
   Exact conversions are identities up to float64 round-off, but the
   epsilon round trip x0 = x - s*eps cancels at large s: forcing
   prediction_type="epsilon" on a data-prediction solver costs up to ~1e-12
   relative (seen on a single 80 -> 0.002 step); the defaults are exact to
   ~1e-16.

3. Arbitrary sigmas / no final step to 0.  None of the multistep schedulers
   accept raw EDM sigmas in ``set_timesteps`` (UniPC's ``sigmas=`` requires
   ``use_flow_sigmas``; DPM/DEIS/Heun only take integer ``timesteps``; the EDM
   schedulers' ``sigmas=`` is a *ramp* in [0, 1] fed to the Karras formula), and
   all of them append a final sigma (0 for ``final_sigmas_type="zero"``, the
   default, or the training sigma_min ~0.0292 for ``"sigma_min"``; DEIS always
   the training sigma_min).  ``EulerDiscreteScheduler.set_timesteps(sigmas=...)``
   does take the full schedule including the last sigma (no 0 appended) but
   casts it to float32 and maps each sigma to a timestep with ``_sigma_to_t``,
   which clips to [0, 999] so sigmas above ~14.6 give duplicate timesteps.
   The uniform recipe used here: call ``set_timesteps(num_inference_steps=N)``
   to reset the solver state, then overwrite
   ``scheduler.sigmas = sigmas`` (float64, CPU, length N+1: the scheduler reads
   ``sigmas[step_index]`` as the current and ``sigmas[step_index + 1]`` as the
   target level, so the last step lands exactly on ``sigmas[-1]``),
   ``scheduler.timesteps`` = N strictly decreasing dummy labels (their values
   are never used in the arithmetic; only ``len(timesteps)`` matters, see 4),
   ``scheduler.num_inference_steps = N``, and ``set_begin_index(0)`` so that
   ``step_index`` is a plain counter (no lookup of the timestep value, which
   misbehaves with duplicate timesteps: it takes the *second* match).
   Heun needs the interleaved layout it builds itself:
   ``[s0, s1, s1, s2, s2, ..., s_{N-1}, s_{N-1}, s_N]`` (2N entries) and 2N
   dummy timesteps; diffusers' own layout ends ``..., s_{N-1}, 0`` with 2N-1
   timesteps, i.e. its last step is a plain Euler step to 0 (as in EDM's Heun
   sampler); with ``s_N > 0`` every one of our N steps is a full Heun step.
   ``final_sigmas_type="sigma_min"`` is forced for DPM-Solver (both classes):
   with the default ``"zero"`` the final step is *always* first order (see 4),
   and ``algorithm_type="dpmsolver"`` refuses ``"zero"`` anyway.

4. Order lowering.  All multistep schedulers warm up: step i (0-based) uses
   order ``min(solver_order, i + 1)`` (counter ``lower_order_nums``).  At the end:
   * DPMSolverMultistep (both classes): the last step is first order if
     ``euler_at_final`` or ``final_sigmas_type == "zero"`` or
     (``lower_order_final`` and ``len(timesteps) < 15``); the second-last step
     is at most second order if ``lower_order_final`` and
     ``len(timesteps) < 15``.  So with N >= 15 steps, ``lower_order_final=True``
     does nothing.
   * DEIS: same, without the final_sigmas_type / euler_at_final clauses
     (``lower_order_final and len(timesteps) < 15``).
   * UniPC: NOT conditioned on 15 steps: with ``lower_order_final=True`` step i
     uses order ``min(solver_order, N - i, i + 1)`` for any N (so for order 3 the
     last step is order 1 and the second-last order 2 even with 1000 steps).
     The UniC corrector applied at the start of step i uses the order of the
     predictor of step i-1; the result of the final predictor is never
     corrected (no model evaluation at sigma_min), and ``disable_corrector``
     lists step indices whose *following* correction is skipped.
   * Euler, Heun: no order logic.
   ``diffusers_step_orders`` reports the orders actually used.

5. dtype.  With ``dtype=torch.float64`` (the default) everything is float64.
   Three ``step`` methods hard-code a float32 upcast ``sample = sample.to(torch.float32)`` (DPMSolverMultistep,
   EulerDiscrete, EDMEuler), and every ``set_timesteps`` stores float32 sigmas.
   We overwrite the sigmas with float64 ones, and while ``step`` runs, the
   name ``torch`` inside the scheduler's module is replaced by a proxy whose
   ``float32`` attribute is ``torch.float64`` (everything else is forwarded).
   This keeps diffusers' own ``step`` logic (order selection, history
   handling) verbatim while removing the downcast.  Not thread-safe.
   With another ``dtype`` (float32 for timing) nothing is patched: the state
   and model outputs are in that dtype and the scheduler runs as shipped.

6. Shapes.  UniPC's ``einsum("k,bkc...->bc...")`` needs x with >= 2 dims;
   a 1-D ``x_T`` of shape (B,) is run as (B, 1) and squeezed back.

7. Timestep labels / model calls.  The denoiser is called with the sigma the
   scheduler reads for the current state (``scheduler.sigmas[step_index]``).
   UniPC: the model is evaluated at the *uncorrected* predictor output (that
   is what ``step`` expects: it applies the corrector itself using that
   evaluation), as in every diffusers pipeline.
"""

from __future__ import annotations

import contextlib
import math
import sys
import warnings
from typing import Callable

import torch

__all__ = ["run_diffusers", "diffusers_sampler", "diffusers_step_orders", "gaussian_denoiser", "logsnr_sigmas",
           "check_sigmas", "denoise_at", "Denoiser"]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- helpers
def check_sigmas(sigmas) -> torch.Tensor:
    """``sigmas`` as a float64 CPU copy, or ValueError unless 1-D, >= 2 entries, positive and strictly descending."""
    s = torch.as_tensor(sigmas, dtype=torch.float64).detach().cpu()
    if s.ndim != 1 or s.numel() < 2:
        raise ValueError("sigmas must be a 1-D tensor with at least 2 entries")
    if not bool((s > 0).all()):
        raise ValueError("sigmas must be > 0 (the schedule ends at sigma_min > 0, not 0)")
    if not bool((s[1:] < s[:-1]).all()):
        raise ValueError("sigmas must be strictly descending")
    return s.clone()


def denoise_at(denoiser: Denoiser, x: torch.Tensor, s: float) -> torch.Tensor:
    """``denoiser(x, sigma)`` at the scalar ``s`` (passed as a float64 tensor of shape (B,)), in ``x``'s dtype."""
    sig = torch.full((x.shape[0],), s, dtype=torch.float64, device=x.device)
    out = denoiser(x, sig)
    return out.to(x.dtype)


class _Float32IsFloat64:
    """Stand-in for the ``torch`` module: ``float32`` means ``float64``."""

    float32 = torch.float64

    def __getattr__(self, name):
        return getattr(torch, name)


@contextlib.contextmanager
def _no_float32(scheduler, dtype=torch.float64):
    """Run ``scheduler.step`` without its float32 upcast when working in float64 (see 5.)."""
    if dtype != torch.float64:
        yield
        return
    mod = sys.modules[type(scheduler).step.__module__]
    old = mod.__dict__["torch"]
    mod.torch = _Float32IsFloat64()
    try:
        yield
    finally:
        mod.torch = old


def _install_schedule(sched, sigmas: torch.Tensor, n_calls: int, label_dtype) -> None:
    """Overwrite a freshly ``set_timesteps``-reset scheduler's schedule."""
    sched.sigmas = sigmas
    sched.timesteps = torch.arange(n_calls - 1, -1, -1).to(label_dtype)
    sched.set_begin_index(0)


def _take(options: dict, allowed: dict) -> dict:
    """Validate options against ``allowed`` = {name: (default, permitted values or None)}."""
    unknown = set(options) - set(allowed)
    if unknown:
        raise TypeError(f"unsupported options {sorted(unknown)}; allowed: {sorted(allowed)}")
    out = {}
    for k, (default, permitted) in allowed.items():
        v = options.get(k, default)
        if permitted is not None and v not in permitted:
            raise ValueError(f"option {k}={v!r} not in {permitted}")
        out[k] = v
    return out


_BOOL = (True, False)
_PRED = ("epsilon", "sample")


# --------------------------------------------------------------------------- drivers
def _run_vp_multistep(sched, denoiser, x_T, sig, prediction_type, dtype):
    """DPMSolverMultistep / UniPC / DEIS: sample lives in VP space."""
    n = len(sig) - 1
    sched.set_timesteps(num_inference_steps=n)
    _install_schedule(sched, sig, n, torch.int64)
    sched.num_inference_steps = n

    def alpha(s):  # VP alpha of EDM sigma s
        return 1.0 / math.sqrt(1.0 + s * s)

    sample = x_T.to(dtype) * alpha(float(sig[0]))
    with _no_float32(sched, dtype):
        for i in range(n):
            s = float(sig[i])
            x_edm = sample / alpha(s)
            d = denoise_at(denoiser, x_edm, s)
            out = d if prediction_type == "sample" else (x_edm - d) / s
            sample = sched.step(out, sched.timesteps[i], sample).prev_sample
    return sample / alpha(float(sig[-1]))


def _edm_F(sched, x, d, s):
    """Invert EDM preconditioning D = c_skip x + c_out F (prediction_type epsilon)."""
    sd = sched.config.sigma_data
    c_skip = sd**2 / (s**2 + sd**2)
    c_out = s * sd / math.sqrt(s**2 + sd**2)
    return (d - c_skip * x) / c_out


def _run_edm_dpm(sched, denoiser, x_T, sig, dtype):
    """EDMDPMSolverMultistepScheduler: EDM space, alpha_t = 1."""
    n = len(sig) - 1
    sched.set_timesteps(num_inference_steps=n)
    _install_schedule(sched, sig, n, torch.float64)
    sched.timesteps = 0.25 * torch.log(sig[:-1])  # its own c_noise labels (unique)
    x = x_T.to(dtype)
    with _no_float32(sched, dtype):
        for i in range(n):
            s = float(sig[i])
            d = denoise_at(denoiser, x, s)
            x = sched.step(_edm_F(sched, x, d, s), sched.timesteps[i], x).prev_sample
    return x


def _run_euler(sched, denoiser, x_T, sig, prediction_type, edm, dtype):
    n = len(sig) - 1
    if edm:
        sched.set_timesteps(num_inference_steps=n)
        _install_schedule(sched, sig, n, torch.float64)
        sched.timesteps = 0.25 * torch.log(sig[:-1])
    else:
        # set_timesteps(sigmas=...) takes the full schedule (last sigma included,
        # nothing appended) but in float32; we re-install it in float64.
        sched.set_timesteps(sigmas=sig.tolist())
        _install_schedule(sched, sig, n, torch.float32)
    x = x_T.to(dtype)
    with _no_float32(sched, dtype):
        for i in range(n):
            s = float(sig[i])
            t = sched.timesteps[i]
            sched.scale_model_input(x, t)  # only sets the flag; VP input not used
            d = denoise_at(denoiser, x, s)
            if edm:
                out = _edm_F(sched, x, d, s)
            else:
                out = d if prediction_type == "sample" else (x - d) / s
            x = sched.step(out, t, x).prev_sample
    return x


def _run_heun(sched, denoiser, x_T, sig, prediction_type, final_euler, dtype):
    n = len(sig) - 1
    sched.set_timesteps(num_inference_steps=n)
    inter = torch.cat([sig[:1], sig[1:-1].repeat_interleave(2), sig[-1:]])  # 2n entries
    calls = 2 * n - 1 if final_euler else 2 * n  # final_euler: diffusers' own layout, last step Euler
    _install_schedule(sched, inter, calls, torch.float32)
    x = x_T.to(dtype)
    with _no_float32(sched, dtype):
        for j in range(calls):
            s = float(inter[j])  # even j: state at s_k; odd j: Euler predictor at s_{k+1}
            d = denoise_at(denoiser, x, s)
            out = d if prediction_type == "sample" else (x - d) / s
            x = sched.step(out, sched.timesteps[j], x).prev_sample
    return x


def _build(name: str, options: dict):
    """Return (scheduler, runner) for ``name`` and validated ``options``."""
    import diffusers as df

    if name == "dpmpp":
        o = _take(options, {
            "algorithm_type": ("dpmsolver++", ("dpmsolver++", "dpmsolver")),
            "solver_order": (2, (1, 2, 3)),
            "solver_type": ("midpoint", ("midpoint", "heun")),
            "lower_order_final": (True, _BOOL),
            "euler_at_final": (False, _BOOL),
            "prediction_type": (None, (None,) + _PRED),
            "variant": ("vp", ("vp", "edm")),
        })
        if o["variant"] == "edm":
            if o["algorithm_type"] != "dpmsolver++" or o["prediction_type"] is not None:
                raise ValueError("variant='edm' supports only dpmsolver++ (raw EDM network output)")
            sched = df.EDMDPMSolverMultistepScheduler(
                solver_order=o["solver_order"], algorithm_type="dpmsolver++",
                solver_type=o["solver_type"], lower_order_final=o["lower_order_final"],
                euler_at_final=o["euler_at_final"], final_sigmas_type="sigma_min",
                prediction_type="epsilon",
            )
            return sched, lambda d, x, s, dt: _run_edm_dpm(sched, d, x, s, dt)
        pt = o["prediction_type"] or ("sample" if o["algorithm_type"] == "dpmsolver++" else "epsilon")
        sched = df.DPMSolverMultistepScheduler(
            solver_order=o["solver_order"], algorithm_type=o["algorithm_type"],
            solver_type=o["solver_type"], lower_order_final=o["lower_order_final"],
            euler_at_final=o["euler_at_final"], final_sigmas_type="sigma_min",
            prediction_type=pt,
        )
        return sched, lambda d, x, s, dt: _run_vp_multistep(sched, d, x, s, pt, dt)

    if name == "unipc":
        o = _take(options, {
            "solver_order": (2, (1, 2, 3)),
            "solver_type": ("bh2", ("bh1", "bh2")),
            "predict_x0": (True, _BOOL),
            "lower_order_final": (True, _BOOL),
            "disable_corrector": ((), None),
            "prediction_type": (None, (None,) + _PRED),
        })
        pt = o["prediction_type"] or ("sample" if o["predict_x0"] else "epsilon")
        sched = df.UniPCMultistepScheduler(
            solver_order=o["solver_order"], solver_type=o["solver_type"],
            predict_x0=o["predict_x0"], lower_order_final=o["lower_order_final"],
            disable_corrector=list(o["disable_corrector"]), prediction_type=pt,
        )
        return sched, lambda d, x, s, dt: _run_vp_multistep(sched, d, x, s, pt, dt)

    if name == "deis":
        o = _take(options, {
            "solver_order": (2, (1, 2, 3)),
            "lower_order_final": (True, _BOOL),
            "prediction_type": ("epsilon", _PRED),
        })
        sched = df.DEISMultistepScheduler(
            solver_order=o["solver_order"], algorithm_type="deis", solver_type="logrho",
            lower_order_final=o["lower_order_final"], prediction_type=o["prediction_type"],
        )
        return sched, lambda d, x, s, dt: _run_vp_multistep(sched, d, x, s, o["prediction_type"], dt)

    if name == "euler":
        o = _take(options, {
            "variant": ("discrete", ("discrete", "edm")),
            "prediction_type": ("sample", _PRED),
        })
        if o["variant"] == "edm":
            sched = df.EDMEulerScheduler(final_sigmas_type="sigma_min", prediction_type="epsilon")
        else:
            sched = df.EulerDiscreteScheduler(prediction_type=o["prediction_type"])
        edm = o["variant"] == "edm"
        return sched, lambda d, x, s, dt: _run_euler(sched, d, x, s, o["prediction_type"], edm, dt)

    if name == "heun":
        o = _take(options, {"prediction_type": ("sample", _PRED), "final_euler": (False, _BOOL)})
        sched = df.HeunDiscreteScheduler(prediction_type=o["prediction_type"])
        return sched, lambda d, x, s, dt: _run_heun(sched, d, x, s, o["prediction_type"], o["final_euler"], dt)

    raise ValueError(f"unknown scheduler {name!r}; expected dpmpp, unipc, deis, euler, heun")


# --------------------------------------------------------------------------- public
def run_diffusers(name: str, denoiser: Denoiser, x_T: torch.Tensor, sigmas: torch.Tensor,
                  dtype: torch.dtype = torch.float64, **options) -> torch.Tensor:
    """Integrate the probability-flow ODE with a diffusers scheduler.

    name: "dpmpp" (DPMSolverMultistepScheduler; ``variant="edm"`` selects
        EDMDPMSolverMultistepScheduler, dpmsolver++ only), "unipc", "deis",
        "euler" (EulerDiscreteScheduler; ``variant="edm"``: EDMEulerScheduler),
        "heun" (HeunDiscreteScheduler).
    denoiser: EDM denoiser D(x, sigma) -> x0_hat, sigma float64 of shape (B,).
    x_T: state at ``sigmas[0]`` (already multiplied by sigma_max).
    sigmas: strictly descending, sigma_min > 0 last; ``len(sigmas)-1`` steps.
    options: dpmpp: algorithm_type ("dpmsolver++" | "dpmsolver"), solver_order
        (1|2|3), solver_type ("midpoint"|"heun"), lower_order_final, euler_at_final,
        prediction_type, variant.  unipc: solver_order, solver_type ("bh1"|"bh2"),
        predict_x0, lower_order_final, disable_corrector, prediction_type.
        deis: solver_order, lower_order_final, prediction_type.  euler: variant,
        prediction_type.  heun: prediction_type, final_euler (diffusers' own
        layout: the last step is an Euler step, 2N-1 model calls instead of 2N).
        Defaults are diffusers' except prediction_type (see module docstring).
    dtype: float64 (default) runs every scheduler without its float32 upcast
        (exact comparisons); any other dtype runs the scheduler natively in it.
    Returns the state at ``sigmas[-1]`` (EDM space) in ``dtype``, same shape as x_T.
    """
    return diffusers_sampler(name, dtype, **options)(denoiser, x_T, sigmas)


def diffusers_sampler(name: str, dtype: torch.dtype = torch.float64,
                      **options) -> Callable[[Denoiser, torch.Tensor, torch.Tensor], torch.Tensor]:
    """``run_diffusers(name, ..., dtype, **options)`` as a reusable function ``(denoiser, x_T, sigmas) -> x``:
    the scheduler is built once, as a pipeline holds it, and reset by ``set_timesteps`` at every call
    (what the speed benchmark times)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "dpmsolver is deprecated"
        _, runner = _build(name, options)

    def run(denoiser: Denoiser, x_T: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
        sig = check_sigmas(sigmas)
        if x_T.ndim == 1:  # UniPC's einsum needs (B, C, ...): add a trailing axis
            return run(lambda x, s: denoiser(x[:, 0], s)[:, None], x_T[:, None], sig)[:, 0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return runner(denoiser, x_T, sig, dtype)

    return run


def diffusers_step_orders(name: str, n_steps: int, **options) -> list:
    """Order of the update diffusers actually applies at each of ``n_steps`` steps.

    Instruments the scheduler's update methods during a run on a dummy problem.
    For "unipc" each entry is ``(predictor_order, corrector_order_or_None)``
    where the corrector entry refers to the correction applied *to the result of
    that step* (at the start of the next step; None for the last step or where
    disabled).  For the other multistep schedulers it is an int; euler -> 1,
    heun -> 2.
    """
    if name in ("euler", "heun"):
        return [1 if name == "euler" else 2] * n_steps
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        sched, runner = _build(name, options)
    log = []
    if name == "unipc":
        p, c = sched.multistep_uni_p_bh_update, sched.multistep_uni_c_bh_update

        def wp(*a, **k):
            log.append(["p", k["order"]])
            return p(*a, **k)

        def wc(*a, **k):
            log.append(["c", k["order"]])
            return c(*a, **k)

        sched.multistep_uni_p_bh_update, sched.multistep_uni_c_bh_update = wp, wc
    else:
        for order, attr in ((1, "first_order_update"), (2, "second_order_update"),
                            (3, "third_order_update")):
            meth = [m for m in dir(sched) if m.endswith(attr) and not m.startswith("_")][0]
            orig = getattr(sched, meth)

            def wrapped(*a, _o=order, _f=orig, **k):
                log.append(_o)
                return _f(*a, **k)

            setattr(sched, meth, wrapped)
    sig = logsnr_sigmas(n_steps, 80.0, 0.002)
    x = torch.ones(1, 2, dtype=torch.float64) * 80.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        runner(gaussian_denoiser(torch.tensor([0.5, 2.0])), x, sig, torch.float64)
    if name != "unipc":
        return log
    out = []
    for kind, order in log:
        if kind == "p":
            out.append([order, None])
        else:
            out[-1][1] = order
    return [tuple(e) for e in out]


# --------------------------------------------------------------------------- analytic helpers
def gaussian_denoiser(c: torch.Tensor) -> Denoiser:
    """Exact denoiser for data ~ N(0, diag(c)) (c broadcast over the last dims of x)."""
    c = torch.as_tensor(c, dtype=torch.float64)

    def D(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s2 = sigma.to(torch.float64).reshape(-1, *([1] * (x.ndim - 1))) ** 2
        cc = c.to(x.device)
        return cc / (cc + s2) * x

    return D


def logsnr_sigmas(n_steps: int, sigma_max: float = 80.0, sigma_min: float = 0.002) -> torch.Tensor:
    """n_steps+1 sigmas uniformly spaced in log(sigma) (= uniform in logSNR)."""
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), n_steps + 1,
                                    dtype=torch.float64))
