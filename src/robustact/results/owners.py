"""Whether a run the store records as running still has a live owner, and how to show its status.

A running run names its owner (pid and host) and its last heartbeat. Its owner is dead when, on
this host, its process is gone, or, on another host, its lease expired
(:func:`robustact.locks.owner_alive`); the run is then shown as ``interrupted``, not ``running``,
without waiting for the next run of its cell.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from robustact.locks import Owner, owner_alive

INTERRUPTED = "interrupted"


def run_owner(run: Mapping[str, Any]) -> Owner | None:
    """The owner a running run records, or None (a store written before owners were kept)."""
    if run.get("owner_pid") is None or not run.get("owner_host"):
        return None
    return Owner(int(run["owner_pid"]), str(run["owner_host"]), str(run.get("started") or ""))


def owner_lives(run: Mapping[str, Any]) -> bool:
    """Whether the process that records ``run`` as running still lives."""
    return owner_alive(run_owner(run), heartbeat=run.get("heartbeat"))


def run_status(run: Mapping[str, Any]) -> str:
    """The run's status as shown: ``interrupted`` for a running run whose owner died."""
    if run["status"] == "running" and not owner_lives(run):
        return INTERRUPTED
    return str(run["status"])


def interrupted_why(run: Mapping[str, Any]) -> str:
    """One line: which process died while running the cell, and what to do."""
    owner = run_owner(run)
    who = (f"its process (pid {owner.pid} on host {owner.host}) is gone" if owner
           else "no live process records it")
    return f"interrupted: {who}; rerun the cell to resume it"
