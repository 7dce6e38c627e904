"""The AMED paper's own numbers (Zhou et al., CVPR 2024): FIDs of its Tables 2-5 with the keys of our matching rows,
the NFEs it reports, and the titles and units of our reports."""

from __future__ import annotations

from typing import Any

__all__ = ["NFES", "PaperRow", "PAPER_TABLE2", "PAPER_TABLE2_CIFAR10", "PAPER_TABLE3_SD", "PAPER_TABLE4",
           "PAPER_TABLE5", "TITLES", "UNITS"]

NFES = (3, 5, 7, 9)

# ------------------------------------------------------------------------------------------ the paper's numbers
# Read from the paper's text (../shared/papers/amed-cvpr2024.txt, CVPR 2024 version; its tables are extracted with a
# mangled layout: where a cell stacks several rows, its numbers run down the rows of one NFE column). FID (lower
# is better), 50k samples; NFE 3/5/7/9 with AFS for the AMED methods, DPM-Solver-2 and EDM. Each row is
# (paper's name, key of our matching row, FIDs); keys: a solver name (``"dpmpp"`` ...), ``"amed"`` (AMED-Solver)
# or ``"amed_plugin:<base>"``. The paper's Appendix C.4 (even NFE 4/6/8/10 without AFS) is not in that text.

PaperRow = tuple[str, str, tuple[float, ...]]

# Table 2. Sub-table letters follow the captions; the extracted captions sit after the wrong blocks, and the
# blocks were assigned by the text's own check "AMED-Plugin on iPNDM improves the FID by 6.98, 4.68 and 5.16 on
# CIFAR10, ImageNet 64 and FFHQ 64 in 5 NFE" (13.59-6.61, 17.17-12.49, 18.99-13.83) and by 2(d) being the only one
# whose AMED-Plugin is on DPM-Solver-2. 2(b) and 2(d) have no EDM row. All 2(a) plugin cells and 2(b)'s NFE-9 cell
# carry the paper's dagger: time scaling factors a_n trained as well.
PAPER_TABLE2: dict[str, dict[str, Any]] = {
    "cifar10": {"title": "2(a) CIFAR-10 32x32, unconditional (EDM model); AMED-Plugin on iPNDM", "rows": (
        ("DPM-Solver++(3M)", "dpmpp", (110.0, 24.97, 6.74, 3.42)),
        ("UniPC", "unipc", (109.6, 23.98, 5.83, 3.21)),
        ("iPNDM", "ipndm", (47.98, 13.59, 5.08, 3.17)),
        ("DDIM", "euler", (93.36, 49.66, 27.93, 18.43)),
        ("EDM (Heun)", "heun", (306.2, 97.67, 37.28, 15.76)),
        ("DPM-Solver-2", "dpm2", (155.7, 57.30, 10.20, 4.98)),
        ("AMED-Solver", "amed", (18.49, 7.59, 4.36, 3.67)),
        ("AMED-Plugin on iPNDM", "amed_plugin:ipndm", (10.81, 6.61, 3.65, 2.63)),
    )},
    "imagenet64": {"title": "2(b) ImageNet 64x64, conditional; AMED-Plugin on iPNDM", "rows": (
        ("DPM-Solver++(3M)", "dpmpp", (86.45, 22.51, 8.44, 4.77)),
        ("UniPC", "unipc", (86.43, 21.40, 7.44, 4.47)),
        ("iPNDM", "ipndm", (45.98, 17.17, 7.79, 4.58)),
        ("DDIM", "euler", (78.21, 43.93, 28.86, 21.01)),
        ("DPM-Solver-2", "dpm2", (266.0, 87.10, 22.59, 9.26)),
        ("AMED-Solver", "amed", (47.31, 14.80, 8.82, 6.31)),
        ("AMED-Plugin on iPNDM", "amed_plugin:ipndm", (26.87, 12.49, 6.64, 4.24)),
    )},
    "ffhq64": {"title": "2(c) FFHQ 64x64, unconditional; AMED-Plugin on iPNDM", "rows": (
        ("DPM-Solver++(3M)", "dpmpp", (91.52, 25.49, 10.14, 6.48)),
        ("UniPC", "unipc", (91.38, 24.36, 9.57, 6.34)),
        ("iPNDM", "ipndm", (58.53, 18.99, 9.17, 5.91)),
        ("DDIM", "euler", (82.96, 43.81, 27.46, 19.27)),
        ("EDM (Heun)", "heun", (249.4, 89.63, 37.65, 16.76)),
        ("DPM-Solver-2", "dpm2", (140.2, 42.41, 12.03, 6.64)),
        ("AMED-Solver", "amed", (38.10, 10.74, 6.66, 5.44)),
        ("AMED-Plugin on iPNDM", "amed_plugin:ipndm", (28.06, 13.83, 7.81, 5.60)),
    )},
    "lsun_bedroom": {"title": "2(d) LSUN Bedroom 256x256, unconditional; AMED-Plugin on DPM-Solver-2", "rows": (
        ("DPM-Solver++(3M)", "dpmpp", (111.9, 23.15, 8.87, 6.45)),
        ("UniPC", "unipc", (112.3, 23.34, 8.73, 6.61)),
        ("iPNDM", "ipndm", (80.99, 26.65, 13.80, 8.38)),
        ("DDIM", "euler", (86.13, 34.34, 19.50, 13.26)),
        ("DPM-Solver-2", "dpm2", (210.6, 80.60, 23.25, 9.61)),
        ("AMED-Solver", "amed", (58.21, 13.20, 7.10, 5.65)),
        ("AMED-Plugin on DPM-Solver-2", "amed_plugin:dpm2", (101.5, 25.68, 8.63, 7.82)),
    )},
}

