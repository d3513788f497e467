"""The GPU check (bench/gpu.sh) runs on a CPU: every row of its table, at tiny sizes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_gpu_check_runs_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), "--device", "cpu", "--quick",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["check"] for r in rows] == ["kwta"] * 4 + ["pgd"] + ["amp"] * 3 + ["sharded"]
    assert all(r["ratio"] > 0 for r in rows[:5])  # timed against the references
    assert [r["case"].split()[0] for r in rows[5:8]] == ["resnet18", "preact_resnet18",
                                                         "resnet20"]
    assert rows[-1]["reference"] == "identical: True"  # 1 and 2 processes agree
    assert "GPU check on cpu" in done.stdout and len(done.stdout.splitlines()) >= 11
