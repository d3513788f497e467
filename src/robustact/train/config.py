"""The training configuration: one flat dataclass, loadable from YAML, overridable by CLI flags.

Every value is checked when a configuration is built (its type and range by the pydantic
schemas of :mod:`robustact.train.schema`; names against the registries; the model against
the dataset's image size), so a bad value fails before any training starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustact.errors import ConfigError
from robustact.options import (
    OptionError,
    OptionsMixin,
    check_schema,
    from_options,
    load_config_file,
    parse_eps,
    short_hash,
)
from robustact.train.schema import AdversarialSchema, SparsitySchema, TrainSchema

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "step", "multistep", "cosine", "onecycle", "cyclic")
ADV_METHODS = ("fgsm", "pgd")


@dataclass
class SparsitySchedule:
    """Incremental k-WTA sparsity: ``start`` until ``begin_epoch``, then minus ``step`` every
    ``every`` epochs down to ``target``. The k-WTA paper: 0.2 -> 0.1 by 0.005 every 2 epochs."""

    start: float = 0.2
    target: float = 0.1
    step: float = 0.005
    every: int = 2
    begin_epoch: int = 0

    def __post_init__(self) -> None:
        check_schema(SparsitySchema, dataclasses.asdict(self), prefix="sparsity.")
        if self.target > self.start:
            raise ConfigError(
                f"sparsity target {self.target:g} is above start {self.start:g}; "
                "incremental sparsity lowers the ratio"
            )

    def ratio(self, epoch: int) -> float:
        """The k-WTA ratio used during ``epoch`` (0-based)."""
        steps = max(0, epoch - self.begin_epoch) // self.every
        # round: 0.2 - 3 * 0.005 must be 0.185, not 0.18499999999999997
        return round(max(self.target, self.start - steps * self.step), 10)


@dataclass
class AdversarialTraining:
    """Adversarial training: each batch (or a ``fraction`` of it) is replaced by adversarial
    examples crafted against the current model by an attack of :mod:`robustact.attacks`.

    ``method``:
      - ``"fgsm"``: fast adversarial training (Wong, Rice, Kolter 2020): uniform start in the
        eps-ball, one signed step of ``step_size`` (default 1.25 eps), projection to the ball
        and [0, 1] (``FGSM(random_start=True, step_size=1.25 * eps)``).
      - ``"pgd"``: Madry et al. PGD-AT: ``steps`` iterations (default 7) of ``step_size``
        (default 2.5 eps / steps) from a random start; the highest-loss iterate is used.
    ``fraction`` of each batch is adversarial (1.0 = all; SAP's ADV baseline uses 0.2, i.e.
    80% clean / 20% adversarial); the examples are crafted in training mode.

    Catastrophic-overfitting guard (``guard``): ``guard_size`` training images are held out of
    training; after each epoch PGD-``guard_steps`` accuracy on them is measured. When it falls
    more than ``guard_drop`` (absolute) below the best epoch's, training stops and the best
    epoch's weights are kept (the log says so), as Wong et al. do with early stopping.
    """

    method: str = "fgsm"
    eps: float = 8 / 255
    step_size: float | None = None
    steps: int = 7
    random_start: bool = True
    norm: str = "linf"
    loss: str = "ce"
    fraction: float = 1.0
    guard: bool = True
    guard_size: int = 512
    guard_steps: int = 10
    guard_drop: float = 0.2

    def __post_init__(self) -> None:
        if self.method not in ADV_METHODS:
            raise ConfigError(f"unknown adversarial training method {self.method!r}; "
                              "valid: fgsm (fast AT), pgd (Madry)")
        check_schema(AdversarialSchema, dataclasses.asdict(self), prefix="adversarial.")
        # one spelling of eps everywhere: a number or a fraction such as "8/255"
        self.eps = parse_eps(self.eps, key="adversarial.eps")
        if isinstance(self.step_size, str):
            self.step_size = parse_eps(self.step_size, key="adversarial.step_size")
        if self.eps == 0:
            raise OptionError("adversarial.eps", "must be > 0", "give e.g. 0.1 or 8/255")
        if self.step_size is not None and self.step_size <= 0:
            raise OptionError("adversarial.step_size", f"must be > 0, got {self.step_size}",
                              "give e.g. 0.01, or omit it for the method's default")

    def attack(self) -> Any:
        """The training attack, built from :mod:`robustact.attacks`."""
        from robustact.attacks import create_attack

        if self.method == "fgsm":
            step = 1.25 * self.eps if self.step_size is None else self.step_size
            return create_attack("fgsm", eps=self.eps, norm=self.norm, loss=self.loss,
                                 step_size=step, random_start=self.random_start)
        return create_attack("pgd", eps=self.eps, norm=self.norm, loss=self.loss,
                             steps=self.steps, step_size=self.step_size,
                             random_start=self.random_start)

    def guard_attack(self) -> Any:
        from robustact.attacks import create_attack

        return create_attack("pgd", eps=self.eps, norm=self.norm, steps=self.guard_steps,
                             step_size=2.5 * self.eps / self.guard_steps, random_start=True)


@dataclass
class TrainConfig(OptionsMixin):
    """Everything that defines a training run. Units: lr per step, epochs, pixels in [0, 1].
    :meth:`hash` covers what determines the trained weights (not where they are written)."""

    OPTIONS_WHAT = "training"
    UNHASHED = frozenset({"out", "progress", "device", "metrics_file", "data_dir"})

    # what to train
    model: str = "small_cnn"
    dataset: str = "fashion_mnist"
    activation: str = "relu"
    act_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. {"ratio": 0.2}
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # torchvision-format state-dict file (resnet18, alexnet)
    finetune_from: str | None = None  # a robustact checkpoint whose weights start this run
    # data
    data_dir: str | None = None
    batch_size: int = 128
    augment: bool = True
    resize: int | None = None  # e.g. 224 for ImageNet-shaped networks
    train_subset: int | None = None  # first n training images (quick runs)
    test_subset: int | None = None
    # optimisation
    epochs: int = 10
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "cosine"
    milestones: list[int] = field(default_factory=list)  # multistep: epochs where lr *= gamma
    step_size: int = 30  # step: lr *= gamma every step_size epochs
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    peak_at: float = 0.4  # onecycle: fraction of training at which lr peaks
    grad_clip: float | None = None  # max gradient norm
    amp: bool | None = None  # None: on for CUDA
    sparsity: SparsitySchedule | None = None
    adversarial: AdversarialTraining | None = None
    # bookkeeping
    seed: int = 0
    device: str = "auto"
    out: str = "runs/train"
    metrics_file: str = "metrics.jsonl"  # .jsonl or .csv
    progress: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.sparsity, dict):
            self.sparsity = from_options(SparsitySchedule, self.sparsity, "sparsity")
        for key, cls in (("sparsity", SparsitySchedule), ("adversarial", AdversarialTraining)):
            value = getattr(self, key)
            if value is not None and not isinstance(value, dict | cls):
                raise OptionError(key, f"must be a mapping of options, got {value!r}",
                                  f"give e.g. {SECTION_EXAMPLES[key]}")
        if isinstance(self.adversarial, dict):
            self.adversarial = from_options(AdversarialTraining, self.adversarial, "adversarial")
        if self.schedule == "cyclic":  # fast AT's name for the same triangle
            self.schedule = "onecycle"
        self.validate()

    def validate(self) -> None:
        """Check every option: names, then types and ranges (the schema), then how the
        options fit together."""
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; valid names: sgd, adam")
        if self.schedule not in SCHEDULES:
            raise ConfigError(
                f"unknown schedule {self.schedule!r}; valid names: {', '.join(SCHEDULES)}"
            )
        flat = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        check_schema(TrainSchema, flat)
        if Path(self.metrics_file).suffix not in (".jsonl", ".csv"):
            raise ConfigError(f"metrics_file must end in .jsonl or .csv, got "
                              f"{self.metrics_file}; give e.g. metrics.jsonl")
        if self.sparsity is not None and self.activation != "kwta":
            raise ConfigError("a sparsity schedule needs activation 'kwta'")
        check_names(self.model, self.dataset, self.activation)
        check_input_size(self.model, self.dataset, self.resize)


SECTION_EXAMPLES = {"sparsity": "sparsity: {start: 0.2, target: 0.1}",
                    "adversarial": "adversarial: {method: fgsm, eps: 0.1}"}
#: the smallest image side a model's layers accept (AlexNet: 11x11 stride-4 stem, 3 poolings)
MIN_SIDE = {"alexnet": 63}


def check_names(model: str, dataset: str, activation: str) -> None:
    """One-line errors (listing the valid names) for an unknown model, dataset or
    activation, before anything is trained."""
    import robustact.defenses  # noqa: F401 - registers the "sap" activation
    from robustact.activations import ACTIVATIONS
    from robustact.data import dataset_info
    from robustact.models import MODELS

    MODELS.get(model)
    dataset_info(dataset)
    ACTIVATIONS.get(activation)


def check_input_size(model: str, dataset: str, resize: int | None) -> None:
    """A model whose layers need larger images than the dataset's (AlexNet on 32x32 SVHN) is
    a one-line error that says to resize."""
    from robustact.data import dataset_info

    side = resize or min(dataset_info(dataset).image_size)
    need = MIN_SIDE.get(model)
    if need is not None and side < need:
        raise ConfigError(f"model {model} needs images of at least {need}x{need} pixels, "
                          f"{dataset}'s are {side}x{side}; add --resize 224 (resize: 224 in a "
                          "config file)")


__all__ = ["ADV_METHODS", "OPTIMIZERS", "SCHEDULES", "AdversarialTraining", "SparsitySchedule",
           "TrainConfig", "from_options", "load_config_file", "short_hash"]
