"""The report's image-classification tables, built from run records: accuracy, paired, runs.

One accuracy table per (dataset, model) in the seed papers' layout (Cell | Activation |
Training | A_std | each attack at each eps | worst case | verdict, with 95% intervals), the
paired differences to the ReLU cell on the same images, and the runs' provenance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from robustact.eval.diagnostics import NO_MASKING
from robustact.report.records import RunRecords
from robustact.report.table import NUMBER, TEXT, Cell, Table, pct
from robustact.results.store import CLEAN, WORST_CASE, format_eps, training_label

ATTACK_NAMES = {"fgsm": "FGSM", "pgd": "PGD", "bim": "BIM", "mifgsm": "MI-FGSM",
                "deepfool": "DeepFool", "apgd": "APGD", "apgd_ce": "APGD-CE",
                "apgd_dlr": "APGD-DLR", "square": "Square", "transfer": "Transfer",
                "gradest": "GradEst", "cw": "C&W"}
OVERESTIMATE_FLAG = "▲"


def attack_name(label: str) -> str:
    """The paper-style name of an attack label: ``pgd`` -> ``PGD``, ``pgd+eot32`` ->
    ``PGD+EOT32``; unknown labels are kept."""
    head, *extras = label.split("+")
    return "+".join([ATTACK_NAMES.get(head, head), *(e.upper() for e in extras)])


def activation_label(run: RunRecords) -> str:
    """``kwta (ratio=0.1)``: the activation the trained network ends with (an incremental
    sparsity schedule's target ratio, not the ratio it started from)."""
    name = str(run.get("activation") or "?")
    kwargs = run.get("act_kwargs") or {}
    sparsity = (run.config or {}).get("sparsity")
    if isinstance(kwargs, Mapping) and isinstance(sparsity, Mapping) and "target" in sparsity:
        kwargs = {**kwargs, "ratio": sparsity["target"]}
    if isinstance(kwargs, Mapping) and kwargs:
        name += " (" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")"
    return name


def verdict_css(verdict: str | None) -> str:
    """``ok`` for a clean bill from the diagnostics, else ``warn``."""
    return "ok" if verdict == NO_MASKING else "warn"


def _accuracy_cell(row: dict[str, Any] | None) -> Cell:
    if row is None:
        return Cell("-")
    ci = (row["ci_low"], row["ci_high"]) if row.get("ci_low") is not None else None
    return Cell(pct(row["robust_accuracy"]), ci, row.get("n"))


def _flagged(run: RunRecords, label: str, eps: float) -> Cell:
    """An attack's accuracy, flagged when the diagnostics found it overestimates robustness."""
    cell = _accuracy_cell(run.result(label, eps))
    if f"{label}@{eps:g}" in run.overestimating:
        cell.flag = OVERESTIMATE_FLAG
        cell.css = "warn"
    return cell


def _verdict_cell(verdict: str | None) -> Cell:
    return Cell("-") if verdict is None else Cell(verdict, css=verdict_css(verdict))


def accuracy_tables(records: list[RunRecords]) -> list[Table]:
    """One table per (dataset, model) over the finished runs with results, each followed by
    its paired differences (if any)."""
    groups: dict[tuple[str, str], list[RunRecords]] = {}
    for r in records:
        if r.run["status"] == "done":
            groups.setdefault((str(r.get("dataset")), str(r.get("model"))), []).append(r)
    tables = []
    for (dataset, model), runs in groups.items():
        tables.append(accuracy_table(f"{dataset} / {model}", runs))
        paired = paired_table(runs)
        if paired is not None:
            tables.append(paired)
    return tables


def accuracy_table(title: str, runs: list[RunRecords]) -> Table:
    """Clean, per-attack and worst-case accuracy of ``runs`` with the verdicts."""
    rows = [row for r in runs for row in r.results]
    # a suite's attacks run in sequence (each number is cumulative): its worst case speaks
    # for it; the attacks listed beside it (paper-style) stand alone and get columns
    labels = list(dict.fromkeys(row["attack"] for row in rows
                                if row["attack"] not in (CLEAN, WORST_CASE)
                                and (row.get("details") or {}).get("group") != "suite"))
    eps_values = sorted({row["eps"] for row in rows if row["eps"] is not None})
    columns = [(label, eps) for label in labels for eps in eps_values
               if any(r.result(label, eps) for r in runs)]
    worst = [eps for eps in eps_values if any(r.result(WORST_CASE, eps) for r in runs)]
    suites = sorted({str(r.suite) for r in runs if r.suite})
    suite_note = f" ({', '.join(suites)})" if suites else ""
    header = (["Cell", "Activation", "Training", "A_std"]
              + [f"{attack_name(label)} ε={format_eps(eps)}" for label, eps in columns]
              + [f"Worst case{suite_note} ε={format_eps(eps)}" for eps in worst] + ["Verdict"])
    body = [[Cell(r.cell), Cell(activation_label(r)), Cell(training_label(r.config)),
             _accuracy_cell(r.result(CLEAN, None)),
             *(_flagged(r, label, eps) for label, eps in columns),
             *(_accuracy_cell(r.result(WORST_CASE, eps)) for eps in worst),
             _verdict_cell(r.verdict)] for r in runs]
    notes = _table_notes(runs)
    if any(c.flag == OVERESTIMATE_FLAG for row in body for c in row):
        notes.append(f"{OVERESTIMATE_FLAG}: the attack left robust significantly many points "
                     "that other attacks broke (exact McNemar test, 5%); it overestimates "
                     "robustness (see the cell's diagnostics).")
    align = [TEXT] * 3 + [NUMBER] * (len(header) - 4) + [TEXT]
    return Table(title, header, body, notes, align)


def _mask(bits: Any) -> list[bool] | None:
    return [c == "1" for c in bits] if isinstance(bits, str) and bits else None


def worst_case_mask(run: RunRecords, eps: float) -> list[bool] | None:
    """Per example: clean-correct and correct under every attack recorded at ``eps`` (None when
    the store lacks a per-example outcome)."""
    mask = _mask((run.evaluation or {}).get("clean_correct"))
    attacks = [row for row in run.results if row["eps"] == eps
               and row["attack"] not in (CLEAN, WORST_CASE)]
    if mask is None or not attacks:
        return None
    for row in attacks:
        correct = _mask(row.get("correct"))
        if correct is None or len(correct) != len(mask):
            return None
        mask = [a and b for a, b in zip(mask, correct, strict=True)]
    return mask


def paired_difference(a: list[bool], b: list[bool]) -> tuple[float, float, float]:
    """Mean of ``a - b`` over the same examples and its 95% interval (normal approximation of
    the per-example differences, each -1, 0 or 1)."""
    n = len(a)
    diffs = [int(x) - int(y) for x, y in zip(a, b, strict=True)]
    mean = sum(diffs) / n
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1) if n > 1 else 0.0
    half = 1.959964 * math.sqrt(var / n)
    return mean, mean - half, mean + half


