"""The RL study file: games -> trained DDQN agents -> dense vs SAP under FGSM, as typed cells.

.. code-block:: yaml

    name: rl_minatar
    out: runs/rl/minatar              # each cell trains into out/<cell id>
    train:                            # DQNConfig options shared by every cell
      frames: 200000
    grid:                             # the cartesian product of these options ...
      game: [breakout, space_invaders, freeway, asterix]
    cells:                            # ... and/or explicit cells (an id and overrides)
      - {id: breakout_nature, game: breakout, network: nature}
    evaluate:
      eps: [0, 1/255, 4/255]          # FGSM lambda on the [0, 1] scale; "N/255" allowed
      episodes: 20
      sap_frac: 1.0                   # SAP-100 on the Q-network (null: dense only)
      samples: 100                    # passes averaged for the SAP agent's Q-values
      mc_samples: 100                 # passes averaged for the attack's gradient (EOT)

A cell may carry the paper's numbers, ``paper: {source: Table 1, clean: 80.0}`` (checked as an
image cell's, :func:`robustact.study.config._check_paper`).

The layout is the image studies' (:mod:`robustact.study.config`); the cells run through the
same lifecycle (:mod:`robustact.study.rl_cell`). Every cell is checked when the file is read
(values against :class:`robustact.study.schema.RLEvalSchema` and the DQN options), before any
agent trains.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustact import options
from robustact.errors import ConfigError
from robustact.options import check_schema, within
from robustact.rl.dqn import DQNConfig
from robustact.study.schema import RLEvalSchema


def parse_eps(value: Any) -> float:
    """A lambda from a number or a ``"N/255"``-style string (YAML has no fractions)."""
    return options.parse_eps(value, what="FGSM lambda")


@dataclass(frozen=True)
class RLEvalConfig:
    """How an RL cell's agents are evaluated: FGSM lambdas, episodes, the SAP agent."""

    eps: tuple[float, ...] = (0.0,)
    episodes: int = 10
    sap_frac: float | None = 1.0
    samples: int = 100
    mc_samples: int | None = None
    seed: int = 10_000
    epsilon: float = 0.0
    max_frames: int = 10_000

    def __post_init__(self) -> None:
        if not self.eps:
            raise ConfigError("evaluate eps needs at least one lambda, e.g. [0, 4/255]")
        for key in ("episodes", "samples", "max_frames"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"evaluate {key} must be a positive integer, got {value!r}")

    def __getitem__(self, key: str) -> Any:
        """Read access by the study file's key: ``config["eps"]``."""
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """Read access by key with a default, as on the study file's mapping."""
        return self.to_dict().get(key, default)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "eps": list(self.eps)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> RLEvalConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{where}, evaluate: must be a mapping of options, got {data!r}; "
                              "give e.g. evaluate: {eps: [0, 4/255], episodes: 20}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{where}: unknown evaluate key(s) {', '.join(unknown)}; valid: "
                              f"{', '.join(sorted(names))}")
        check_schema(RLEvalSchema, data, where, prefix="evaluate.")
        values = dict(data)
        eps = values.get("eps", [0.0])
        try:
            values["eps"] = tuple(parse_eps(e) for e in (eps if isinstance(eps, list) else [eps]))
            if values.get("sap_frac") is not None:
                from robustact.defenses.sap import check_frac

                values["sap_frac"] = check_frac(values["sap_frac"])
            return cls(**values)
        except ConfigError as exc:
            raise within(where, exc) from None


@dataclass
class RLCell:
    id: str
    train: DQNConfig
    evaluate: RLEvalConfig
    needs: list[str] = field(default_factory=list)
    paper: dict[str, Any] | None = None  # the paper's numbers for this cell (report only)

    @property
    def out(self) -> Path:
        return Path(str(self.train.out))


@dataclass
class RLStudy:
    name: str
    out: Path
    cells: list[RLCell] = field(default_factory=list)
    store: str | None = None  # a results store path or URL (None: <out>/results.sqlite)

    def cell(self, cell_id: str) -> RLCell:
        from robustact.study.config import find_cell

        return find_cell(self.name, self.cells, cell_id)

    @property
    def store_path(self) -> Path:
        return self.out / "results.sqlite"


def is_rl_study_file(path: str | Path) -> bool:
    """Whether a study file describes RL cells (a ``game`` in its grid or cells)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return False  # the study loader reports what is wrong with the file
    if not isinstance(data, dict):
        return False
    grid = data.get("grid") if isinstance(data.get("grid"), dict) else {}
    cells = data.get("cells") if isinstance(data.get("cells"), list) else []
    return "game" in grid or any(isinstance(c, dict) and "game" in c for c in cells)


def load_rl_study(path: str | Path, out: str | Path | None = None) -> RLStudy:
    """Read and check an RL study file (see the module docstring)."""
    from robustact.study.config import _check_paper, merge, read_study_layout

    layout = read_study_layout(path, out, default_root="runs/rl",
                               example=", e.g. grid: {game: [breakout]}")
    cells = []
    for cell_id, override in layout.cells:
        where = f"{path}, cell {cell_id}"
        cell_evaluate = override.pop("evaluate", None) or {}
        if not isinstance(cell_evaluate, dict):
            raise ConfigError(f"{where}, evaluate: must be a mapping of options, got "
                              f"{cell_evaluate!r}; give e.g. {{episodes: 20}}")
        cell_eval = RLEvalConfig.from_dict(merge(layout.evaluate, cell_evaluate), where)
        paper = _check_paper(f"{where}, paper", override.pop("paper", None))
        try:
            config = DQNConfig.from_dict({**merge(layout.base, override),
                                          "out": str(layout.root / cell_id)})
        except ConfigError as exc:
            raise within(where, exc) from None
        except TypeError as exc:  # a value of the wrong type that DQNConfig compared
            raise ConfigError(f"{where}: {exc}; check the types of the cell's options") from None
        cells.append(RLCell(cell_id, config, cell_eval, paper=paper))
    return RLStudy(layout.name, layout.root, cells)


def load_any_study(path: str | Path, out: str | Path | None = None) -> Any:
    """An image or an RL study, whichever the file describes; ``path`` is a file or a
    shipped study's name (``demo``, ``kaf/fashion_mnist``: :mod:`robustact.study.shipped`)."""
    from robustact.study.shipped import study_file

    path = study_file(path)
    if is_rl_study_file(path):
        return load_rl_study(path, out)
    from robustact.study.config import load_study

    return load_study(path, out)
