"""The study file: shared training options, the cells that vary them, one evaluation suite.

.. code-block:: yaml

    name: kaf_fmnist
    out: runs/kaf_fmnist            # each cell trains into out/<cell id>
    train:                          # TrainConfig options shared by every cell
      model: small_cnn
      dataset: fashion_mnist
      adversarial: {method: fgsm, eps: 0.1}
    grid:                           # the cartesian product of these options ...
      activation: [relu, swish, kaf, kaf_relu]
    cells:                          # ... and/or explicit cells (an id and option overrides)
      - {id: kwta01, activation: kwta, act_kwargs: {ratio: 0.1}}
      - id: kwta01_inc              # fine-tuned from another cell's checkpoint
        finetune_from: cell:kwta02
        sparsity: {start: 0.2, target: 0.1}
      - id: relu_sap                # a post-hoc defense on a trained network: the training
        posthoc: {defense: sap, frac: 1.0}   # options equal relu's, so relu's run is reused
        evaluate: {samples: 10}     # per-cell evaluation overrides
    evaluate:
      eps: [0.1]
      n: 1000
      suite: adaptive               # the default; autoattack, autoattack-rand or none
      attacks: ["pgd:steps=50", deepfool]   # paper-style, each on every point, beside it

Nested options (``act_kwargs``, ``adversarial``, ...) of a cell are merged into the shared
ones key by key. A grid cell's id joins its values (``relu``, ``kaf_relu-0.1``). Cells whose
training options are the same (same configuration hash) share one training run, in the
directory of the first of them. ``finetune_from: cell:ID`` starts from cell ID's checkpoint
(that cell runs first). ``posthoc`` applies a defense of :mod:`robustact.defenses` (``sap``,
``dro``, ``rnw``, ...) to the trained network before evaluation. ``external: {factory:
pkg.mod:fn, args: {...}, weights: FILE, normalize: cifar10}`` evaluates a user's network (or a
RobustBench file: ``factory: wrn28_10``) instead of training one. ``paper:`` holds the
published numbers the report prints beside the cell's.

:func:`load_study` checks every cell (training and evaluation options, attack specs) when the
file is read, before any training starts; an error names the file, the cell and the key:
``s.yaml, cell relu, evaluate.n: must be >= 1, got 0; give the number of test points, ...``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from robustact.errors import ConfigError, RobustactError
from robustact.eval.config import DEFAULT_SUITE, EvalConfig
from robustact.options import load_config_file, short_hash, within
from robustact.train.config import TrainConfig


class _HasId(Protocol):
    id: str


_C = TypeVar("_C", bound=_HasId)

CELL_KEYS = {"posthoc", "evaluate", "paper", "external"}  # cell options that are not training ones


@dataclass
class Cell:
    """One cell: its training options, where its checkpoint lives (``train_dir``: its own
    directory, or the one of the earlier cell it shares training with), the cells it needs
    first, an optional post-hoc defense and its evaluation settings."""

    id: str
    train: TrainConfig
    train_dir: Path | None = None
    needs: list[str] = field(default_factory=list)
    posthoc: dict[str, Any] | None = None
    evaluate: EvalConfig | None = None
    paper: dict[str, Any] | None = None  # the paper's numbers for this cell (report only)
    external: Any = None  # a robustact.models.external.ModelSpec: evaluated, never trained

    def __post_init__(self) -> None:
        if self.train_dir is None:
            self.train_dir = Path(self.train.out)

    @property
    def out(self) -> Path:
        """The cell's own directory (evaluation exports, error log)."""
        return Path(self.train.out)

    def evaluate_hash(self) -> str | None:
        """The identity of the cell's evaluation: its settings, the trained weights and the
        post-hoc defense; None when the cell is not evaluated."""
        if self.evaluate is None:
            return None
        return short_hash({"train": self.train_hash(), "evaluate": self.evaluate.to_dict(),
                           "posthoc": self.posthoc})

    def train_hash(self) -> str:
        """The identity of the cell's network: its training options, or the user's model
        (factory, arguments, normalization, the weights file's path, size and time)."""
        if self.external is None:
            return self.train.hash()
        return short_hash({"external": self.external.to_dict(),
                           "weights": self.external.weights_stamp()})

    def legacy_evaluate_hash(self) -> str | None:
        """The identity the study runner gave the same evaluation before robustact 0.2, so
        that study folders made then still list their finished cells as done."""
        if self.evaluate is None:
            return None
        given = dict(self.evaluate.given)
        suite = given.get("suite", DEFAULT_SUITE)
        given["suite"] = suite if str(suite).lower() == "none" else self.evaluate.suite
        payload: dict[str, Any] = {"train": self.train.hash(), "evaluate": given}
        if self.posthoc:
            payload["posthoc"] = self.posthoc
        return short_hash(payload)


