"""A study's report, rendered only from the records of a :class:`ResultsStore`.

    md_path, html_path = write_report(store, "kaf_fmnist", "runs/kaf_fmnist/report")

writes ``report.md`` (tables; figures linked from ``figures/*.svg`` beside it) and
``report.html`` (self-contained: inline CSS, the same figures inlined as SVG, no external
resources). Contents: provenance (date, code and package versions), one table per dataset and
model in the seed papers' layout (Activation | training | A_std | each attack at each eps |
worst case | verdict, with 95% intervals), the paired differences to the ReLU cell on the same
images, robust accuracy against eps, training curves, the
runs' provenance, per-cell diagnostics, reliability diagrams (``calibration`` artifacts), loss
landscapes (``landscape`` artifacts) and the failed cells with their errors.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from robustact.errors import ConfigError
from robustact.eval.calibration import Reliability, reliability_svg
from robustact.files import write_atomic
from robustact.report import svg
from robustact.results.store import CLEAN, WORST_CASE, ResultsStore, format_eps, training_label

ATTACK_NAMES = {"fgsm": "FGSM", "pgd": "PGD", "bim": "BIM", "mifgsm": "MI-FGSM",
                "deepfool": "DeepFool", "apgd": "APGD", "apgd_ce": "APGD-CE",
                "apgd_dlr": "APGD-DLR", "square": "Square", "transfer": "Transfer",
                "gradest": "GradEst", "cw": "C&W"}
NO_MASKING = "no sign of gradient masking"

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1200px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd;
       padding-bottom: 0.2em; margin-top: 2em; } h3 { margin-top: 1.5em; }
.meta { color: #555; margin: 0.1em 0; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; } td.text { text-align: left; }
td[title] { cursor: help; text-decoration: underline dotted #999; }
.ok { color: #1a7f37; } .warn { color: #b42318; font-weight: 600; }
.failed { color: #b42318; } .note { color: #555; font-size: 0.9em; }
figure { margin: 1em 0; } figcaption { color: #555; font-size: 0.9em; }
figure svg { max-width: 100%; height: auto; }
ul.checks li { margin: 0.2em 0; } code { background: #f5f5f5; padding: 0 0.2em; }
"""


# --- the records -----------------------------------------------------------------------------


@dataclass
class RunRecords:
    """Everything the store holds about one run."""

    run: dict[str, Any]
    evaluation: dict[str, Any] | None
    results: list[dict[str, Any]]
    diagnostics: dict[str, Any] | None
    epochs: list[dict[str, Any]]
    artifacts: list[dict[str, Any]]
    index: int = 0  # position in the study: the run's colour in every figure

    @property
    def cell(self) -> str:
        return str(self.run["cell"])

    @property
    def config(self) -> dict[str, Any]:
        return self.run.get("config") or {}

    def get(self, key: str) -> Any:
        """A config value, else the evaluation's (model, activation, dataset, act_kwargs)."""
        value = self.config.get(key)
        if value is None and self.evaluation:
            value = self.evaluation.get(key)
        return value

    def result(self, attack: str, eps: float | None) -> dict[str, Any] | None:
        for row in self.results:
            if row["attack"] == attack and row["eps"] == eps:
                return row
        return None

    @property
    def color(self) -> str:
        return svg.color(self.index)

    @property
    def verdict(self) -> str | None:
        return (self.diagnostics or {}).get("verdict")

    @property
    def suite(self) -> str | None:
        """The preset suite the run was evaluated with (None without one)."""
        return next(((row.get("details") or {}).get("suite") for row in self.results
                     if (row.get("details") or {}).get("suite")), None)

    @property
    def overestimating(self) -> set[str]:
        """``label@eps`` of the attacks the diagnostics found overestimating robustness."""
        for check in (self.diagnostics or {}).get("checks") or []:
            if check.get("name") == "overestimates" and check.get("fired"):
                return set((check.get("details") or {}).get("flagged") or [])
        return set()


