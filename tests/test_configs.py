"""Every shipped config loads: valid options, known models, activations, datasets, attacks."""

from __future__ import annotations

from pathlib import Path

import pytest

from robustact.activations import ACTIVATIONS
from robustact.attacks import list_attacks
from robustact.data import list_datasets
from robustact.eval import AttackSpec
from robustact.models import list_models
from robustact.study import load_study
from robustact.train import TrainConfig, load_config_file

# configs/rl/ holds robustact.rl studies (DQN options), checked in tests/test_rl.py
CONFIGS = sorted(p for p in (Path(__file__).parents[1] / "configs").rglob("*.yaml")
                 if p.parent.name != "rl")


def test_configs_exist() -> None:
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_loads(path: Path) -> None:
    data = load_config_file(path)
    if "train" in data:  # a study
        study = load_study(path)
        configs = [cell.train for cell in study.cells]
        for spec in study.evaluate.get("attacks", []):
            assert AttackSpec.parse(spec).name in list_attacks()
    else:
        configs = [TrainConfig.from_dict(data)]
    for config in configs:
        assert config.model in list_models()
        assert config.dataset in list_datasets()
        ACTIVATIONS.get(config.activation)  # raises on an unknown name