def _paired_cell(a: list[bool] | None, b: list[bool] | None) -> Cell:
    if a is None or b is None or len(a) != len(b):
        return Cell("-")
    mean, lo, hi = paired_difference(a, b)
    css = None if lo <= 0 <= hi else ("ok" if lo > 0 else "warn")
    return Cell(f"{100 * mean:+.1f} ({100 * lo:+.1f}, {100 * hi:+.1f})", css=css)


def _same_images(r: RunRecords) -> tuple[Any, ...]:
    e = r.evaluation or {}
    return e.get("split"), e.get("n"), r.get("dataset")


def paired_table(runs: list[RunRecords]) -> Table | None:
    """Differences to a baseline run (the first ReLU run without a post-hoc defense, else the
    first run) on the same test images, clean and worst case, with paired 95% intervals: two
    runs evaluated on the same images differ far less by chance than their separate intervals
    suggest."""
    evaluated = [r for r in runs if _mask((r.evaluation or {}).get("clean_correct"))]
    if len(evaluated) < 2:
        return None
    base = next((r for r in evaluated if r.get("activation") == "relu"
                 and not r.config.get("posthoc")), evaluated[0])
    others = [r for r in evaluated if r is not base and _same_images(r) == _same_images(base)]
    if not others:
        return None
    eps_values = sorted({row["eps"] for row in base.results if row["eps"] is not None})
    eps_values = [e for e in eps_values if worst_case_mask(base, e) is not None]
    base_clean = _mask(base.evaluation.get("clean_correct"))
    body = [[Cell(r.cell), Cell(activation_label(r)), Cell(training_label(r.config)),
             _paired_cell(_mask(r.evaluation.get("clean_correct")), base_clean),
             *(_paired_cell(worst_case_mask(r, e), worst_case_mask(base, e))
               for e in eps_values)] for r in others]
    header = (["Cell", "Activation", "Training", f"A_std - {base.cell}"]
              + [f"Worst case ε={format_eps(e)} - {base.cell}" for e in eps_values])
    n = base.evaluation.get("n")
    return Table(f"Paired differences to {base.cell}", header, body, [
        f"Points of accuracy minus {base.cell}'s on the same {n} images, with the 95% interval "
        "of the per-example differences (normal approximation). An interval away from 0 is a "
        "difference beyond the sampling of test images; the spread over training seeds is not "
        "in it."], [TEXT] * 3 + [NUMBER] * (len(header) - 3))