def load_records(store: ResultsStore, study: str) -> list[RunRecords]:
    """The records of every run of ``study``, in recording order."""
    runs = store.runs(study)
    if not runs:
        known = ", ".join(store.studies()) or "none"
        raise ConfigError(f"results store {store.path} has no runs of study {study!r}; "
                          f"studies: {known}")
    return [RunRecords(run, store.evaluation(run["id"]), store.results(run_id=run["id"]),
                       store.diagnostics(run["id"]), store.epochs(run["id"]),
                       store.artifacts(run["id"]), index=i)
            for i, run in enumerate(runs)]


# --- formatting --------------------------------------------------------------------------------


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


def pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


@dataclass
class Cell:
    """A table cell: its text, the 95% interval (for md ``±`` and the HTML tooltip), a class."""

    text: str
    ci: tuple[float, float] | None = None
    n: int | None = None
    css: str | None = None
    numeric: bool = False
    flag: str | None = None  # a mark after the value (and its interval)

    def markdown(self) -> str:
        out = self.text
        if self.ci is not None and self.text != "-":
            out += f" ± {100 * (self.ci[1] - self.ci[0]) / 2:.1f}"
        return _md(out + (f" {self.flag}" if self.flag else ""))

    def tooltip(self) -> str | None:
        if self.ci is None:
            return None
        n = f", n={self.n}" if self.n else ""
        return f"95% CI {pct(self.ci[0])}-{pct(self.ci[1])}%{n}"


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)


def _accuracy_cell(row: dict[str, Any] | None) -> Cell:
    if row is None:
        return Cell("-", numeric=True)
    ci = (row["ci_low"], row["ci_high"]) if row.get("ci_low") is not None else None
    return Cell(pct(row["robust_accuracy"]), ci, row.get("n"), numeric=True)


OVERESTIMATE_FLAG = "▲"


def _flagged(run: RunRecords, label: str, eps: float) -> Cell:
    """An attack's accuracy, flagged when the diagnostics found it overestimates robustness."""
    cell = _accuracy_cell(run.result(label, eps))
    if f"{label}@{eps:g}" in run.overestimating:
        cell.flag = OVERESTIMATE_FLAG
        cell.css = "warn"
    return cell


def _verdict_cell(verdict: str | None) -> Cell:
    if verdict is None:
        return Cell("-")
    return Cell(verdict, css="ok" if verdict == NO_MASKING else "warn")


RL_RETURNS = "rl_returns"  # the artifact kind robustact.rl records per (agent, lambda)


def _is_rl(record: RunRecords) -> bool:
    return any(a["kind"] == RL_RETURNS for a in record.artifacts)


def rl_tables(records: list[RunRecords]) -> list[Table]:
    """The reinforcement-learning runs (``robustact rl``): the seed's Table 1 layout, the
    relative change of the SAP agent's mean return over the dense agent's per game and lambda,
    then the mean returns with their standard errors."""
    from robustact.rl.evaluate import DENSE, AgentReturns, format_change, relative_changes

    runs = [(r, [AgentReturns.from_dict(a["payload"]) for a in r.artifacts
                 if a["kind"] == RL_RETURNS]) for r in records]
    runs = [(r, rows) for r, rows in runs if rows]
    if not runs:
        return []
    eps_values = sorted({row.eps for _, rows in runs for row in rows})
    agents = list(dict.fromkeys(row.agent for _, rows in runs for row in rows))
    lam = [f"λ={255 * e:.3g}/255" for e in eps_values]
    tables = []
    for agent in (a for a in agents if a != DENSE):
        body = [[Cell(r.cell), Cell(str(r.get("game") or "-")),
                 *(Cell(format_change(c), numeric=True)
                   for c in relative_changes(rows, agent, eps_values))] for r, rows in runs]
        tables.append(Table(f"MinAtar DDQN: relative change of the mean return, {agent} vs "
                            "dense (%)", ["Cell", "Game", *lam], body,
                            ["100 (R_sap - R_dense) / |R_dense| at each FGSM lambda on the "
                             "observations, as in the seed's Table 1; n/a: the dense agent's "
                             "mean return is 0."]))
    body = []
    for r, rows in runs:
        by = {(row.agent, row.eps): row for row in rows}
        for agent in agents:
            cells = []
            for e in eps_values:
                row = by.get((agent, e))
                text = "-" if row is None else f"{row.mean:.2f}" + (
                    "" if math.isnan(row.stderr) else f" ± {row.stderr:.2f}")
                cells.append(Cell(text, numeric=True))
            body.append([Cell(r.cell), Cell(str(r.get("game") or "-")), Cell(agent), *cells])
    tables.append(Table("MinAtar DDQN: mean return per episode", ["Cell", "Game", "Agent", *lam],
                        body, ["± one standard error over the evaluation episodes."]))
    return tables


