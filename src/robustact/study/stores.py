"""Finding a study's results store from what a user names: a study file, a folder or a .sqlite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustact.errors import ConfigError
from robustact.results import ResultsStore


def open_study_store(source: str, load: Any = None,
                command: str = "robustact run") -> tuple[Any, str, Any]:
    """(store, study name, study directory) from a YAML file, directory or .sqlite; ``load``
    reads a study YAML file (default the image studies' ``load_study``; the RL commands pass
    theirs), ``command`` is the one that fills the store, for the error message."""
    path = Path(source)
    if path.suffix in (".yaml", ".yml"):
        if load is None:
            from robustact.study.rl_config import is_rl_study_file

            if is_rl_study_file(path):
                from robustact.study.rl_config import load_rl_study as load
            else:
                from robustact.study import load_study as load
        study = load(path)
        db, name, root = study.out / "results.sqlite", study.name, study.out
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
