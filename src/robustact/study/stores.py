"""Finding a study's results store from what a user names: a study file, a folder or a .sqlite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustact.errors import ConfigError
from robustact.results import ResultsStore
from robustact.study.cells import store_path
from robustact.study.rl_config import load_any_study


def open_study_store(source: str, load: Any = None,
                command: str = "robustact run") -> tuple[Any, str, Any]:
    """(store, study name, study directory) from a YAML file, directory or .sqlite; ``load``
    reads a study YAML file (default: image or RL, whichever the file describes),
    ``command`` is the one that fills the store, for the error message."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml"):
        study = (load or load_any_study)(path)
        db, name, root = store_path(study), study.name, Path(study.out)
    elif path.is_dir():
        db, name, root = path / "results.sqlite", None, path
    else:
        db, name, root = path, None, path.parent
    if not db.is_file():
        raise ConfigError(f"no results store at {db}; run the study first ({command} ...)")
    store = ResultsStore(db)
    if name is None:
        studies = store.studies()
        if len(studies) != 1:
            raise ConfigError(f"{db} holds {len(studies)} studies ({', '.join(studies)}); "
                              "name the study's YAML file instead")
        name = studies[0]
    return store, name, root
