"""The typed schemas of evaluation options and attack-spec options, checked by pydantic.

:class:`robustact.eval.config.EvalConfig` checks an ``evaluate:`` block (or the flags of
``robustact attack``) against :class:`EvalSchema`; :class:`robustact.eval.spec.AttackSpec`
checks an attack's options against :class:`SpecSchema` before the attack's own checks.
A count of 0 is an error, never "all".
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from robustact.options import Schema


class CalibrationSchema(Schema):
    """The reliability diagrams of an evaluation (``calibration: {n: 1000, bins: 15}``)."""

    n: int | None = Field(None, ge=1, description="give the test points, e.g. n: 1000")
    bins: int = Field(15, ge=1, description="give the calibration bins, e.g. bins: 15")


class LandscapeSchema(Schema):
    """The loss landscape of an evaluation (``landscape: {n: 32, steps: 21, eps: 0.1}``)."""

    n: int = Field(32, ge=1, description="give the test points, e.g. n: 32")
    steps: int = Field(21, ge=2, description="give the grid points per axis, e.g. steps: 21")
    eps: float | str | None = Field(None, description="give the radius, e.g. eps: 0.1")


class EvalSchema(Schema):
    """An ``evaluate:`` block (eps values are parsed by ``robustact.options.parse_eps``)."""

    eps: list[float | str] | float | str = Field(
        description="give a list of radii on the [0, 1] scale, e.g. eps: [0.1, 8/255]")
    n: int = Field(1000, ge=1, description="give the number of test points, e.g. n: 1000")
    suite: str | None = Field(
        None, description="give adaptive, autoattack, autoattack-rand or none")
    attacks: list[str | dict[str, Any]] | None = Field(
        None, description="give a list of attack specs, e.g. attacks: [fgsm, 'pgd:steps=40']")
    split: Literal["train", "test"] = Field("test", description="give train or test")
    norm: Literal["linf", "l2", "l1"] | None = Field(None, description="give linf, l2 or l1")
    samples: int | None = Field(
        None, ge=1, description="give the forward passes per prediction, e.g. samples: 10, or "
        "omit it")
    independent: bool = Field(False, description="give true or false")
    diagnose: bool = Field(True, description="give true or false")
    probe_size: int = Field(200, ge=1,
                            description="give the examples the diagnostics use, e.g. 200")
    calibration: CalibrationSchema | bool | None = Field(
        None, description="give true or a mapping, e.g. calibration: {n: 1000, bins: 15}")
    landscape: LandscapeSchema | bool | None = Field(
        None, description="give true or a mapping, e.g. landscape: {n: 32, steps: 21}")
    seed: int = Field(0, ge=0, description="give a seed >= 0, e.g. 0")
    block: int = Field(256, ge=1, description="give the points per block, e.g. 256")


class SpecSchema(Schema):
    """The options an attack spec may carry besides the attack's own hyperparameters, and the
    ranges of the hyperparameters several attacks share (each attack checks the rest)."""

    model_config = Schema.model_config | {"extra": "allow"}

    eot: int | None = Field(None, ge=1, description="give the samples averaged per gradient, "
                            "e.g. eot=32, or omit it")
    bpda: bool = Field(False, description="give bpda=true or bpda=false")
    label: str | None = Field(None, description="give a name for the table, e.g. label=pgd40")
    group: Literal["suite", "budgeted", "paper"] | None = Field(
        None, description="give suite, budgeted or paper")
    steps: Annotated[int, Field(ge=1)] | Literal["ceil"] | None = Field(
        None, description="give the iterations, e.g. steps=40")
    step_size: float | None = Field(None, gt=0, description="give a step > 0 on the [0, 1] "
                                    "scale, e.g. step_size=0.01, or omit it")
    rel_step: float | None = Field(None, gt=0, description="give a step relative to eps > 0, "
                                   "e.g. rel_step=0.1")
    restarts: int | None = Field(None, ge=1, description="give the random restarts, e.g. 5")
    targeted: bool | None = Field(None, description="give targeted=true or targeted=false")
    n_target_classes: int | None = Field(None, ge=1, description="give a count, e.g. 9")
    random_start: bool | None = Field(None, description="give true or false")
    batch_size: int | None = Field(None, ge=1, description="give a batch size, e.g. 256")
    seed: int | None = Field(None, ge=0, description="give a seed >= 0")
    norm: Literal["linf", "l2", "l1"] | None = Field(None, description="give linf, l2 or l1")


class CleanEvalSchema(Schema):
    """Clean accuracy, loss and ECE of a checkpoint (``robustact eval``)."""

    n: int | None = Field(None, ge=1, description="give the number of test points, e.g. 1000, "
                          "or omit it for the whole split")
    batch_size: int = Field(256, ge=1, description="give the images per batch, e.g. 256")
    samples: int = Field(1, ge=1, description="give the forward passes averaged, e.g. 10")
    bins: int = Field(15, ge=1, description="give the calibration bins, e.g. 15")
    sap: float | None = Field(None, gt=0, le=1, description="give the SAP draws as a "
                              "fraction of each map in (0, 1], e.g. 1.0")