@dataclass
class StudyConfig:
    name: str
    out: Path
    cells: list[Cell]
    evaluate: EvalConfig | None = None
    store: str | None = None  # a results store path or URL (None: <out>/results.sqlite)

    def cell(self, cell_id: str) -> Cell:
        return find_cell(self.name, self.cells, cell_id)


def find_cell(study: str, cells: Sequence[_C], cell_id: str) -> _C:
    """The cell ``cell_id`` of a study's ``cells`` (anything with an ``id``), or a one-line
    error listing the study's cells."""
    for cell in cells:
        if cell.id == cell_id:
            return cell
    raise ConfigError(f"study {study} has no cell {cell_id!r}; cells: "
                      f"{', '.join(c.id for c in cells)}")


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``; dict values are merged recursively."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _id_part(value: Any) -> str:
    if isinstance(value, dict):
        return "-".join(_id_part(v) for v in value.values())
    return str(value).replace("/", "_").replace(" ", "")


@dataclass
class StudyLayout:
    """What every study file shares, checked: its name, output root, base options, the cells
    (id, overrides) expanded from the grid and the cells list, and the raw evaluate block."""

    name: str
    root: Path
    base: dict[str, Any]
    cells: list[tuple[str, dict[str, Any]]]
    evaluate: dict[str, Any]


def read_study_layout(path: str | Path, out: str | Path | None, *, default_root: str,
                      example: str = "") -> StudyLayout:
    """Read a study file (image or RL): the keys name, out, train, grid, cells, evaluate; the
    grid's cross product and the listed cells as (id, overrides), ids unique. ``default_root``
    is the output folder's parent when the file gives no ``out``."""
    data = load_config_file(path)
    unknown = sorted(set(data) - {"name", "out", "train", "grid", "cells", "evaluate"})
    if unknown:
        raise ConfigError(f"{path}: unknown study key(s) {', '.join(unknown)}; valid: name, "
                          "out, train, grid, cells, evaluate")
    _check_layout_types(path, data)
    name = str(data.get("name") or Path(path).stem)
    root = Path(out or data.get("out") or f"{default_root}/{name}")
    base = data.get("train") or {}
    overrides: list[tuple[str, dict[str, Any]]] = []
    grid = data.get("grid") or {}
    if grid:
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            cell_id = "-".join(_id_part(v) for v in values)
            overrides.append((cell_id, dict(zip(keys, values, strict=True))))
    for entry in data.get("cells") or []:
        if not isinstance(entry, dict) or not entry.get("id"):
            raise ConfigError(f"{path}: every entry of cells needs an id, got {entry!r}; give "
                              "e.g. cells: [{id: relu, activation: relu}]")
        entry = dict(entry)
        overrides.append((str(entry.pop("id")), entry))
    if not overrides:
        raise ConfigError(f"{path}: a study needs a grid or a list of cells{example}")
    ids = [cell_id for cell_id, _ in overrides]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ConfigError(f"{path}: duplicate cell id(s) {', '.join(duplicates)}")
    return StudyLayout(name, root, base, overrides, dict(data.get("evaluate") or {}))


