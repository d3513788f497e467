"""The seed tables' published numbers: every seed-table config carries them, they validate, and
``robustact report`` prints them beside ours with the difference."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from robustact.errors import ConfigError
from robustact.eval import AttackSpec
from robustact.report.paper import paper_table
from robustact.results import ResultsStore
from robustact.study import load_study
from robustact.study.config import _check_paper
from robustact.study.rl_config import load_rl_study
from robustact.study.summary import paper_rows

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "src" / "robustact" / "configs"
REPRODUCE = (ROOT / "docs" / "reproduce.md").read_text()
KWTA = sorted((CONFIGS / "kwta").glob("*.yaml"))
KAF = [CONFIGS / "kaf" / "cifar10_vgg.yaml", CONFIGS / "kaf" / "cifar10_resnet20.yaml"]
SAP = CONFIGS / "sap" / "cifar10_resnet20.yaml"
# the seed tables with numbers in the seeds' text: 8 k-WTA tables, the KAF thesis' two, SAP's
# CIFAR-10 study; the 12th, SAP's RL Table 1 (configs/rl/minatar.yaml), has none in the seed
SEED_TABLES = [*KWTA, *KAF, SAP]
# cells the paper does not report: KAF_ReLU is not in the VGG table; SAP's dropout and appendix-B
# baselines are figures only
UNREPORTED = {"cifar10_vgg.yaml": {"kaf_relu"}, "sap": {"dro", "rnw", "rsw", "dwp", "swp", "rna",
                                                        "rsa"}}


def _name(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def test_twelve_seed_tables_have_a_config() -> None:
    assert len(SEED_TABLES) == 11 and all(p.is_file() for p in SEED_TABLES)
    assert (CONFIGS / "rl" / "minatar.yaml").is_file()  # SAP's Table 1 (RL)


@pytest.mark.parametrize("path", SEED_TABLES, ids=_name)
def test_every_reported_cell_carries_valid_paper_numbers(path: Path) -> None:
    study = load_study(path)
    unreported = UNREPORTED.get("sap" if path == SAP else path.name, set())
    for cell in study.cells:
        assert (cell.paper is None) == (cell.id in unreported), cell.id
        if cell.paper is None:
            continue
        assert cell.paper["source"].startswith("seed 00")
        assert "clean" in cell.paper and len(cell.paper) >= 3 or cell.id == "adv_sap"
        # the keys are the evaluation's attack labels, the eps its eps
        assert _check_paper(f"{path}, cell {cell.id}, paper", cell.paper,
                            cell.evaluate) == cell.paper
        labels = {AttackSpec.parse(a).label for a in cell.evaluate.attacks}
        assert set(cell.paper) - {"source", "clean"} <= labels


def _reproduce_numbers(row_start: str) -> list[float]:
    """The numbers of docs/reproduce.md's "paper" column in the row starting ``row_start``."""
    line = next(line for line in REPRODUCE.splitlines() if line.startswith(row_start))
    return [float(x) for x in re.findall(r"\d+\.\d+", line.split("|")[3])]


@pytest.mark.parametrize("path", KWTA, ids=_name)
def test_kwta_paper_blocks_match_the_tables_in_docs(path: Path) -> None:
    table = re.search(r"Table (\d):", path.read_text()).group(1)
    expected = _reproduce_numbers(f"| {table} ")
    cells = {c.id: c.paper for c in load_study(path).cells}
    got = [cells[c][k] for c in ("relu", "kwta02", "kwta01")
           for k in ("clean", "pgd_paper", "deepfool")]
    assert got == expected


@pytest.mark.parametrize("path,row", [(KAF[0], "| VGG-inspired"), (KAF[1], "| ResNet20")],
                         ids=["vgg", "resnet20"])
def test_kaf_paper_blocks_match_the_tables_in_docs(path: Path, row: str) -> None:
    line = next(line for line in REPRODUCE.splitlines() if line.startswith(row))
    expected = {name.lower(): (float(a), float(r))
                for name, a, r in re.findall(r"(\w+) ([\d.]+)/([\d.]+)", line)}
    got = {c.id: (c.paper["clean"], c.paper["pgd50x10"])
           for c in load_study(path).cells if c.paper}
    assert got == expected


def test_sap_cifar10_study_carries_the_papers_numbers() -> None:
    study = load_study(SAP)
    assert [c.id for c in study.cells] == ["dense", "sap100", "dro", "adv", "adv_sap", "rnw",
                                           "rsw", "dwp", "swp", "rna", "rsa"]
    assert [round(e * 255, 6) for e in study.evaluate.eps] == [1, 2, 4, 8, 16, 32, 64]
    paper = {c.id: c.paper for c in study.cells}
    lam = {k: k / 255 for k in (1, 2, 4)}
    assert paper["dense"]["clean"] == 89.8
    assert paper["dense"]["fgsm"] == {lam[1]: 66.3, lam[2]: 56.4}
    assert paper["dense"]["bim"] == {lam[1]: 66.3, lam[2]: 50.1, lam[4]: 31.0}
    assert paper["sap100"]["bim_mc"] == {lam[1]: 82.0, lam[2]: 80.2, lam[4]: 76.7}
    assert paper["sap100"]["transfer_dense_bim"] == {lam[1]: 75.2, lam[2]: 67.0, lam[4]: 50.8}
    assert paper["adv"]["fgsm"] == {lam[1]: 72.9, lam[2]: 70.9, lam[4]: 67.5}
    assert (paper["sap100"]["clean"], paper["adv"]["clean"], paper["adv_sap"]["clean"]) == (
        83.3, 75.0, 74.1)
    posthoc = {c.id: (c.posthoc or {}).get("defense") for c in study.cells}
    assert posthoc == {"dense": None, "sap100": "sap", "dro": "dro", "adv": None,
                       "adv_sap": "sap", "rnw": "rnw", "rsw": "rsw", "dwp": "dwp",
                       "swp": "swp", "rna": "rna", "rsa": "rsa"}
    assert {c.train_dir.name for c in study.cells} == {"dense", "adv"}  # post-hoc reuse
    assert study.cell("sap100").evaluate.samples == 100 and study.evaluate.n == 1000


