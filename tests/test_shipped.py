"""Shipped study files are found by name from any directory, and listed."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustact.cli import main
from robustact.errors import ConfigError
from robustact.study.shipped import SHIPPED, shipped_studies, study_file


def test_shipped_studies_are_found_by_name_from_any_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no configs/ here
    assert study_file("demo") == SHIPPED / "demo.yaml"
    assert study_file("kaf/fashion_mnist") == SHIPPED / "kaf" / "fashion_mnist.yaml"
    assert study_file("configs/kaf/fashion_mnist.yaml") == SHIPPED / "kaf" / "fashion_mnist.yaml"
    own = tmp_path / "demo.yaml"  # an existing file wins over a shipped name
    own.write_text("name: mine\n")
    assert study_file("demo.yaml") == Path("demo.yaml")
    with pytest.raises(ConfigError, match="no study file 'kaf/nope'.*shipped: demo, kaf/"):
        study_file("kaf/nope")
    with pytest.raises(ConfigError, match="is a directory"):
        study_file(tmp_path)


def test_list_studies_names_every_shipped_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "studies"]) == 0
    names = capsys.readouterr().out.split()
    assert names == shipped_studies() and len(names) == len(list(SHIPPED.rglob("*.yaml")))
    assert {"demo", "kaf/fashion_mnist", "sap/fashion_mnist", "rl/minatar"} <= set(names)
    repo = Path(__file__).parents[1] / "configs"  # the checkout's configs/ is the shipped one
    assert repo.resolve() == SHIPPED
