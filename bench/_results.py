"""Shared by the benchmarks: the process set-up and writing a result dict as JSON.

Every benchmark calls :func:`setup` first: it tunes glibc's allocator as the command line does
(``robustact.device.tune_cpu_allocator``), so the numbers are those a user of ``robustact``
gets; set ``ROBUSTACT_NO_MALLOC_TUNING=1`` to measure without it. Both sides of every
comparison run in the same process, so they share the setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robustact.device import allocator_tuned, tune_cpu_allocator


def setup() -> None:
    tune_cpu_allocator()


def write_result(path: str | Path, result: dict[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result.setdefault("allocator_tuned", allocator_tuned())
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