# The paper's Table 2(a) as {name: FIDs} (kept for existing callers).
PAPER_TABLE2_CIFAR10: dict[str, tuple[float | None, ...]] = {
    ("AMED-Plugin (iPNDM)" if k == "amed_plugin:ipndm" else n): v for n, k, v in PAPER_TABLE2["cifar10"]["rows"]
}

# Table 3: Stable Diffusion v1.4, guidance 7.5, FID on 30k MS-COCO prompts; NFE 8/12/16/20 (2 NFE per step).
# Not regenerated here: it needs classifier-free guidance on a text-to-image model (see the guidance issue).
PAPER_TABLE3_SD: dict[str, Any] = {"nfes": (8, 12, 16, 20), "rows": (
    ("DPM-Solver++(2M)", "dpmpp", (21.33, 15.99, 14.84, 14.58)),
    ("AMED-Plugin on DPM-Solver++(2M)", "amed_plugin:dpmpp", (18.92, 14.84, 13.96, 13.24)),
)}

# Table 4: teacher solvers on CIFAR-10 (keys: our teacher solver names), for AMED-Solver and AMED-Plugin on iPNDM.
# The text gives M = 1 (teacher with doubled NFE) for AMED-Solver's DPM-Solver-2 / EDM teachers and, for the plugin,
# M = 1 for DPM-Solver-2 and M = 2 else; Table 2(a)'s AMED-Solver row takes DPM-Solver-2's teacher at NFE 3 and
# EDM's at NFE 5-9.
PAPER_TABLE4: dict[str, tuple[PaperRow, ...]] = {
    "amed": (
        ("DPM-Solver++(3M)", "dpmpp", (35.68, 12.34, 11.28, 9.65)),
        ("iPNDM", "ipndm", (32.38, 12.42, 10.09, 8.54)),
        ("DPM-Solver-2", "dpm2", (18.49, 11.60, 11.64, 9.23)),
        ("EDM (Heun)", "heun", (28.99, 7.59, 4.36, 3.67)),
    ),
    "ipndm": (
        ("DPM-Solver++(3M)", "dpmpp", (16.00, 7.57, 4.28, 2.85)),
        ("iPNDM", "ipndm", (10.81, 6.61, 3.65, 2.63)),
        ("DPM-Solver-2", "dpm2", (12.07, 8.19, 4.52, 2.66)),
        ("EDM (Heun)", "heun", (29.62, 10.58, 9.36, 4.44)),
    ),
}

# Table 5: DPM-Solver++(3M) on CIFAR-10 with three time schedules, without and with AMED-Plugin (keys: our
# schedule kinds; the paper's "uniform" is uniform in VP time, our time_uniform with rho = 1).
PAPER_TABLE5: dict[str, tuple[PaperRow, ...]] = {
    "dpmpp": (
        ("Uniform", "time_uniform", (76.80, 26.90, 16.80, 13.44)),
        ("Polynomial", "polynomial", (70.04, 31.66, 11.30, 6.45)),
        ("logSNR", "logsnr", (110.0, 24.97, 6.74, 3.42)),
    ),
    "amed_plugin:dpmpp": (
        ("Uniform", "time_uniform", (33.61, 13.24, 8.89, 8.24)),
        ("Polynomial", "polynomial", (32.47, 19.59, 9.60, 4.39)),
        ("logSNR", "logsnr", (25.95, 7.68, 4.51, 3.03)),
    ),
}

TITLES = {
    "table2": "Table 2: solvers x NFE",
    "table4": "Table 4: AMED trained with different teacher solvers",
    "table5": "Table 5: DPM-Solver++(3M) on different time schedules, without and with AMED-Plugin",
}

UNITS = ("Ours: RMSE to the exact ODE solution on the Gaussian-mixture bed (lower is better); paper: FID of 50k "
         "samples of a trained network (lower is better). The values are not comparable, only their patterns: which "
         "method wins, ranking, and ratios between methods at the same NFE.")
