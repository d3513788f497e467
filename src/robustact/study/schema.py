"""The typed schema of an RL study's ``evaluate:`` block, checked by pydantic.

:class:`robustact.study.rl_config.RLEvalConfig` checks its values against
:class:`RLEvalSchema` (FGSM lambdas are then parsed by ``robustact.options.parse_eps``).
"""

from __future__ import annotations

from pydantic import Field

from robustact.options import Schema


class RLEvalSchema(Schema):
    """How an RL cell's agents are evaluated."""

    eps: list[float | str] | float | str = Field(
        [0.0], description="give FGSM lambdas on the [0, 1] scale, e.g. eps: [0, 1/255, 4/255]")
    episodes: int = Field(10, ge=1, description="give the episodes per agent, e.g. 20")
    sap_frac: float | None = Field(
        1.0, gt=0, le=1, description="give SAP draws as a fraction of each map in (0, 1], e.g. "
        "1.0, or null for the dense agent only")
    samples: int = Field(100, ge=1, description="give the passes averaged for the SAP agent, "
                         "e.g. 100")
    mc_samples: int | None = Field(None, ge=1, description="give the passes averaged for the "
                                   "attack's gradient, e.g. 100, or omit it")
    seed: int = Field(10_000, ge=0, description="give a seed >= 0, e.g. 10000")
    epsilon: float = Field(0.0, ge=0, le=1, description="give a random-action rate in [0, 1]")
    max_frames: int = Field(10_000, ge=1, description="give the longest episode, e.g. 10000")
