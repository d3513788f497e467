"""Studies: cells (network x dataset x activation x training, or RL games), each trained, then
evaluated, recorded in the study's results store. ``robustact run configs/NAME.yaml``."""

from robustact.study.config import Cell, StudyConfig, load_study
from robustact.study.lifecycle import CellResult
from robustact.study.rl_config import load_any_study, load_rl_study
from robustact.study.runner import run_study

__all__ = ["Cell", "CellResult", "StudyConfig", "load_any_study", "load_rl_study", "load_study",
           "run_study"]
