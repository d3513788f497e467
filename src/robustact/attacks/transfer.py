"""Transfer attack: adversarial examples crafted on a surrogate model, judged on the target.

A defense whose robustness comes from masked gradients often falls to examples crafted on an
ordinary model (the k-WTA paper transferred from a ReLU ResNet18). A transfer attack beating a
white-box attack on the same target is one of the "indicators of attack failure".
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from robustact.attacks.base import Attack, AttackResult, check_inputs, model_device
from robustact.attacks.registry import ATTACKS
from robustact.errors import ConfigError


@ATTACKS.register()
class Transfer(Attack):
    """Run a white-box ``attack`` on ``surrogate`` and return its examples for the target.

    Args:
        surrogate: the model the examples are crafted on (images in [0, 1], logits out). At
            call time it is moved to the target's device and attacked in eval mode (its mode
            is restored afterwards; it stays on that device).
        attack: the inner attack, e.g. ``PGD(eps=8/255, steps=40)``; its seed makes the
            transfer reproducible.
        eps: must equal the inner attack's eps (the base projects onto this ball).
        norm: must equal the inner attack's norm (default: the inner attack's).
        surrogate_name: a label for the surrogate stored with the results (e.g. "relu_resnet18").

    The target is queried once per example (the base's final judgement) and its gradients are
    never read: ``gradient_free`` is True. The inner attack's result on the surrogate of the
    last call is kept as ``last_surrogate_result`` (its success is the white-box success on the
    surrogate, useful to tell a failed transfer from a failed crafting).
    """

    name = "transfer"
    gradient_free = True

    def __init__(
        self, *, surrogate: nn.Module, attack: Attack, eps: float, norm: str | None = None,
        surrogate_name: str | None = None, batch_size: int = 256, seed: int | None = 0,
    ) -> None:
        if not isinstance(attack, Attack):
            raise ConfigError(f"{self.name}: attack must be an Attack instance, got "
                              f"{type(attack).__name__}")
        super().__init__(eps=eps, norm=attack.norm if norm is None else norm,
                         batch_size=batch_size, seed=seed)
        if not isinstance(surrogate, nn.Module):
            raise ConfigError(f"{self.name}: surrogate must be a torch nn.Module, got "
                              f"{type(surrogate).__name__}")
        if not math.isclose(attack.eps, self.eps, rel_tol=1e-9, abs_tol=1e-12):
            raise ConfigError(f"{self.name}: the inner attack's eps {attack.eps!r} differs from "
                              f"the transfer eps {self.eps!r}")
        if attack.norm != self.norm:
            raise ConfigError(f"{self.name}: the inner attack's norm {attack.norm!r} differs "
                              f"from the transfer norm {self.norm!r}")
        if surrogate_name is not None and not isinstance(surrogate_name, str):
            raise ConfigError(f"{self.name}: surrogate_name must be a string, got "
                              f"{surrogate_name!r}")
        self.surrogate = surrogate
        self.attack = attack
        self.surrogate_name = surrogate_name
        self.last_surrogate_result: AttackResult | None = None
        self._crafted: torch.Tensor | None = None
        self._offset = 0

    def hyperparameters(self) -> dict[str, Any]:
        return {**super().hyperparameters(), "inner_attack": self.attack.name,
                "inner_params": self.attack.hyperparameters(),
                "surrogate": type(self.surrogate).__name__,
                "surrogate_name": self.surrogate_name}

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AttackResult:
        check_inputs(self.name, x, y)
        device = model_device(model)
        was_training = self.surrogate.training
        self.surrogate.to(device).eval()
        try:
            # crafted on all of x at once, so the inner attack batches and seeds exactly as if
            # it were run on the surrogate directly
            self.last_surrogate_result = self.attack(self.surrogate, x.to(device), y.to(device))
        finally:
            self.surrogate.train(was_training)
        self._crafted, self._offset = self.last_surrogate_result.x_adv, 0
        try:
            return super().__call__(model, x, y)
        finally:
            self._crafted = None

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The crafted examples of this batch; the target is not queried here."""
        if self._crafted is None:
            raise ConfigError(f"{self.name}: call the attack as attack(model, x, y)")
        adv = self._crafted[self._offset:self._offset + x.shape[0]]
        self._offset += x.shape[0]
        return adv.to(x.device)
