"""Results: every run, training history, robustness result and plot of a study in one store (a
SQLite file, or a PostgreSQL database for writers on many hosts), from which tables and reports
are rendered (:mod:`robustact.report`)."""

from robustact.results.store import (
    EXPORT_COLUMNS,
    SCHEMA_VERSION,
    ResultsStore,
    StoreError,
    environment,
    format_eps,
    training_label,
)
from robustact.results.url import StoreAddress, store_address

__all__ = ["EXPORT_COLUMNS", "SCHEMA_VERSION", "ResultsStore", "StoreAddress", "StoreError",
           "environment", "format_eps", "store_address", "training_label"]
