"""The AMED paper's tables and Fig. 5 regenerated on our beds (Zhou et al., "Fast ODE-based Sampling for Diffusion
Models in Around 5 Steps", CVPR 2024): Table 2 (solvers x NFE), Table 4 (teacher solver), Table 5 (time schedule
with and without AMED-Plugin), and the grid-searched intermediate times of Fig. 5.

Every table is RMSE to a high-accuracy ODE solution on held-out seeds (:func:`fewstep.seeds.report_seeds`,
800000000...; AMED trains on seeds 1, 2, ...; :func:`.tables.amed_row` refuses an overlap), optionally with a
Fréchet distance in a fixed random feature space (``fd``). AMED predictors are predictor-free tables
(``options={"features": "none"}``, final-point loss) trained per NFE with a small budget.

Modules: :mod:`.reference` (the paper's numbers), :mod:`.tables` (the runners), :mod:`.fig5` (the alignment
studies), :mod:`.comparison` (ours beside the paper's, with verdicts), :mod:`.reports` (Markdown) and :mod:`.rows`
(row formatting and JSON); their public names are re-exported here.
"""

from .comparison import TABLE2_PAIRS, compare
from .fig5 import PAPER_FIG5_FORMS, alignment, relative_alignment
from .reference import (
    NFES,
    PAPER_TABLE2,
    PAPER_TABLE2_CIFAR10,
    PAPER_TABLE3_SD,
    PAPER_TABLE4,
    PAPER_TABLE5,
    TITLES,
    UNITS,
    PaperRow,
)
from .reports import machine, render, report
from .rows import bed_info, format_rows, int_keys, json_safe
from .tables import (
    PAPER_TEACHERS,
    SCHEDULES,
    STUDENTS,
    TABLE2_BASELINES,
    TABLE2_ROWS,
    TEACHERS,
    amed_row,
    paper_schedule,
    run_table,
    student_method,
    student_steps,
    table2,
    table4,
    table5,
)

__all__ = [
    "amed_row", "table2", "table4", "table5", "alignment", "relative_alignment", "paper_schedule",
    "PAPER_FIG5_FORMS", "TABLE2_ROWS", "PAPER_TABLE2_CIFAR10",
    "PAPER_TABLE2", "PAPER_TABLE3_SD", "PAPER_TABLE4", "PAPER_TABLE5", "PAPER_TEACHERS", "STUDENTS",
    "TABLE2_BASELINES", "TEACHERS", "SCHEDULES", "format_rows", "report", "render", "compare", "run_table",
    "json_safe", "int_keys", "bed_info", "machine", "NFES", "TITLES", "UNITS", "PaperRow", "TABLE2_PAIRS",
    "student_method", "student_steps",
]
