"""Our tables beside the paper's: "ours / paper" cells and the pattern verdicts (best method, Kendall tau of the
ranking, ratios between methods, the text's claims) that :func:`compare` computes."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

from .reference import NFES, PAPER_TABLE2, PAPER_TABLE4, PAPER_TABLE5
from .rows import int_keys
from .tables import SCHEDULES, STUDENTS, TEACHERS

__all__ = ["compare", "TABLE2_PAIRS"]


def _key(row: dict[str, Any]) -> str:
    """Our row's key in the paper tables: the solver name, ``amed`` or ``amed_plugin:<base>``."""
    return row["solver"]


def _teacher_of(row: dict[str, Any]) -> tuple[str, str, int]:
    """(student, teacher solver, M) of a Table 4 row (older JSON: from the label)."""
    if "teacher" in row:
        return row.get("student", "amed"), row["teacher"], row["M"]
    label = row["label"]
    for lab, name, _, m in TEACHERS:
        if label.startswith(lab.split(",")[0]):
            mm = m if m is not None else int(label.rsplit("M=", 1)[1].split()[0].rstrip(")"))
            return "amed", name, mm
    raise ValueError(f"unknown Table 4 row {label!r}")


def _schedule_of(row: dict[str, Any]) -> str:
    if "schedule" in row:
        return row["schedule"]
    for lab, kind, _ in SCHEDULES:
        if row["label"].endswith(lab):
            return kind
    raise ValueError(f"unknown Table 5 row {row['label']!r}")


def _cell(v: float | None, digits: int = 4) -> str:
    return "—" if v is None else f"{v:.{digits}f}"


