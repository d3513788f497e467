"""The typed schema of the training options: each value's type and range, checked by pydantic.

:class:`robustact.train.config.TrainConfig` (and its ``sparsity`` / ``adversarial`` parts)
checks its values against these schemas whenever one is built: from a YAML file, a study
cell, command-line flags or the Python API. A count of 0 is an error, never "all".
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from robustact.options import Schema

Eps = float | str  # a number or a fraction such as "8/255" (robustact.options.parse_eps)


class SparsitySchema(Schema):
    """Incremental k-WTA sparsity (:class:`robustact.train.config.SparsitySchedule`)."""

    start: float = Field(0.2, gt=0, le=1, description="give a k-WTA ratio in (0, 1], e.g. 0.2")
    target: float = Field(0.1, gt=0, le=1, description="give a k-WTA ratio in (0, 1], e.g. 0.1")
    step: float = Field(0.005, gt=0, description="give the decrement per step, e.g. 0.005")
    every: int = Field(2, ge=1, description="give the epochs between steps, e.g. 2")
    begin_epoch: int = Field(0, ge=0, description="give the epoch the decrease starts, e.g. 0")


class AdversarialSchema(Schema):
    """Adversarial training (:class:`robustact.train.config.AdversarialTraining`)."""

    method: Literal["fgsm", "pgd"] = Field(
        "fgsm", description="give fgsm (fast AT) or pgd (Madry PGD-AT)")
    eps: Eps = Field(8 / 255, description="give a radius in (0, 1], e.g. 0.1 or 8/255")
    step_size: Eps | None = Field(None, description="give a step > 0, e.g. 0.01, or omit it")
    steps: int = Field(7, ge=1, description="give the number of PGD iterations, e.g. 7")
    random_start: bool = Field(True, description="give true or false")
    norm: Literal["linf", "l2", "l1"] = Field("linf", description="give linf, l2 or l1")
    loss: str = Field("ce", description="give a loss name, e.g. ce")
    fraction: float = Field(1.0, gt=0, le=1,
                            description="give the adversarial share of a batch in (0, 1]")
    guard: bool = Field(True, description="give true or false")
    guard_size: int = Field(512, ge=1, description="give a number of held-out images, e.g. 512")
    guard_steps: int = Field(10, ge=1, description="give a number of PGD steps, e.g. 10")
    guard_drop: float = Field(0.2, gt=0, le=1, description="give an accuracy drop in (0, 1]")


class TrainSchema(Schema):
    """The flat training options (:class:`robustact.train.config.TrainConfig`); ``sparsity``
    and ``adversarial`` are checked by their own schemas."""

    model: str = Field("small_cnn", description="give a model name (robustact list models)")
    dataset: str = Field("fashion_mnist",
                         description="give a dataset name (robustact list datasets)")
    activation: str = Field("relu",
                            description="give an activation name (robustact list activations)")
    act_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="give a mapping of activation arguments, e.g. "
        "act_kwargs: {ratio: 0.2}")
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="give a mapping of model arguments, e.g. "
        "model_kwargs: {stem: imagenet}")
    pretrained: str | None = Field(None, description="give the path of a weights file")
    finetune_from: str | None = Field(None, description="give the path of a checkpoint")
    data_dir: str | None = Field(None, description="give a folder")
    batch_size: int = Field(128, ge=1, description="give the images per batch, e.g. 128")
    augment: bool = Field(True, description="give true or false")
    resize: int | None = Field(None, ge=1, description="give a side in pixels, e.g. 224")
    train_subset: int | None = Field(
        None, ge=1, description="give a number of training images, e.g. 1000, or omit it to "
        "use all")
    test_subset: int | None = Field(
        None, ge=1, description="give a number of test images, e.g. 1000, or omit it to use all")
    epochs: int = Field(10, ge=1, description="give the number of epochs, e.g. 10")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="give sgd or adam")
    lr: float = Field(0.1, gt=0, description="give a learning rate > 0, e.g. 0.1")
    momentum: float = Field(0.9, ge=0, lt=1, description="give a momentum in [0, 1), e.g. 0.9")
    weight_decay: float = Field(5e-4, ge=0, description="give a weight decay >= 0, e.g. 5e-4")
    nesterov: bool = Field(False, description="give true or false")
    schedule: Literal["constant", "step", "multistep", "cosine", "onecycle", "cyclic"] = Field(
        "cosine", description="give constant, step, multistep, cosine, onecycle or cyclic")
    milestones: list[int] = Field(default_factory=list,
                                  description="give a list of epochs, e.g. [50, 70]")
    step_size: int = Field(30, ge=1, description="give the epochs between lr steps, e.g. 30")
    gamma: float = Field(0.1, gt=0, le=1,
                         description="give the lr factor of a step schedule in (0, 1], e.g. 0.1")
    warmup_epochs: float = Field(0.0, ge=0, description="give warm-up epochs >= 0, e.g. 1")
    peak_at: float = Field(0.4, gt=0, lt=1, description="give a fraction in (0, 1), e.g. 0.4")
    grad_clip: float | None = Field(None, gt=0, description="give a gradient norm > 0, e.g. 1")
    amp: bool | None = Field(None, description="give true, false or omit it")
    sparsity: Any = None  # SparsitySchema
    adversarial: Any = None  # AdversarialSchema
    seed: int = Field(0, ge=0, description="give a seed >= 0, e.g. 0")
    device: str = Field("auto", description="give auto, cpu, cuda, cuda:1 or mps")
    out: str = Field("runs/train", description="give an output folder")
    metrics_file: str = Field("metrics.jsonl", description="give a name ending in .jsonl or .csv")
    progress: bool = Field(True, description="give true or false")