def accuracy_tables(records: list[RunRecords]) -> list[Table]:
    """One table per (dataset, model) over the finished runs with results."""
    groups: dict[tuple[str, str], list[RunRecords]] = {}
    for r in records:
        if r.run["status"] == "done":
            groups.setdefault((str(r.get("dataset")), str(r.get("model"))), []).append(r)
    tables = []
    for (dataset, model), runs in groups.items():
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
                  + [f"Worst case{suite_note} ε={format_eps(eps)}" for eps in worst]
                  + ["Verdict"])
        body = []
        for r in runs:
            body.append([Cell(r.cell), Cell(activation_label(r)), Cell(training_label(r.config)),
                         _accuracy_cell(r.result(CLEAN, None)),
                         *(_flagged(r, label, eps) for label, eps in columns),
                         *(_accuracy_cell(r.result(WORST_CASE, eps)) for eps in worst),
                         _verdict_cell(r.verdict)])
        notes = _table_notes(runs)
        if any(c.flag == OVERESTIMATE_FLAG for row in body for c in row):
            notes.append(f"{OVERESTIMATE_FLAG}: the attack left robust significantly many points "
                         "that other attacks broke (exact McNemar test, 5%); it overestimates "
                         "robustness (see the cell's diagnostics).")
        tables.append(Table(f"{dataset} / {model}", header, body, notes))
        paired = paired_table(runs)
        if paired is not None:
            tables.append(paired)
    return tables


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

    def images(r: RunRecords) -> tuple[Any, ...]:
        e = r.evaluation or {}
        return e.get("split"), e.get("n"), r.get("dataset")

    others = [r for r in evaluated if r is not base and images(r) == images(base)]
    eps_values = sorted({row["eps"] for row in base.results if row["eps"] is not None})
    eps_values = [e for e in eps_values if worst_case_mask(base, e) is not None]
    if not others:
        return None

    def cell(a: list[bool] | None, b: list[bool] | None) -> Cell:
        if a is None or b is None or len(a) != len(b):
            return Cell("-", numeric=True)
        mean, lo, hi = paired_difference(a, b)
        css = None if lo <= 0 <= hi else ("ok" if lo > 0 else "warn")
        return Cell(f"{100 * mean:+.1f} ({100 * lo:+.1f}, {100 * hi:+.1f})", css=css,
                    numeric=True)

    base_clean = _mask(base.evaluation.get("clean_correct"))
    body = [[Cell(r.cell), Cell(activation_label(r)), Cell(training_label(r.config)),
             cell(_mask(r.evaluation.get("clean_correct")), base_clean),
             *(cell(worst_case_mask(r, e), worst_case_mask(base, e)) for e in eps_values)]
            for r in others]
    header = (["Cell", "Activation", "Training", f"A_std - {base.cell}"]
              + [f"Worst case ε={format_eps(e)} - {base.cell}" for e in eps_values])
    n = base.evaluation.get("n")
    return Table(f"Paired differences to {base.cell}", header, body, [
        f"Points of accuracy minus {base.cell}'s on the same {n} images, with the 95% interval "
        "of the per-example differences (normal approximation). An interval away from 0 is a "
        "difference beyond the sampling of test images; the spread over training seeds is not "
        "in it."])


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
            Cell(str(len(r.epochs) or r.config.get("epochs") or "-"), numeric=True),
            Cell(pct(final), numeric=True),
            Cell(str((r.evaluation or {}).get("n") or "-"), numeric=True),
            Cell(_seconds(r.run.get("train_seconds")), numeric=True),
            Cell(_seconds(r.run.get("eval_seconds")), numeric=True),
            Cell(str(r.run.get("device") or "-")), Cell(str(_dash(r.run.get("seed")))),
            Cell(str(r.run.get("config_hash") or "-")), Cell(code),
        ])
    return Table("Runs", header, rows)


