"""Evaluation: clean accuracy, robust accuracy under attack suites, diagnostics, statistics."""

from robustact.eval.accuracy import evaluate_accuracy
from robustact.eval.calibration import (
    Reliability,
    calibrate,
    expected_calibration_error,
    predict_proba,
    reliability,
)
from robustact.eval.robustness import (
    AttackOutcome,
    AttackSpec,
    RobustnessReport,
    evaluate,
    predict,
)
from robustact.eval.stats import wilson_interval

__all__ = [
    "AttackOutcome", "AttackSpec", "RobustnessReport", "evaluate", "evaluate_accuracy",
    "predict", "wilson_interval",
    "Reliability", "calibrate", "expected_calibration_error", "predict_proba", "reliability",
]
