"""The one training loop, its configuration, schedules and checkpoints."""

from robustact.train.checkpoint import build_model, load_checkpoint, load_model, save_atomic
from robustact.train.config import SparsitySchedule, TrainConfig, load_config_file
from robustact.train.loop import TrainResult, train
from robustact.train.schedules import lr_at

__all__ = [
    "SparsitySchedule", "TrainConfig", "TrainResult", "build_model", "load_checkpoint",
    "load_config_file", "load_model", "lr_at", "save_atomic", "train",
]