def _dash(value: Any) -> Any:
    return "-" if value is None else value


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


# --- figures -----------------------------------------------------------------------------------


@dataclass
class Figure:
    name: str  # file stem under figures/
    caption: str
    svg: str
    cell: str | None = None  # None: a study-level figure


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "x"


def accuracy_figure(records: list[RunRecords]) -> Figure | None:
    """Robust accuracy against eps: one panel for the worst case and one per attack, one line
    per cell; eps 0 is the clean accuracy."""
    runs = [r for r in records if any(row["eps"] is not None for row in r.results)]
    if not runs:
        return None
    labels = list(dict.fromkeys(row["attack"] for r in runs for row in r.results
                                if row["attack"] not in (CLEAN, WORST_CASE)))
    panels = []
    for label in [WORST_CASE, *labels]:
        title = "worst case" if label == WORST_CASE else attack_name(label)
        series = []
        for r in runs:
            points = sorted(((row["eps"], row) for row in r.results
                             if row["attack"] == label and row["eps"] is not None),
                            key=lambda p: p[0])
            if not points:
                continue
            clean = r.result(CLEAN, None)
            if clean is not None:
                points.insert(0, (0.0, clean))
            series.append(svg.Series(
                r.cell, [p[0] for p in points], [100 * p[1]["robust_accuracy"] for p in points],
                r.color, [_point_tip(r.cell, title, eps, row) for eps, row in points]))
        panels.append(svg.Panel(title, "eps (pixel scale)", "accuracy (%)", series,
                                ylim=(-1.0, 101.0)))  # points at 0 and 100 stay inside
    legend = [(r.cell, r.color) for r in runs]
    text = svg.panels_svg(panels, title="Robust accuracy against eps", legend=legend,
                          columns=min(3, len(panels)))
    return Figure("accuracy_vs_eps", "Robust accuracy against eps (eps 0: clean accuracy); "
                  "one line per cell.", text)


def _point_tip(cell: str, title: str, eps: float, row: dict[str, Any]) -> str:
    name = "clean" if row["attack"] == CLEAN else title
    ci = ""
    if row.get("ci_low") is not None:
        ci = f" [{pct(row['ci_low'])}, {pct(row['ci_high'])}]"
    return f"{cell}, {name}, eps {format_eps(eps)}: {pct(row['robust_accuracy'])}%{ci}"


