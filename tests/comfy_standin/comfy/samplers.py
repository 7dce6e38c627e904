"""Stand-in for ``comfy/samplers.py`` (ComfyUI): ``Sampler``, ``KSamplerX0Inpaint`` and ``KSAMPLER`` with the
real constructor arguments and ``sample`` call path (read from a vendored copy of ComfyUI's class-based
KSAMPLER, 2024+: ``KSAMPLER(sampler_function, extra_options={}, inpaint_options={})``). Inpainting masks,
random inpaint noise and model patches are left out."""

import math

import torch


class KSamplerX0Inpaint:
    def __init__(self, model, sigmas):
        self.inner_model = model
        self.sigmas = sigmas

    def __call__(self, x, sigma, denoise_mask, model_options={}, seed=None):  # noqa: B006 (as ComfyUI)
        if denoise_mask is not None:
            raise NotImplementedError("stand-in: no inpainting")
        return self.inner_model(x, sigma, model_options=model_options, seed=seed)


class Sampler:
    def sample(self):
        pass

    def max_denoise(self, model_wrap, sigmas):
        max_sigma = float(model_wrap.inner_model.model_sampling.sigma_max)
        sigma = float(sigmas[0])
        return math.isclose(max_sigma, sigma, rel_tol=1e-05) or sigma > max_sigma


class KSAMPLER(Sampler):
    def __init__(self, sampler_function, extra_options={}, inpaint_options={}):  # noqa: B006 (as ComfyUI)
        self.sampler_function = sampler_function
        self.extra_options = extra_options
        self.inpaint_options = inpaint_options

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        extra_args["denoise_mask"] = denoise_mask
        model_k = KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image = latent_image
        model_k.noise = noise

        noise = model_wrap.inner_model.model_sampling.noise_scaling(sigmas[0], noise, latent_image,
                                                                    self.max_denoise(model_wrap, sigmas))

        k_callback = None
        total_steps = len(sigmas) - 1
        if callback is not None:
            k_callback = lambda x: callback(x["i"], x["denoised"], x["x"], total_steps)

        samples = self.sampler_function(model_k, noise, sigmas, extra_args=extra_args, callback=k_callback,
                                        disable=disable_pbar, **self.extra_options)
        samples = model_wrap.inner_model.model_sampling.inverse_noise_scaling(sigmas[-1], samples)
        return samples


# --- test helpers (not ComfyUI API): a model_wrap as CFGGuider hands to sampler.sample ----------------------

class ModelSamplingEPS:
    """comfy.model_sampling.EPS's noise scaling with a given sigma_max."""

    def __init__(self, sigma_max=80.0):
        self.sigma_max = torch.tensor(sigma_max)

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        if max_denoise:
            noise = noise * torch.sqrt(1.0 + sigma ** 2.0)
        else:
            noise = noise * sigma
        noise += latent_image
        return noise

    def inverse_noise_scaling(self, sigma, latent):
        return latent


class _BaseModel:
    def __init__(self, sigma_max):
        self.model_sampling = ModelSamplingEPS(sigma_max)


class StandInGuider:
    """What CFGGuider is to KSAMPLER.sample: callable (x, sigma, model_options, seed) -> x0, with inner_model."""

    def __init__(self, denoiser, sigma_max=80.0):
        self.denoiser = denoiser
        self.inner_model = _BaseModel(sigma_max)
        self.calls = []

    def __call__(self, x, sigma, model_options={}, seed=None):  # noqa: B006 (as ComfyUI)
        self.calls.append((tuple(sigma.shape), seed))
        return self.denoiser(x, sigma)