def _study(tmp_path: Path, paper: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(
        f"name: tiny_paper\nout: {tmp_path / 'runs'}\n"
        "train: {model: small_cnn, dataset: fashion_mnist, epochs: 1, train_subset: 64,\n"
        "        test_subset: 32, batch_size: 16, optimizer: adam, lr: 0.003}\n"
        f"cells:\n  - {{id: relu, activation: relu, paper: {paper}}}\n"
        "evaluate: {eps: [0.1], n: 8, suite: none, attacks: [fgsm]}\n")
    return path


@pytest.mark.parametrize("paper,key", [
    ("{clean: 150}", "paper.clean: must be a percentage in [0, 100]"),
    ("[50, 10]", "paper: must be a mapping"),
    ("{fgsm: {abc: 10}}", "paper.fgsm eps must be a number or N/255"),
    ("{source: 3, clean: 50}", "paper.source: must be a text"),
    ("{fgsm: true}", "paper.fgsm: must be a percentage"),
])
def test_a_bad_paper_block_is_a_one_line_error(tmp_path: Path, paper: str, key: str) -> None:
    path = _study(tmp_path, paper)
    with pytest.raises(ConfigError) as info:
        load_study(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}, cell relu, {key}")


def test_paper_keys_are_checked_against_the_evaluation() -> None:
    cell = load_study(SAP).cell("sap100")
    where = "s.yaml, cell sap100, paper"
    with pytest.raises(ConfigError, match=r"paper\.pgd: not an attack label .* valid: bim_mc"):
        _check_paper(where, {"pgd": 10}, cell.evaluate)
    with pytest.raises(ConfigError, match=r"paper\.bim_mc: eps 3/255 is not evaluated"):
        _check_paper(where, {"bim_mc": {"3/255": 10}}, cell.evaluate)


def test_rl_cells_take_a_paper_block(tmp_path: Path) -> None:
    text = (CONFIGS / "rl" / "minatar.yaml").read_text()
    good = text.replace("- {id: breakout, game: breakout}",
                        "- {id: breakout, game: breakout, paper: {source: x, clean: 5}}")
    (tmp_path / "good.yaml").write_text(good)
    assert load_rl_study(tmp_path / "good.yaml").cell("breakout").paper == {"source": "x",
                                                                           "clean": 5.0}
    (tmp_path / "bad.yaml").write_text(good.replace("clean: 5", "clean: -5"))
    with pytest.raises(ConfigError, match=r"bad\.yaml, cell breakout, paper\.clean: must be"):
        load_rl_study(tmp_path / "bad.yaml")


def test_a_study_not_run_shows_not_run(tmp_path: Path) -> None:
    table = paper_table(paper_rows(load_study(_study(tmp_path, "{clean: 50, fgsm: 10}")), None))
    assert table is not None
    lines = table.to_markdown().splitlines()
    assert "| relu | A_std | - | 50 | not run | - | - |" in lines
    assert "| relu | FGSM | 0.1 | 10 | not run | - | - |" in lines


def test_report_prints_the_paper_beside_ours_with_the_difference(tmp_path: Path) -> None:
    path = _study(tmp_path, "{source: made up, clean: 50, fgsm: 10}")
    for command in (["run", str(path)], ["report", str(path)]):
        done = subprocess.run([sys.executable, "-m", "robustact", *command],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    store = ResultsStore(tmp_path / "runs" / "results.sqlite")
    run = store.run("tiny_paper", "relu")
    clean = 100 * store.evaluation(run["id"])["clean_accuracy"]
    fgsm = 100 * next(r["robust_accuracy"] for r in store.results(run_id=run["id"])
                      if r["attack"] == "fgsm" and r["eps"] == pytest.approx(0.1))
    markdown = (tmp_path / "runs" / "report" / "report.md").read_text()
    assert "## Paper vs ours" in markdown
    for metric, eps, paper, ours in (("A_std", "-", 50, clean), ("FGSM", "0.1", 10, fgsm)):
        diff = ours - paper
        sign = "+" if diff >= 0 else "-"
        row = f"| relu | {metric} | {eps} | {paper} | {ours:.1f} | {sign}{abs(diff):.1f} |"
        assert f"{row} made up |" in markdown.splitlines()
    html = (tmp_path / "runs" / "report" / "report.html").read_text()
    assert ">Paper vs ours</h2>" in html and f"<td>{clean - 50:+.1f}</td>" in html
