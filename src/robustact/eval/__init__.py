"""Evaluation: accuracy now; robust accuracy, calibration and diagnostics in later modules."""

from robustact.eval.accuracy import evaluate_accuracy

__all__ = ["evaluate_accuracy"]