def _check_layout_types(path: str | Path, data: dict[str, Any]) -> None:
    """One-line errors for study keys of the wrong type (before any cell is read)."""
    for key in ("name", "out"):
        if data.get(key) is not None and not isinstance(data[key], str | int):
            raise ConfigError(f"{path}, {key}: must be a text, got {data[key]!r}; give e.g. "
                              f"{key}: my_study")
    for key, example in (("train", "train: {model: small_cnn, epochs: 10}"),
                         ("evaluate", "evaluate: {eps: [0.1], n: 1000}")):
        if data.get(key) is not None and not isinstance(data[key], dict):
            raise ConfigError(f"{path}, {key}: must be a mapping of options, got "
                              f"{data[key]!r}; give e.g. {example}")
    grid = data.get("grid")
    if grid is not None and (not isinstance(grid, dict)
                             or not all(isinstance(v, list) and v for v in grid.values())):
        raise ConfigError(f"{path}, grid: must map option names to non-empty lists, got "
                          f"{grid!r}; give e.g. grid: {{activation: [relu, kwta]}}")
    if data.get("cells") is not None and not isinstance(data["cells"], list):
        raise ConfigError(f"{path}, cells: must be a list, got {data['cells']!r}; give e.g. "
                          "cells: [{id: relu, activation: relu}]")


def load_study(path: str | Path, out: str | Path | None = None) -> StudyConfig:
    """Read and check a study file; every cell's training options are validated now."""
    layout = read_study_layout(path, out, default_root="runs")
    name, root, base, overrides = layout.name, layout.root, layout.base, layout.cells
    evaluate = _check_evaluate(path, layout.evaluate)
    cells: list[Cell] = []
    owners: dict[str, Cell] = {}  # training hash -> the first cell with it
    for cell_id, override in overrides:
        extra = {k: override.pop(k) for k in CELL_KEYS & set(override)}
        options = merge(base, override)
        options["out"] = str(root / cell_id)
        needs = []
        source = options.get("finetune_from")
        if isinstance(source, str) and source.startswith("cell:"):
            ref = next((c for c in cells if c.id == source.removeprefix("cell:")), None)
            if ref is None:
                raise ConfigError(f"{path}, cell {cell_id}: finetune_from {source} must name "
                                  "a cell listed before it")
            options["finetune_from"] = str(ref.train_dir / "checkpoint.pt")
            needs.append(ref.id)
        try:
            config = TrainConfig.from_dict(options)
        except ConfigError as exc:
            raise within(f"{path}, cell {cell_id}", exc) from None
        posthoc = extra.get("posthoc")
        if posthoc is not None and (not isinstance(posthoc, dict) or "defense" not in posthoc):
            raise ConfigError(f"{path}, cell {cell_id}, posthoc: must be a mapping with a "
                              f"defense, got {posthoc!r}; give e.g. {{defense: sap, frac: 1.0}}")
        if posthoc is not None:
            _check_posthoc(f"{path}, cell {cell_id}, posthoc", posthoc)
        cell_evaluate = extra.get("evaluate") or {}
        if not isinstance(cell_evaluate, dict):
            raise ConfigError(f"{path}, cell {cell_id}, evaluate: must be a mapping of "
                              f"options, got {cell_evaluate!r}; give e.g. {{samples: 10}}")
        cell_eval = _check_evaluate(f"{path}, cell {cell_id}",
                                    merge(layout.evaluate, cell_evaluate))
        paper = _check_paper(f"{path}, cell {cell_id}, paper", extra.get("paper"), cell_eval)
        external = _check_external(f"{path}, cell {cell_id}, external", extra.get("external"),
                                   config)
        owner = owners.get(config.hash()) if external is None else None
        cell = Cell(cell_id, config, needs=needs, posthoc=posthoc, evaluate=cell_eval,
                    paper=paper, external=external)
        if owner is not None:
            cell.train_dir = owner.train_dir
            cell.needs.append(owner.id)
        elif external is None:  # an external cell trains nothing and shares no run
            owners[config.hash()] = cell
        cells.append(cell)
    return StudyConfig(name, root, cells, evaluate)