def _side_by_side(pairs: list[tuple[str, dict[int, float | None], tuple[float, ...]]], nfes: Sequence[int],
                  paper_nfes: Sequence[int] = NFES) -> str:
    """Rows (name, ours by NFE, paper's values) -> Markdown with "ours / paper" per cell."""
    lines = ["| method | " + " | ".join(f"NFE {n}: ours / paper" for n in nfes) + " |",
             "|---|" + "---:|" * len(nfes)]
    for name, ours, theirs in pairs:
        cells = []
        for n in nfes:
            p = theirs[paper_nfes.index(n)] if n in paper_nfes else None
            cells.append(f"{_cell(ours.get(n))} / {'—' if p is None else f'{p:g}'}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _kendall(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-a of two equally long sequences (ties count as neither concordant nor discordant)."""
    n, s = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s += int(math.copysign(1, (a[i] - a[j]) * (b[i] - b[j]))) if (a[i] - a[j]) * (b[i] - b[j]) else 0
    return 2 * s / (n * (n - 1)) if n > 1 else math.nan


def _verdict(oks: list[bool | None], nfes: Sequence[int]) -> str:
    got = [(n, ok) for n, ok in zip(nfes, oks) if ok is not None]
    if not got:
        return "—"
    bad = [str(n) for n, ok in got if not ok]
    if not bad:
        return f"**agree** ({len(got)}/{len(got)})"
    if len(bad) == len(got):
        return f"**disagree** (0/{len(got)})"
    return f"**partly**: disagrees at NFE {', '.join(bad)} ({len(got) - len(bad)}/{len(got)})"


def _patterns(ours: dict[str, dict[int, float | None]], paper: dict[str, tuple[float, ...]], names: dict[str, str],
              nfes: Sequence[int], pairs: Sequence[tuple[str, str]], best_among: Sequence[str] | None = None,
              claims: Sequence[tuple[str, Callable[[dict[str, float], int], bool | None], str]] = ()) -> str:
    """The pattern table: best method, ranking (Kendall tau) and ratios A/B per NFE, ours vs the paper's, with a
    verdict. ``ours`` / ``paper``: key -> values by NFE; ``claims``: (text, test(values by key, nfe) -> holds?,
    paper's value text) checked on ours only."""
    keys = [k for k in (best_among or list(paper)) if k in ours and k in paper]

    def at(src: dict, k: str, n: int) -> float | None:
        v = src[k]
        return v.get(n) if isinstance(v, dict) else (v[NFES.index(n)] if n in NFES else None)

    head = ["| pattern | " + " | ".join(f"NFE {n}" for n in nfes) + " | verdict |",
            "|---|" + "---|" * len(nfes) + "---|"]
    out = []
    if len(keys) >= 2:
        cells, oks = [], []
        for n in nfes:
            o = {k: at(ours, k, n) for k in keys if at(ours, k, n) is not None}
            p = {k: at(paper, k, n) for k in keys if at(paper, k, n) is not None}
            if not o or not p:
                cells.append("—"), oks.append(None)
                continue
            bo, bp = min(o, key=o.get), min(p, key=p.get)
            oks.append(bo == bp)
            cells.append(f"ours {names[bo]} · paper {names[bp]}")
        out.append(f"| best of {len(keys)} | " + " | ".join(cells) + f" | {_verdict(oks, nfes)} |")
    if len(keys) >= 3:
        cells, oks = [], []
        for n in nfes:
            common = [k for k in keys if at(ours, k, n) is not None and at(paper, k, n) is not None]
            if len(common) < 3:
                cells.append("—"), oks.append(None)
                continue
            tau = _kendall([at(ours, k, n) for k in common], [at(paper, k, n) for k in common])
            oks.append(tau >= 0.5)
            cells.append(f"tau {tau:+.2f}")
        out.append("| ranking: Kendall tau ours vs paper (agree: tau >= 0.5) | " + " | ".join(cells)
                   + f" | {_verdict(oks, nfes)} |")
    for a, b in pairs:
        if not all(k in ours and k in paper for k in (a, b)):
            continue
        cells, oks = [], []
        for n in nfes:
            oa, ob, pa, pb = at(ours, a, n), at(ours, b, n), at(paper, a, n), at(paper, b, n)
            if None in (oa, ob, pa, pb):
                cells.append("—"), oks.append(None)
                continue
            ro, rp = oa / ob, pa / pb
            oks.append((ro < 1) == (rp < 1))
            cells.append(f"ours {ro:.2f} · paper {rp:.2f}")
        out.append(f"| {names[a]} / {names[b]} (< 1: {names[a]} better) | " + " | ".join(cells)
                   + f" | {_verdict(oks, nfes)} |")
    for text, test, paper_text in claims:
        cells, oks = [], []
        for n in nfes:
            vals = {k: at(ours, k, n) for k in ours}
            ok = test(vals, n)
            oks.append(ok)
            cells.append("—" if ok is None else ("holds" if ok else "fails"))
        out.append(f"| {text} (paper: {paper_text}) | " + " | ".join(cells) + f" | {_verdict(oks, nfes)} |")
    return "\n".join(head + out)


TABLE2_PAIRS = (("amed", "dpm2"), ("amed_plugin:ipndm", "ipndm"), ("amed_plugin:dpm2", "dpm2"), ("amed", "ipndm"),
                ("amed", "euler"), ("dpm2", "euler"), ("heun", "euler"), ("ipndm", "dpmpp"), ("unipc", "dpmpp"))


def compare(which: str, result: dict[str, Any], nfes: Sequence[int] = NFES) -> list[tuple[str, str, str]]:
    """Our table beside the paper's: [(title, side-by-side Markdown "ours / paper" per cell, pattern Markdown with
    a verdict per pattern)] for each of the paper's (sub-)tables that our result has rows for."""
    rows = int_keys(result["rows"])
    nfes = [n for n in nfes if n in NFES] or list(NFES)
    out = []
    if which == "table2":
        ours = {_key(r): r for r in rows}
        for sub in PAPER_TABLE2.values():
            prow = [(n, k, v) for n, k, v in sub["rows"] if k in ours]
            if len(prow) < 2:
                continue
            names = {k: n for n, k, _ in sub["rows"]}
            side = _side_by_side([(f"{n} (ours: {ours[k]['label']})" if ours[k]["label"] != n else n,
                                   ours[k], v) for n, k, v in prow], nfes)
            pat = _patterns({k: ours[k] for _, k, _ in prow}, {k: v for _, k, v in prow}, names, nfes,
                            TABLE2_PAIRS)
            out.append((f"Paper Table {sub['title']}", side, pat))
    elif which == "table4":
        by: dict[tuple[str, int], dict[str, dict]] = {}
        trows = {r["label"]: r for r in int_keys(result.get("teacher_rows", []))}
        for r in rows:
            student, teacher, m = _teacher_of(r)
            by.setdefault((student, m), {})[teacher] = r
        for (student, m), teach in by.items():
            if student not in PAPER_TABLE4:
                continue
            prow = [(n, k, v) for n, k, v in PAPER_TABLE4[student] if k in teach]
            if len(prow) < 2:
                continue
            names = {k: n for n, k, _ in PAPER_TABLE4[student]}
            resemble = {"amed": ("dpm2", "heun"), "ipndm": ("ipndm",)}[student]
            acc = {k: trows.get(teach[k]["label"], {}) for _, k, _ in prow}

            def resembles(vals: dict[str, float], n: int, resemble=resemble, keys=tuple(k for _, k, _ in prow)) -> bool | None:
                v = {k: vals[k] for k in keys if vals.get(k) is not None}
                return min(v, key=v.get) in resemble if v else None

            def accurate(vals: dict[str, float], n: int, acc=acc, keys=tuple(k for _, k, _ in prow)) -> bool | None:
                v = {k: vals[k] for k in keys if vals.get(k) is not None and acc[k].get(n) is not None}
                if len(v) < 2:
                    return None
                return min(v, key=v.get) == min(v, key=lambda k: acc[k][n])

            def spread(vals: dict[str, float], n: int, keys=tuple(k for _, k, _ in prow)) -> float | None:
                v = [vals[k] for k in keys if vals.get(k) is not None]
                return max(v) / min(v) if len(v) >= 2 else None

            paper_spread = [max(v[i] for _, _, v in prow) / min(v[i] for _, _, v in prow) for i in range(len(NFES))]
            claims = [("teacher matters: worst / best student > 1.10 (ours " + ", ".join(
                          "—" if spread({k: teach[k].get(n) for k in teach}, n) is None
                          else f"{spread({k: teach[k].get(n) for k in teach}, n):.3f}" for n in nfes) + ")",
                       lambda vals, n, spread=spread: None if spread(vals, n) is None else spread(vals, n) > 1.10,
                       "worst / best " + ", ".join(f"{x:.2f}" for x in paper_spread)),
                      (f"best teacher resembles the student ({' or '.join(names[k] for k in resemble)})", resembles,
                       "holds at every NFE"),
                      ("best student comes from the most accurate teacher (own RMSE, table above)", accurate,
                       "not measured")]
            side = _side_by_side([(f"{n}, M={m}", teach[k], v) for n, k, v in prow], nfes)
            pat = _patterns({k: teach[k] for _, k, _ in prow}, {k: v for _, k, v in prow}, names, nfes, (),
                            claims=claims)
            title = "AMED-Solver" if student == "amed" else STUDENTS[student][0]
            out.append((f"Paper Table 4, {title} (CIFAR-10; ours with every teacher at M={m})", side, pat))
    elif which == "table5":
        for solver, prows in PAPER_TABLE5.items():
            ours = {_schedule_of(r): r for r in rows if r["solver"] == solver}
            prow = [(n, k, v) for n, k, v in prows if k in ours]
            if len(prow) < 2:
                continue
            names = {k: n for n, k, _ in prows}
            title = "DPM-Solver++(3M)" if solver == "dpmpp" else "AMED-Plugin on DPM-Solver++(3M)"
            side = _side_by_side([(f"{title}, {n}", ours[k], v) for n, k, v in prow], nfes)
            pat = _patterns({k: ours[k] for _, k, _ in prow}, {k: v for _, k, v in prow}, names, nfes,
                            (("logsnr", "polynomial"), ("time_uniform", "polynomial"), ("logsnr", "time_uniform")))
            out.append((f"Paper Table 5, {title}: best schedule (CIFAR-10)", side, pat))
        base = {_schedule_of(r): r for r in rows if r["solver"] == "dpmpp"}
        plug = {_schedule_of(r): r for r in rows if r["solver"] == "amed_plugin:dpmpp"}
        pb, pp = {k: v for _, k, v in PAPER_TABLE5["dpmpp"]}, {k: v for _, k, v in PAPER_TABLE5["amed_plugin:dpmpp"]}
        kinds = [k for k in ("time_uniform", "polynomial", "logsnr") if k in base and k in plug]
        if kinds:
            ours2 = {f"p:{k}": plug[k] for k in kinds} | {f"b:{k}": base[k] for k in kinds}
            paper2 = {f"p:{k}": pp[k] for k in kinds} | {f"b:{k}": pb[k] for k in kinds}
            sn = {k: n for n, k, _ in PAPER_TABLE5["dpmpp"]}
            names = {f"p:{k}": f"plugin {sn[k]}" for k in kinds} | {f"b:{k}": f"DPM-Solver++(3M) {sn[k]}" for k in kinds}
            side = "(values as in the two tables above)"
            pat = _patterns(ours2, paper2, names, nfes, [(f"p:{k}", f"b:{k}") for k in kinds],
                            best_among=list(ours2))
            out.append(("Paper Table 5: AMED-Plugin vs its base on each schedule", side, pat))
    return out
