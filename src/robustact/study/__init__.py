"""Studies: a grid of cells (network x dataset x activation x training), each trained and then
evaluated under one attack suite, with a results table. ``robustact run configs/NAME.yaml``."""

from robustact.study.config import Cell, StudyConfig, load_study
from robustact.study.runner import CellResult, results_table, run_study

__all__ = ["Cell", "CellResult", "StudyConfig", "load_study", "results_table", "run_study"]
