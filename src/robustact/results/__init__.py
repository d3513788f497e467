"""Results: every run, training history, robustness result and plot of a study in one SQLite
store, from which tables and reports are rendered (:mod:`robustact.report`)."""

from robustact.results.store import (
    EXPORT_COLUMNS,
    SCHEMA_VERSION,
    ResultsStore,
    StoreError,
    environment,
    format_eps,
    training_label,
)

__all__ = ["EXPORT_COLUMNS", "SCHEMA_VERSION", "ResultsStore", "StoreError", "environment",
           "format_eps", "training_label"]
