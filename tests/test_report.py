"""Reports from a results store: markdown + self-contained HTML, tables, figures, diagnostics."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from robustact.errors import ConfigError
from robustact.eval import calibrate, evaluate
from robustact.eval.landscape import loss_landscape
from robustact.eval.stats import wilson_interval
from robustact.report import write_report
from robustact.report.landscape import landscape_svg
from robustact.report.svg import nice_ticks
from robustact.results import ResultsStore
from robustact.results import store as store_module

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
MASKING = "gradient masking suspected: bad_gradients"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def no_git(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "git_commit", lambda: "feedbeef")


class StrictParser(HTMLParser):
    """Collects tags and fails on unbalanced or misnested elements."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))  # <line .../> in inline SVG

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def tiny_model(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """A small MLP fitted to (x, y) in a few full-batch steps."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 4, 4, generator=g)
    return x, (x.mean((1, 2, 3)) * 6).long().clamp(0, 2)


def handmade_record() -> dict[str, Any]:
    """A robustness record at two eps values whose diagnostics suspect masking."""
    n = 7

    def row(attack: str, eps: float | None, robust: int) -> dict[str, Any]:
        lo, hi = wilson_interval(robust, n)
        return {"attack": attack, "eps": eps, "robust_accuracy": robust / n, "ci_low": lo,
                "ci_high": hi, "n": n, "robust": robust}

    rows = [row("clean", None, 5), row("pgd", 0.1, 4), row("deepfool", 0.1, 3),
            row("pgd", 0.2, 2), row("deepfool", 0.2, 1), row("worst_case", 0.1, 3),
            row("worst_case", 0.2, 1)]
    return {"checkpoint": "runs/kwta", "model": "mlp", "activation": "kwta",
            "act_kwargs": {"ratio": 0.1}, "dataset": "toy", "split": "test", "n": n,
            "eps_list": [0.1, 0.2], "n_samples": 1, "sequential": False, "seconds": 1.0,
            "clean_accuracy": 5 / n, "rows": rows, "attacks": [], "clean_correct": None,
            "diagnostics": {"verdict": MASKING, "checks": [
                {"name": "bad_gradients", "fired": True,
                 "message": "62% of input gradients are exactly zero", "details": {}},
                {"name": "loss_not_rising", "fired": False, "message": "the loss rose",
                 "details": {}}]}}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ResultsStore:
    """A study with a ReLU cell (evaluated for real, one eps), a k-WTA cell (hand-made record,
    two eps) and a failed cell."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_module, "git_commit", lambda: "feedbeef")
        store = ResultsStore(tmp_path_factory.mktemp("report") / "results.sqlite")
        x, y = tiny_data()
        model = tiny_model(x, y)
        report = evaluate(model, (x, y), ["fgsm", "pgd:steps=3"], [0.05], probe_size=20)
        record = {"checkpoint": "runs/relu", "model": "mlp", "activation": "relu",
                  "act_kwargs": {}, "dataset": "toy", "split": "test", **report.to_dict()}
        config = {"model": "mlp", "dataset": "toy", "activation": "relu", "epochs": 2}
        relu = store.record_run("demo", "relu", config=config, config_hash="h1", status="done",
                                seed=0, device="cpu", train_seconds=4.0, eval_seconds=1.0)
        store.record_epochs(relu, [{"epoch": 1, "train_loss": 1.1, "test_acc": 0.4},
                                   {"epoch": 2, "train_loss": 0.8, "test_acc": 0.6}])
        store.record_robustness(relu, record)
        store.record_artifact(relu, "calibration", "clean", calibrate(model, x, y, bins=5)
                              .to_dict())
        store.record_artifact(relu, "landscape", "test",
                              loss_landscape(model, x[:8], y[:8], eps=0.1, steps=5))
        kwta = store.record_run("demo", "kwta", config={**config, "activation": "kwta",
                                                        "act_kwargs": {"ratio": 0.1},
                                                        "adversarial": {"method": "fgsm",
                                                                        "eps": 0.1}},
                                config_hash="h2", status="done", seed=1)
        store.record_epochs(kwta, [{"epoch": 1, "train_loss": 1.3, "test_acc": 0.3}])
        store.record_robustness(kwta, handmade_record())
        store.record_artifact(kwta, "landscape", "broken", {"alphas": [0.0]})
        store.record_run("demo", "broken", config={"activation": "nosuch"}, config_hash="h3",
                         status="failed", error="UnknownNameError: bad <script>alert(1)</script>")
        store.record_run("other", "x", config={}, config_hash=None, status="running")
        return store


def test_report_writes_markdown_html_and_figures(store: ResultsStore, tmp_path: Path) -> None:
    md_path, html_path = write_report(store, "demo", tmp_path / "out")
    assert md_path == tmp_path / "out" / "report.md" and html_path.name == "report.html"
    md, page = md_path.read_text(), html_path.read_text()
    # markdown: the seed-style table with intervals, figures linked beside it
    assert ("| Cell | Activation | Training | A_std | FGSM ε=0.05 | PGD ε=0.05 | PGD ε=0.1 | "
            "PGD ε=0.2 | DeepFool ε=0.1 | DeepFool ε=0.2 | Worst case ε=0.05 | Worst case "
            "ε=0.1 | Worst case ε=0.2 | Verdict |") in md
    kwta_row = next(line for line in md.splitlines() if line.startswith("| kwta |"))
    assert "| kwta (ratio=0.1) | fgsm-AT eps=0.1 | 71.4 ± " in kwta_row
    assert "| 14.3 ± " in kwta_row and MASKING in kwta_row
    links = re.findall(r"\]\((figures/[^)]+\.svg)\)", md)
    assert {Path(link).stem for link in links} >= {"accuracy_vs_eps", "training_curves",
                                                    "reliability_relu", "landscape_relu_test"}
    for link in links:
        ET.fromstring((md_path.parent / link).read_bytes())  # well-formed SVG files
    assert "bad_gradients" in md and "62% of input gradients" in md
    assert "UnknownNameError" in md and "landscape artifact 'broken' is unusable" in md
    # HTML: parses cleanly, holds the numbers, verdicts and figures, nothing external
    parser = StrictParser()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    text = " ".join(parser.text)
    relu = store.results("demo")
    clean = next(r for r in relu if r["cell"] == "relu" and r["attack"] == "clean")
    assert f"{100 * clean['robust_accuracy']:.1f}" in text and "71.4" in text
    assert MASKING in text and store.diagnostics(store.run("demo", "relu")["id"])["verdict"] \
        in text
    assert page.count("<svg") == 4  # accuracy, training, reliability, one landscape
    titles = [a.get("title") for tag, a in parser.tags if tag == "td" and a.get("title")]
    assert any(t.startswith("95% CI ") and "n=7" in t for t in titles)
    assert "<script" not in page and "&lt;script&gt;" in page  # the error text is escaped
    assert not re.search(r"""(src|href)\s*=|url\(|@import|<link""", page)
    assert set(re.findall(r"https?://[^\s\"'<>]+", page)) <= {"http://www.w3.org/2000/svg"}
    assert "demo" in text and "feedbeef" in text and "other" not in md  # only this study


def test_report_of_an_unknown_study(store: ResultsStore, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no runs of study 'nope'; studies: demo, other"):
        write_report(store, "nope", tmp_path)


def test_report_of_runs_without_results(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "r.sqlite")
    store.record_run("s", "a", config={"model": "m"}, config_hash=None, status="running")
    md_path, html_path = write_report(store, "s", tmp_path / "out")
    assert "No finished cell has results." in md_path.read_text()
    parser = StrictParser()
    parser.feed(html_path.read_text())
    assert parser.errors == [] and "<svg" not in html_path.read_text()


def test_landscape_svg_and_ticks() -> None:
    payload = {"alphas": [-0.1, 0.0, 0.1], "betas": [-0.1, 0.0, 0.1],
               "loss": [[1.0, 2.0, 3.0], [2.0, 2.5, 3.0], [4.0, 5.0, 9.0]]}
    svg = landscape_svg(payload, title="k<WTA>")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg") and "k&lt;WTA&gt;" in svg
    assert svg.count("<rect x=") >= 9  # one cell per grid point
    with pytest.raises(ValueError, match="rows"):
        landscape_svg({**payload, "loss": [[1.0]]})
    assert nice_ticks(0, 100) == [0, 20, 40, 60, 80, 100]
    assert nice_ticks(0.0, 0.05)[-1] == pytest.approx(0.05)


def test_activation_label_shows_the_ratio_a_sparsity_schedule_ends_with() -> None:
    from robustact.report.records import RunRecords
    from robustact.report.tables import activation_label

    def records(config: dict[str, Any]) -> RunRecords:
        return RunRecords(run={"cell": "c", "config": config}, evaluation=None, results=[],
                          diagnostics=None, epochs=[], artifacts=[])

    base = {"activation": "kwta", "act_kwargs": {"ratio": 0.2}}
    assert activation_label(records(base)) == "kwta (ratio=0.2)"
    assert activation_label(records({**base, "sparsity": {"start": 0.2, "target": 0.1}})) == \
        "kwta (ratio=0.1)"


def test_reinforcement_learning_runs_get_the_seeds_table_1_layout(tmp_path: Path) -> None:
    from robustact.report.rl import RL_RETURNS
    from robustact.rl.evaluate import AgentReturns
    from robustact.study.rl_cell import RETURNS

    assert RL_RETURNS == RETURNS
    store = ResultsStore(tmp_path / "results.sqlite")
    run = store.record_run("rl", "breakout", config={"game": "breakout"}, config_hash="h",
                           status="done")
    # AgentReturns.to_dict() payloads: two episodes each, standard error |a - b| / 2
    for agent, eps, returns in [("dense", 0.0, [4.0, 6.0]), ("sap-100", 0.0, [4.0, 5.0]),
                                ("dense", 2 / 255, [0.0, 0.0]), ("sap-100", 2 / 255, [0.5, 1.5])]:
        store.record_artifact(run, RETURNS, f"{agent}@{eps}", AgentReturns(
            agent, eps, returns, frames=[100, 100]).to_dict())
    md_path, html_path = write_report(store, "rl", tmp_path / "out")
    md = md_path.read_text()
    # (4.5 - 5) / 5 = -10%; the dense agent's mean return 0 leaves the change undefined
    assert "| breakout | breakout | -10.0 | n/a |" in md
    assert "| breakout | breakout | sap-100 | 4.50 ± 0.50 | 1.00 ± 0.50 |" in md
    assert "A_std" not in md  # no empty image-classification table for RL runs
    assert "λ=2/255" in html_path.read_text()


def test_paired_differences_to_the_relu_cell(tmp_path: Path) -> None:
    """The paired table recomputes, from the stored per-example outcomes, what the two
    evaluations' own masks give: mean difference and its normal-approximation interval."""
    from robustact.report import build_report

    x, y = tiny_data()
    store = ResultsStore(tmp_path / "results.sqlite")
    reports = {}
    for seed, (cell, activation) in enumerate([("swish", "swish"), ("relu", "relu"),
                                               ("weak", "relu")]):
        torch.manual_seed(seed)
        model = tiny_model(x, y) if cell != "weak" else nn.Sequential(
            nn.Flatten(), nn.Linear(16, 3)).eval()
        report = evaluate(model, (x, y), ["fgsm", "pgd:steps=3"], [0.05, 0.2], diagnose=False)
        run = store.record_run("paired", cell, config={"model": "mlp", "dataset": "toy",
                                                       "activation": activation},
                               config_hash=cell, status="done")
        store.record_robustness(run, {"checkpoint": cell, "model": "mlp", "dataset": "toy",
                                      "activation": activation, "split": "test",
                                      **report.to_dict()})
        reports[cell] = report
    table = next(t for t in build_report(store, "paired").tables if t.title.startswith("Paired"))
    assert table.title == "Paired differences to relu"  # the ReLU run, not the first one
    assert [row[0].text for row in table.rows] == ["swish", "weak"]
    assert table.rows[1][3].text.startswith("-")  # an untrained model is clearly worse
    base = reports["relu"]
    for row in table.rows:
        other = reports[row[0].text]
        columns = [(other.clean_correct, base.clean_correct)] + [
            (other.worst_case(e), base.worst_case(e)) for e in (0.05, 0.2)]
        for cell, (a, b) in zip(row[3:], columns, strict=True):
            d = a.float() - b.float()
            half = 1.959964 * d.std().item() / len(d) ** 0.5
            mean = d.mean().item()
            assert cell.text == (f"{100 * mean:+.1f} ({100 * (mean - half):+.1f}, "
                                 f"{100 * (mean + half):+.1f})")