def _table_notes(runs: list[RunRecords]) -> list[str]:
    evaluations = [r.evaluation for r in runs if r.evaluation]
    if not evaluations:
        return ["No evaluation recorded."]
    sizes = sorted({e["n"] for e in evaluations if e.get("n")})
    splits = sorted({str(e.get("split")) for e in evaluations if e.get("split")})
    on = (f"on {sizes[0]} {'/'.join(splits) or 'test'} images" if len(sizes) == 1
          else f"on {', '.join(map(str, sizes))} images (see the runs table)")
    notes = [f"Accuracy in % {on}; ± is half the 95% Wilson interval. A_std: clean accuracy. "
             "Worst case: correct under every attack at that eps, per example."]
    if any(r.suite for r in runs):
        suites = ", ".join(sorted({str(r.suite) for r in runs if r.suite}))
        notes.append(f"Worst case ({suites}): the suite's attacks ran in sequence, each on the "
                     "points still robust, and the attacks in the columns (the papers') each "
                     "on every clean-correct point; the worst case is over all of them.")
    modes = {e.get("sequential") for e in evaluations if not _suite_run(e, runs)}
    if True in modes:
        notes.append("Sequential evaluation: each attack ran only on the points still robust "
                     "after the attacks left of it, so its column is cumulative.")
    if False in modes:
        notes.append("Independent evaluation: every attack ran on every clean-correct point; "
                     "each attack's column stands alone.")
    samples = sorted({e.get("n_samples") or 1 for e in evaluations})
    if samples != [1]:
        notes.append(f"Predictions averaged over {'/'.join(map(str, samples))} forward passes "
                     "(randomized models).")
    return notes


def _suite_run(evaluation: dict[str, Any], runs: list[RunRecords]) -> bool:
    return any(r.evaluation is evaluation and r.suite for r in runs)


def runs_table(records: list[RunRecords]) -> Table:
    """Provenance of every run: status, training, timing, device, seed, hashes, code."""
    header = ["Cell", "Status", "Activation", "Training", "Epochs", "Final test acc", "n eval",
              "Train s", "Eval s", "Device", "Seed", "Config hash", "Code"]
    rows = []
    for r in records:
        final = next((e.get("test_acc") for e in reversed(r.epochs)
                      if e.get("test_acc") is not None), None)
        code = r.run.get("code_version") or "-"
        if r.run.get("git_commit"):
            code += f" @ {r.run['git_commit'][:10]}"
        rows.append([
            Cell(r.cell), Cell(r.run["status"], css="failed" if r.run["status"] == "failed"
                               else None),
            Cell(activation_label(r)), Cell(training_label(r.config)),
            Cell(str(len(r.epochs) or r.config.get("epochs") or "-")), Cell(pct(final)),
            Cell(str((r.evaluation or {}).get("n") or "-")),
            Cell(_seconds(r.run.get("train_seconds"))), Cell(_seconds(r.run.get("eval_seconds"))),
            Cell(str(r.run.get("device") or "-")), Cell(str(_dash(r.run.get("seed")))),
            Cell(str(r.run.get("config_hash") or "-")), Cell(code),
        ])
    return Table("Runs", header, rows, align=[TEXT] * 4 + [NUMBER] * 5 + [TEXT] * 4, level=2)


def _dash(value: Any) -> Any:
    return "-" if value is None else value


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"
