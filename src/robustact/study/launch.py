"""Studies on a cluster: one submitit job per cell, its processes one evaluation group.

    jobs = launch(study, Launch(launcher="slurm", partition="gpu", gpus_per_cell=4))
    queue_status(study)          # [(cell, job id, queue state, store status), ...]

Each cell becomes one job (SLURM through submitit, or submitit's local executor, which runs
here). A job runs ``max(gpus_per_cell, 1)`` tasks on one node; they form one torch.distributed
group (:class:`submitit.helpers.TorchDistributedEnvironment`), train the cell with DDP and
shard its evaluation (:mod:`robustact.eval.shards`); rank 0 records it in the study's store.
A cell that needs another (shared training, ``finetune_from: cell:ID``) waits for it: a SLURM
dependency (``afterany``, the cell then says what it misses), or the local launcher submits it
once the cells it needs have finished. Job ids go to ``<study out>/jobs/queue.json``, which
``robustact run FILE --status`` reads. submitit is the field's usual launcher (fairseq,
detectron2, dora), pickles the cell with cloudpickle and reads job states from ``sacct``.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robustact.errors import ConfigError
from robustact.files import read_json, write_json
from robustact.study.lifecycle import Log

LAUNCHERS = ("slurm", "local")
QUEUE = "queue.json"


@dataclass(frozen=True)
class Launch:
    """Where and with what each cell's job runs."""

    launcher: str
    partition: str | None = None
    gpus_per_cell: int = 0
    processes_per_cell: int | None = None  # default: one per GPU, or 1 without GPUs
    cpus_per_process: int = 4
    timeout_min: int = 24 * 60
    extra: dict[str, Any] = field(default_factory=dict)  # more slurm_* options of submitit

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise ConfigError(f"--launcher must be one of {', '.join(LAUNCHERS)}, "
                              f"got {self.launcher!r}")
        if self.gpus_per_cell < 0 or (self.processes_per_cell or 1) < 1:
            raise ConfigError("--gpus-per-cell must be >= 0 and --processes-per-cell >= 1")
        if self.launcher == "slurm" and not self.partition:
            raise ConfigError("--launcher slurm needs --partition NAME (sinfo lists them)")
        if self.launcher == "slurm" and shutil.which("sbatch") is None:
            raise ConfigError("--launcher slurm needs SLURM's sbatch, which is not on PATH: "
                              "submit from a cluster's login node, or use --launcher local")

    @property
    def tasks(self) -> int:
        return self.processes_per_cell or max(self.gpus_per_cell, 1)


@dataclass
class CellJob:
    """What a job runs: one cell of the study, in a process group of the job's tasks."""

    study: Any
    cell_id: str

    def __call__(self) -> Any:
        from robustact.study.runner import run_in_group

        if int(os.environ.get("SUBMITIT_LOCAL_NTASKS", os.environ.get("SLURM_NTASKS", "1"))) > 1:
            from submitit.helpers import TorchDistributedEnvironment

            TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
        return run_in_group(self.study, self.cell_id)


def executor(study: Any, launch: Launch) -> Any:
    """A submitit executor writing its logs under ``<study out>/jobs``."""
    import submitit

    folder = Path(study.out) / "jobs"
    ex = submitit.AutoExecutor(folder=folder, cluster=launch.launcher)
    params: dict[str, Any] = dict(
        timeout_min=launch.timeout_min, nodes=1, tasks_per_node=launch.tasks,
        gpus_per_node=launch.gpus_per_cell, cpus_per_task=launch.cpus_per_process,
        name=f"robustact-{study.name}")
    if launch.launcher == "slurm":
        params.update(slurm_partition=launch.partition, **launch.extra)
    ex.update_parameters(**params)
    return ex


def launch(study: Any, config: Launch, *, cells: list[str] | None = None,
           wait: bool | None = None, log: Log = print) -> dict[str, str]:
    """Submit one job per chosen cell (all by default); returns cell -> job id. The local
    launcher waits for its jobs (``wait`` defaults to True there, False on SLURM)."""
    chosen = [study.cell(c) for c in cells] if cells else list(study.cells)
    _check_group(study, config)
    ex = executor(study, config)
    jobs: dict[str, Any] = {}
    for cell in _in_order(chosen):
        wanted = [jobs[n] for n in cell.needs if n in jobs]
        if config.launcher == "local":
            for job in wanted:  # the local executor knows no dependencies
                _wait(job)
        else:
            after = {"dependency": "afterany:" + ":".join(j.job_id for j in wanted)}
            ex.update_parameters(slurm_additional_parameters=after if wanted else {})
        jobs[cell.id] = ex.submit(CellJob(study, cell.id))
        log(f"== cell {cell.id}: job {jobs[cell.id].job_id} ({config.launcher})")
        _record(study, config, cell.id, jobs[cell.id].job_id)
    should_wait = config.launcher == "local" if wait is None else wait
    if should_wait:
        for job in jobs.values():
            _wait(job)
    return {cid: job.job_id for cid, job in jobs.items()}


def _check_group(study: Any, config: Launch) -> None:
    from robustact.study.rl_config import RLStudy

    if isinstance(study, RLStudy) and config.tasks > 1:
        raise ConfigError("RL cells run in one process: use --gpus-per-cell 1 (or 0) with an "
                          "RL study")


def _in_order(cells: list[Any]) -> list[Any]:
    """The cells with every cell after those it needs (among ``cells``)."""
    ids, done, out = {c.id for c in cells}, set(), []
    pending = list(cells)
    while pending:
        ready = [c for c in pending if all(n in done or n not in ids for n in c.needs)]
        if not ready:
            raise ConfigError("the cells' needs form a cycle: "
                              + ", ".join(c.id for c in pending))
        for cell in ready:
            pending.remove(cell)
            done.add(cell.id)
            out.append(cell)
    return out


def _wait(job: Any) -> None:
    while not job.done():
        time.sleep(1)


def _record(study: Any, config: Launch, cell_id: str, job_id: str) -> None:
    path = Path(study.out) / "jobs" / QUEUE
    queue = read_json(path) or {}
    queue[cell_id] = {"job_id": job_id, "launcher": config.launcher,
                      "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_json(path, queue)


def queue_status(study: Any) -> list[tuple[str, str, str, str]]:
    """(cell, job id, queue state, status in the store) of every cell of ``study``."""
    from robustact.study.runner import cell_statuses

    queue = read_json(Path(study.out) / "jobs" / QUEUE) or {}
    rows = []
    for cell, status, _ in cell_statuses(study):
        job = queue.get(cell)
        if job is None:
            rows.append((cell, "-", "not submitted", status))
            continue
        rows.append((cell, job["job_id"], job_state(study, job), status))
    return rows


def job_state(study: Any, job: dict[str, Any]) -> str:
    """The queue's word for a job: SLURM's (sacct), or for a local job whether its process
    still runs and how it ended."""
    folder = Path(study.out) / "jobs"
    if job["launcher"] == "slurm":
        if shutil.which("sacct") is None:
            return "UNKNOWN (no sacct here)"
        import submitit

        return str(submitit.SlurmJob(folder, job["job_id"]).state)
    return _local_state(folder, job["job_id"])


def _local_state(folder: Path, job_id: str) -> str:
    from submitit.core.utils import pickle_load

    try:
        os.kill(int(job_id), 0)
        return "RUNNING"
    except (OSError, ValueError):
        pass
    result = folder / f"{job_id}_0_result.pkl"
    if not result.is_file():
        return "INTERRUPTED"
    outcome, _ = pickle_load(result)
    return "COMPLETED" if outcome == "success" else "FAILED"
