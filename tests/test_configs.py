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


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs" / "kaf")
                                        .glob("*.yaml")), ids=lambda p: p.name)
def test_kaf_studies_compare_the_thesis_activations(path: Path) -> None:
    """The thesis' eight activations, the random-init KAFs drawn as in the thesis code (std
    0.05; the reference code's 0.8 stalls at chance under the shared fast-AT recipe)."""
    from robustact.activations.kaf import KAF, THESIS_INIT_STD

    study = load_study(path)
    cells = {cell.id: cell.train for cell in study.cells}
    assert set(cells) == {"relu", "elu", "swish", "kaf", "kaf_relu", "kaf_elu", "kaf_swish",
                          "kaf_free"}
    for cell_id in ("kaf", "kaf_free"):
        layer = ACTIVATIONS.get(cells[cell_id].activation)(**cells[cell_id].act_kwargs)
        assert isinstance(layer, KAF) and layer.init == "normal"
        assert layer.init_std == THESIS_INIT_STD
    # the activation (and on CIFAR-10 the thesis' per-activation peak lr) is the only difference
    shared = {k: v for k, v in cells["relu"].to_dict().items()
              if k not in ("activation", "act_kwargs", "out", "lr")}
    for config in cells.values():
        assert {k: v for k, v in config.to_dict().items() if k in shared} == shared
    lrs = {cell_id: config.lr for cell_id, config in cells.items()}
    if path.name.startswith("cifar10"):  # max_lr of the thesis' range tests (VGG table)
        assert lrs == {"relu": 0.08, "elu": 0.1, "kaf": 1.0, "kaf_elu": 0.1, "swish": 0.3,
                       "kaf_swish": 0.8, "kaf_free": 2.0, "kaf_relu": 0.08}
        assert cells["relu"].momentum == 0.0  # Keras SGD, as the thesis trained
    else:  # one shared recipe
        assert set(lrs.values()) == {cells["relu"].lr}
