"""AMED (Zhou et al., "Fast ODE-based Sampling for Diffusion Models in Around 5 Steps", CVPR 2024): what is AMED's
own. Its solvers are :class:`fewstep.solvers.AMEDSolver` and :class:`fewstep.solvers.AMEDPlugin`; its predictor
network (a table or a small network on the U-Net's bottleneck features, giving r_n, c_n, a_n per step) is the
learned sampler of methods "amed" and "plugin" (:class:`AMEDSampler`, :class:`AMEDPluginSampler`), trained and
loaded like every other method: ``fewstep.learned.train("amed", ...)``, ``fewstep.learned.load(path)``. Features
come from an explicit interface (:class:`HookFeatures`, :func:`find_bottleneck`)."""

from ..denoisers.features import HookFeatures, find_bottleneck, provides_features
from ..learned.amed import AMEDPluginSampler, AMEDSampler

__all__ = ["AMEDSampler", "AMEDPluginSampler", "HookFeatures", "find_bottleneck", "provides_features"]
