"""Finding a study's results store: its own SQLite file, or the store URL given with ``--store``.

    study = with_store(load_any_study("configs/demo.yaml"), "postgresql://me@db:5432/studies")
    store = study_store(study)             # opened (its tables made) for the study's cells
    store = existing_study_store(study)    # None while a SQLite store has not been written
    store, name, root = open_study_store("runs/demo", store="postgresql://...")  # results, report

A study's store is ``<study out>/results.sqlite`` unless it carries a store URL (see
:mod:`robustact.results.url`); the study object carries it, so that worker processes and cluster
jobs, which receive the study, write to the same store.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from robustact.errors import ConfigError
from robustact.results import ResultsStore, store_address
from robustact.study.cells import store_path
from robustact.study.rl_config import load_any_study
from robustact.study.shipped import is_shipped, study_file


def with_store(study: Any, store: str | None) -> Any:
    """A copy of ``study`` whose results go to the store ``store`` (a path or store URL); the
    study itself when ``store`` is None. A malformed URL fails here, before any cell runs."""
    if store is None:
        return study
    store_address(store)
    return dataclasses.replace(study, store=store)


def study_store_target(study: Any) -> str | Path:
    """Where the study's store is: its store URL, or ``<out>/results.sqlite``."""
    return getattr(study, "store", None) or store_path(study)


def study_store(study: Any) -> ResultsStore:
    """The study's results store, opened for writing (a SQLite file is created)."""
    return ResultsStore(study_store_target(study))


def existing_study_store(study: Any) -> ResultsStore | None:
    """The study's results store, or None when it is a SQLite file not yet written (listings
    of a study that never ran create nothing)."""
    target = study_store_target(study)
    path = store_address(target).path
    return None if path is not None and not path.is_file() else ResultsStore(target)


def open_study_store(source: str, load: Any = None, command: str = "robustact run",
                     store: str | None = None) -> tuple[Any, str, Any]:
    """(store, study name, study directory) from a YAML file, directory or .sqlite; ``load``
    reads a study YAML file (default: image or RL, whichever the file describes),
    ``command`` is the one that fills the store, for the error message; ``store``: a store
    path or URL that holds the study's results instead of its directory's results.sqlite."""
    path = Path(source)
    if not path.exists() and path.suffix not in (".sqlite", ".db") and is_shipped(source):
        path = study_file(source)  # a shipped study by name: robustact report demo
    if path.suffix in (".yaml", ".yml"):
        study = (load or load_any_study)(path)
        target, name, root = store or store_path(study), study.name, Path(study.out)
    elif path.is_dir():
        target, name, root = store or path / "results.sqlite", None, path
    elif store is not None:
        raise ConfigError(f"{source} is a results store and --store names another; give the "
                          "study's YAML file or directory with --store, or the store alone")
    else:
        target, name, root = path, None, path.parent
    db = store_address(target).path
    if db is not None and not db.is_file():
        raise ConfigError(f"no results store at {db}; run the study first ({command} ...)")
    opened = ResultsStore(target)
    if name is None:
        studies = opened.studies()
        if not studies:
            raise ConfigError(f"results store {opened} holds no runs yet; run the study first "
                              f"({command} ...)")
        if len(studies) != 1:
            raise ConfigError(f"{opened} holds {len(studies)} studies ({', '.join(studies)}); "
                              "name the study's YAML file instead")
        name = studies[0]
    return opened, name, root