def training_figure(records: list[RunRecords]) -> Figure | None:
    """Test accuracy and training loss against epoch, one line per cell."""
    runs = [r for r in records if r.epochs]
    if not runs:
        return None
    panels = []
    for key, title, ylabel, scale in (("test_acc", "test accuracy", "accuracy (%)", 100.0),
                                      ("train_loss", "training loss", "loss", 1.0)):
        series = []
        for r in runs:
            xs = [_number(e.get("epoch", i)) for i, e in enumerate(r.epochs)]
            ys = [None if _number(e.get(key)) is None else scale * e[key] for e in r.epochs]
            series.append(svg.Series(r.cell, xs, ys, r.color,
                                     [f"{r.cell}, epoch {x:g}: {title} "
                                      f"{'-' if y is None else format(y, '.4g')}"
                                      for x, y in zip(xs, ys, strict=True)]))
        panels.append(svg.Panel(title, "epoch", ylabel, series, integer_x=True))
    text = svg.panels_svg(panels, title="Training curves",
                          legend=[(r.cell, r.color) for r in runs])
    return Figure("training_curves", "Test accuracy and training loss per epoch; one line per "
                  "cell.", text)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def cell_figures(r: RunRecords, notes: list[str]) -> list[Figure]:
    """Reliability diagrams and loss landscapes of one run; unusable artifacts go to
    ``notes``."""
    figures = []
    diagrams = {}
    for artifact in r.artifacts:
        if artifact["kind"] != "calibration":
            continue
        try:
            diagrams[artifact["key"]] = Reliability.from_dict(artifact["payload"])
        except (ConfigError, TypeError) as exc:
            notes.append(f"{r.cell}: calibration artifact {artifact['key']!r} is unusable: {exc}")
    if diagrams:
        figures.append(Figure(f"reliability_{_slug(r.cell)}", f"{r.cell}: reliability diagram "
                              f"({', '.join(diagrams)})",
                              reliability_svg(diagrams, title=f"{r.cell}: reliability"), r.cell))
    for artifact in r.artifacts:
        if artifact["kind"] != "landscape":
            continue
        payload, key = artifact["payload"], artifact["key"]
        problem = svg.check_landscape(payload)
        if problem:
            notes.append(f"{r.cell}: landscape artifact {key!r} is unusable: {problem}")
            continue
        eps = f", eps {format_eps(payload['eps'])}" if _number(payload.get("eps")) else ""
        title = f"{r.cell} ({key}): loss along {payload.get('direction', 'gradient x random')}"
        clean = _number(payload.get("clean_loss"))
        caption = (f"{r.cell}, {key}: loss landscape{eps}"
                   + (f", clean loss {clean:.4g}" if clean is not None else "")
                   + ". A jagged surface means the gradient direction says little about the "
                     "loss a small step away.")
        figures.append(Figure(f"landscape_{_slug(r.cell)}_{_slug(key)}", caption,
                              svg.landscape_svg(payload, title=title + eps), r.cell))
    return figures


def build_figures(records: list[RunRecords]) -> tuple[list[Figure], list[str]]:
    """Every figure of the report (unique file names) and notes on unusable artifacts."""
    notes: list[str] = []
    figures = [f for f in (accuracy_figure(records), training_figure(records)) if f]
    for r in records:
        figures += cell_figures(r, notes)
    seen: set[str] = set()
    for figure in figures:
        name, k = figure.name, 1
        while name in seen:
            k += 1
            name = f"{figure.name}_{k}"
        figure.name = name
        seen.add(name)
    return figures, notes


# --- the report --------------------------------------------------------------------------------


@dataclass
class Report:
    study: str
    generated: str
    provenance: list[str]
    tables: list[Table]
    runs: Table
    records: list[RunRecords]
    figures: list[Figure]
    notes: list[str]


def build_report(store: ResultsStore, study: str) -> Report:
    """Everything a report shows, from the store's records of ``study``."""
    from robustact import __version__

    records = load_records(store, study)
    figures, notes = build_figures(records)
    return Report(study, datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC") +
                  f" by robustact {__version__}", _provenance(records),
                  accuracy_tables([r for r in records if not _is_rl(r)]) + rl_tables(records),
                  runs_table(records), records, figures, notes)


def _provenance(records: list[RunRecords]) -> list[str]:
    def distinct(*keys: str) -> list[str]:
        values = []
        for r in records:
            parts = [str(r.run.get(k)) for k in keys if r.run.get(k)]
            if parts:
                values.append(" @ ".join(parts))
        return list(dict.fromkeys(values))

    code = distinct("code_version", "git_commit")
    lines = [("Code: robustact " if len(code) <= 1 else "Code (mixed versions!): robustact ")
             + ("; ".join(code) or "unknown")]
    for label, key in (("Python", "python_version"), ("torch", "torch_version"),
                       ("numpy", "numpy_version"), ("Devices", "device")):
        values = distinct(key)
        if values:
            lines.append(f"{label}: {', '.join(values)}")
    counts = {s: sum(r.run["status"] == s for r in records) for s in ("done", "failed",
                                                                       "running")}
    lines.append(f"Cells: {len(records)} ({counts['done']} done, {counts['failed']} failed, "
                 f"{counts['running']} running)")
    return lines


