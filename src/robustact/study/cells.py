"""Which lifecycle implementation a study file's cell gets, and where its study's store is."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from robustact.study.lifecycle import CellWork


def store_path(study: Any) -> Path:
    """The study's results store: ``<out>/results.sqlite``."""
    return Path(study.out) / "results.sqlite"


def work_for(cell: Any) -> CellWork:
    """The lifecycle implementation of a study file's cell (image or RL)."""
    from robustact.study.config import Cell

    if isinstance(cell, Cell):
        from robustact.study.image_cell import ImageWork

        return ImageWork(cell)
    from robustact.study.rl_cell import RLWork

    return RLWork(cell)


def with_device(cell: Any, device: str) -> Any:
    """The cell with its training device replaced (one GPU per worker)."""
    return dataclasses.replace(cell, train=dataclasses.replace(cell.train, device=device))