def _check_evaluate(where: str | Path, evaluate: dict[str, Any]) -> EvalConfig | None:
    """The typed evaluation settings of an ``evaluate:`` block, or None without one."""
    return EvalConfig.from_dict(evaluate, str(where), prefix="evaluate.") if evaluate else None


def _check_posthoc(where: str, posthoc: dict[str, Any]) -> None:
    """The defense's name, parameters and values, checked as the file is read."""
    from robustact.defenses import check_defense

    params = {k: v for k, v in posthoc.items() if k != "defense"}
    try:
        check_defense(str(posthoc["defense"]), params)
    except (ConfigError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {str(exc).splitlines()[0]}; robustact list defenses "
                          "shows each defense's parameters") from None


def _check_external(where: str, block: Any, config: TrainConfig) -> Any:
    """A cell's ``external:`` block: a user's model evaluated as given, never trained
    (:class:`robustact.models.external.ModelSpec`; its dataset and resize default to the
    cell's ``dataset`` and ``resize``)."""
    if block is None:
        return None
    from robustact.models.external import ModelSpec, check_spec

    if not isinstance(block, dict):
        raise ConfigError(f"{where}: must be a mapping, got {block!r}; give e.g. external: "
                          "{factory: mynets.cifar:resnet20, weights: resnet20.pt}")
    block = {"dataset": config.dataset, "resize": config.resize, **block}
    spec = ModelSpec.from_dict(block, where)
    try:
        check_spec(spec)  # before any cell runs: the factory imports, the weights exist
    except RobustactError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return spec


def _check_paper(where: str, paper: Any, evaluate: EvalConfig | None = None
                 ) -> dict[str, Any] | None:
    """A cell's ``paper:`` block (the published numbers the report prints beside ours):
    ``{source: "Table 6", clean: 93.66, pgd_paper: 25.23}``; an attack's value may map eps to
    numbers (``fgsm: {1/255: 66.3, 2/255: 56.4}``; a single number stands for the evaluation's
    only eps). Numbers are percentages; eps keys come back as floats. With the cell's
    ``evaluate``, each key must be ``clean``, ``worst_case`` or one of its attack labels, and
    each eps one of its eps."""
    from robustact.eval.spec import AttackSpec
    from robustact.options import parse_eps

    if paper is None:
        return None
    example = "give e.g. paper: {source: Table 6, clean: 93.66, pgd: {8/255: 25.23}}"
    if not isinstance(paper, dict):
        raise ConfigError(f"{where}: must be a mapping, got {paper!r}; {example}")

    def percent(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 100:
            raise ConfigError(f"{where}.{key}: must be a percentage in [0, 100] (or a mapping "
                              f"of eps to percentages), got {value!r}; {example}")
        return float(value)

    labels = None
    if evaluate is not None:
        labels = {"clean", "worst_case", *(AttackSpec.parse(a).label for a in evaluate.attacks)}
    out: dict[str, Any] = {}
    for key, value in paper.items():
        if key == "source":
            if not isinstance(value, str):
                raise ConfigError(f"{where}.source: must be a text, got {value!r}; {example}")
            out[key] = value
            continue
        if labels is not None and key not in labels:
            raise ConfigError(f"{where}.{key}: not an attack label of the cell's evaluation; "
                              f"valid: {', '.join(sorted(labels))}")
        if not isinstance(value, dict) or key == "clean":
            out[key] = percent(str(key), value)
            continue
        out[key] = {}
        for eps, number in value.items():
            at = parse_eps(eps, what=f"{where}.{key} eps")
            if evaluate is not None and not any(abs(at - e) < 1e-9 for e in evaluate.eps):
                raise ConfigError(f"{where}.{key}: eps {eps} is not evaluated; the cell's eps: "
                                  f"{', '.join(f'{e:g}' for e in evaluate.eps)}")
            out[key][at] = percent(f"{key}.{eps}", number)
    return out