def _fired(r: RunRecords) -> list[dict[str, Any]]:
    return [c for c in (r.diagnostics or {}).get("checks") or [] if c.get("fired")]


def render_markdown(report: Report) -> str:
    """The report as markdown; figures are linked from ``figures/<name>.svg``."""
    out = [f"# Study report: {_md(report.study)}", "", f"Generated {report.generated}.", ""]
    out += [f"- {_md(line)}" for line in report.provenance] + [""]
    out += ["## Robust accuracy", ""]
    for table in report.tables:
        out += _md_table(table) + [""]
    if not report.tables:
        out += ["No finished cell has results.", ""]
    out += ["## Figures", ""]
    for figure in (f for f in report.figures if f.cell is None):
        out += [f"![{_md(figure.caption)}](figures/{figure.name}.svg)", "",
                f"*{_md(figure.caption)}*", ""]
    out += _md_table(report.runs, level=2) + [""]
    out += ["## Cells", ""]
    for r in report.records:
        out += [f"### {_md(r.cell)}", "", f"Status: {r.run['status']}; {_md(activation_label(r))}"
                f", {_md(training_label(r.config))}.", ""]
        if r.run.get("error"):
            out += [f"Error: {_code(r.run['error'])}", ""]
        if r.diagnostics:
            checks = r.diagnostics.get("checks") or []
            fired = _fired(r)
            out += [f"Verdict: **{_md(r.verdict or '-')}** ({len(fired)} of {len(checks)} "
                    "checks fired)", ""]
            out += [f"- {_code(c.get('name', '?'))}: {_md(c.get('message', ''))}" for c in fired]
            out += [""] if fired else []
        for figure in (f for f in report.figures if f.cell == r.cell):
            out += [f"![{_md(figure.caption)}](figures/{figure.name}.svg)", "",
                    f"*{_md(figure.caption)}*", ""]
    failed = [r for r in report.records if r.run["status"] == "failed"]
    out += ["## Failed cells", ""]
    out += ([f"- **{_md(r.cell)}**: {_code(r.run.get('error') or 'no error recorded')}"
             for r in failed] or ["None."]) + [""]
    if report.notes:
        out += ["## Notes", ""] + [f"- {_md(n)}" for n in report.notes] + [""]
    return "\n".join(out)


def _md(value: Any) -> str:
    """``value`` as markdown text on one line: table pipes and HTML markup escaped."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _code(value: Any) -> str:
    """``value`` as a markdown code span (one line)."""
    text = str(value).replace("\n", " ").replace("\r", " ")
    fence = "``" if "`" in text else "`"
    return f"{fence} {text} {fence}" if fence == "``" else f"`{text}`"


def _md_table(table: Table, level: int = 3) -> list[str]:
    lines = [f"{'#' * level} {_md(table.title)}", "",
             "| " + " | ".join(map(_md, table.header)) + " |",
             "|" + "|".join("---:" if c.numeric else "---" for c in table.rows[0]) + "|"
             if table.rows else "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(c.markdown() for c in row) + " |" for row in table.rows]
    if table.notes:
        lines += [""] + [_md(n) for n in table.notes]
    return lines


def render_html(report: Report) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG)."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>Study report: {e(report.study)}</title>", f"<style>{CSS}</style>",
           "</head>", "<body>", "<main>",
           f"<h1>Study report: {e(report.study)}</h1>",
           f'<p class="meta">Generated {e(report.generated)}.</p>']
    out += [f'<p class="meta">{e(line)}</p>' for line in report.provenance]
    out.append('<h2 id="robust-accuracy">Robust accuracy</h2>')
    for table in report.tables:
        out += _html_table(table)
    if not report.tables:
        out.append("<p>No finished cell has results.</p>")
    out.append('<h2 id="figures">Figures</h2>')
    for figure in (f for f in report.figures if f.cell is None):
        out += _html_figure(figure)
    out += _html_table(report.runs, level=2)
    out.append('<h2 id="cells">Cells</h2>')
    for r in report.records:
        out.append(f"<h3>{e(r.cell)}</h3>")
        status_class = ' class="failed"' if r.run["status"] == "failed" else ""
        out.append(f"<p><span{status_class}>{e(r.run['status'])}</span>; "
                   f"{e(activation_label(r))}, {e(training_label(r.config))}.</p>")
        if r.run.get("error"):
            out.append(f'<p class="failed">Error: <code>{e(r.run["error"])}</code></p>')
        if r.diagnostics:
            checks = r.diagnostics.get("checks") or []
            fired = _fired(r)
            css = "ok" if r.verdict == NO_MASKING else "warn"
            out.append(f'<p>Verdict: <span class="{css}">{e(r.verdict or "-")}</span> '
                       f"({len(fired)} of {len(checks)} checks fired)</p>")
            if fired:
                out.append('<ul class="checks">')
                out += [f"<li><code>{e(str(c.get('name', '?')))}</code>: "
                        f"{e(str(c.get('message', '')))}</li>" for c in fired]
                out.append("</ul>")
            quiet = [c for c in checks if not c.get("fired")]
            if quiet:
                out.append("<details><summary>Checks that did not fire</summary>"
                           '<ul class="checks">')
                out += [f"<li><code>{e(str(c.get('name', '?')))}</code>: "
                        f"{e(str(c.get('message', '')))}</li>" for c in quiet]
                out.append("</ul></details>")
        for figure in (f for f in report.figures if f.cell == r.cell):
            out += _html_figure(figure)
    failed = [r for r in report.records if r.run["status"] == "failed"]
    out.append('<h2 id="failed">Failed cells</h2>')
    if failed:
        out.append("<ul>")
        out += [f"<li><strong>{e(r.cell)}</strong>: "
                f"<code>{e(r.run.get('error') or 'no error recorded')}</code></li>"
                for r in failed]
        out.append("</ul>")
    else:
        out.append("<p>None.</p>")
    if report.notes:
        out.append('<h2 id="notes">Notes</h2><ul>')
        out += [f"<li>{e(n)}</li>" for n in report.notes]
        out.append("</ul>")
    out += ["</main>", "</body>", "</html>"]
    return "\n".join(out) + "\n"


def _html_table(table: Table, level: int = 3) -> list[str]:
    e = html.escape
    out = [f"<h{level}>{e(table.title)}</h{level}>", "<table>", "<thead><tr>"]
    out += [f"<th>{e(h)}</th>" for h in table.header]
    out += ["</tr></thead>", "<tbody>"]
    for row in table.rows:
        cells = []
        for c in row:
            classes = " ".join(filter(None, [None if c.numeric else "text", c.css]))
            attrs = f' class="{classes}"' if classes else ""
            tip = c.tooltip()
            if tip:
                attrs += f' title="{e(tip)}"'
            cells.append(f"<td{attrs}>{e(c.text)}{' ' + e(c.flag) if c.flag else ''}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out += ["</tbody>", "</table>"]
    out += [f'<p class="note">{e(n)}</p>' for n in table.notes]
    return out


def _html_figure(figure: Figure) -> list[str]:
    return [f'<figure id="fig-{html.escape(figure.name)}">', figure.svg.strip(),
            f"<figcaption>{html.escape(figure.caption)}</figcaption>", "</figure>"]


def write_report(store: ResultsStore, study: str, out_dir: str | Path) -> tuple[Path, Path]:
    """Render the report of ``study`` from ``store`` into ``out_dir``: ``report.md`` with its
    figures in ``figures/*.svg``, and the self-contained ``report.html``. Returns
    (md path, html path). Each file is written to a temporary name and renamed."""
    out = Path(out_dir)
    report = build_report(store, study)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for figure in report.figures:
        _write(out / "figures" / f"{figure.name}.svg", svg.svg_file_text(figure.svg))
    md_path, html_path = out / "report.md", out / "report.html"
    _write(md_path, render_markdown(report))
    _write(html_path, render_html(report))
    return md_path, html_path


def _write(path: Path, text: str) -> None:
    write_atomic(path, text)
